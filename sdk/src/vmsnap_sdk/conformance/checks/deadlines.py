"""deadlines: a short deadline gives DEADLINE_EXCEEDED or success; retries converge.

The host gives every call a deadline inside the freeze lease. When it runs
out the operation may still be running on the array, so the host retries the
same id; the retry must find the same snapshot, never make a second one.
"""

from __future__ import annotations

from vmsnap_sdk._types import Capability
from vmsnap_sdk.conformance._expect import expect, expect_code
from vmsnap_sdk.conformance._registry import check
from vmsnap_sdk.conformance._session import Session, handles
from vmsnap_sdk.conformance.checks._common import ABORTED, DEADLINE, OK, describe_result
from vmsnap_sdk.conformance.checks.concurrency import retry_aborted

DEADLINES = (0.001, 0.01, 0.05, 0.2)
#: ABORTED too: an earlier attempt may still hold the volume (the host retries it).
ALLOWED = (OK, DEADLINE, ABORTED)


@check(
    "deadlines.short_take_converges",
    "A take under a very short deadline ends DEADLINE_EXCEEDED or OK, and its retry converges",
)
async def short_take(s: Session) -> None:
    volumes = await s.volumes(2)
    snapshot_id = s.new_id()
    for seconds in DEADLINES:
        await expect_code(
            s.take(snapshot_id, volumes, timeout=seconds),
            *ALLOWED,
            what=f"take with a {seconds * 1000:g} ms deadline",
        )
    first = await retry_aborted(lambda: s.take(snapshot_id, volumes))
    again = await retry_aborted(lambda: s.take(snapshot_id, volumes))
    expect(handles(first) == handles(again), describe_result(first), describe_result(again))
    if s.has(Capability.LIST):
        listed = await s.listed_ids()
        expect(listed == [snapshot_id], f"{snapshot_id} listed once", listed)


@check(
    "deadlines.short_delete_converges",
    "A delete under a very short deadline ends DEADLINE_EXCEEDED or OK, and its retry removes it",
)
async def short_delete(s: Session) -> None:
    snap = await s.take(s.new_id(), await s.volumes(1))
    for seconds in DEADLINES:
        await expect_code(
            s.delete(snap.vm_snapshot_id, snap, timeout=seconds),
            *ALLOWED,
            what=f"delete with a {seconds * 1000:g} ms deadline",
        )
    await retry_aborted(lambda: s.delete(snap.vm_snapshot_id, snap))
    if s.has(Capability.LIST):
        listed = await s.listed_ids()
        expect(snap.vm_snapshot_id not in listed, f"{snap.vm_snapshot_id} gone", listed)
