"""unmanaged: ListUnmanagedSnapshots lists only what no vmsnap host made, only of
the given volumes, and changes nothing (CAPABILITY_LIST_UNMANAGED, for adopt).

A test array holds no foreign snapshot the suite could make through the
contract, so the checks prove the negative side: the driver's own (tagged)
snapshots are never offered for adoption, no entry holds a volume that was not
asked for, and listing leaves the array as it was.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._types import Capability
from vmsnap_sdk.conformance._expect import expect, expect_code, expect_ok
from vmsnap_sdk.conformance._registry import check
from vmsnap_sdk.conformance._rpc import call
from vmsnap_sdk.conformance._session import Session
from vmsnap_sdk.conformance.checks._common import UNIMPLEMENTED, foreign_volume

UNMANAGED = (Capability.LIST_UNMANAGED,)


def _list(
    s: Session, volumes: Sequence[common_pb2.Volume], page_size: int = 0, token: str = ""
) -> Awaitable[driver_pb2.ListUnmanagedSnapshotsResponse]:
    request = driver_pb2.ListUnmanagedSnapshotsRequest(
        volumes=list(volumes), page_size=page_size, page_token=token
    )
    return call("ListUnmanagedSnapshots", s.driver.ListUnmanagedSnapshots, request, s.rpc_timeout)


async def _all(
    s: Session, volumes: Sequence[common_pb2.Volume]
) -> list[driver_pb2.UnmanagedSnapshot]:
    out: list[driver_pb2.UnmanagedSnapshot] = []
    token = ""
    for _ in range(100):
        page = await expect_ok(_list(s, volumes, 100, token), "ListUnmanagedSnapshots")
        out.extend(page.snapshots)
        token = page.next_page_token
        if not token:
            break
    return out


@check(
    "capabilities.list_unmanaged",
    "CAPABILITY_LIST_UNMANAGED advertised ⇔ ListUnmanagedSnapshots is served (else UNIMPLEMENTED)",
)
async def list_unmanaged(s: Session) -> None:
    # A volume of no array: no fixture needed, and nothing to list for it.
    volumes = [foreign_volume("vda")]
    if s.has(Capability.LIST_UNMANAGED):
        await expect_ok(_list(s, volumes), "advertised ListUnmanagedSnapshots")
    else:
        await expect_code(
            _list(s, volumes), UNIMPLEMENTED, what="ListUnmanagedSnapshots without the capability"
        )


@check(
    "unmanaged.excludes_managed",
    "A snapshot the driver took for the host is never listed as unmanaged",
    requires=UNMANAGED,
)
async def excludes_managed(s: Session) -> None:
    volumes = await s.volumes(2)
    taken = await s.take(s.new_id(), volumes)
    ours = {v.handle for v in taken.volume_snapshots}
    listed = await _all(s, volumes)
    offered = sorted(u.id for u in listed if ours & {v.handle for v in u.volume_snapshots})
    expect(not offered, f"none of the take's handles {sorted(ours)} listed", offered)


@check(
    "unmanaged.only_given_volumes",
    "Every entry holds only requested volumes, with their disk and locator as given",
    requires=UNMANAGED,
)
async def only_given_volumes(s: Session) -> None:
    volumes = await s.volumes(2)
    await s.take(s.new_id(), volumes)
    asked = {(volumes[0].disk, volumes[0].locator)}
    for u in await _all(s, volumes[:1]):
        got = {(v.disk, v.locator) for v in u.volume_snapshots}
        expect(
            bool(got) and got <= asked, f"entry {u.id} to hold only {sorted(asked)}", sorted(got)
        )


@check(
    "unmanaged.read_only",
    "Listing unmanaged snapshots changes nothing the driver lists",
    requires=UNMANAGED,
)
async def read_only(s: Session) -> None:
    volumes = await s.volumes(2)
    await s.take(s.new_id(), volumes)
    before = sorted(await s.listed_ids()) if s.has(Capability.LIST) else []
    await _all(s, volumes)
    after = sorted(await s.listed_ids()) if s.has(Capability.LIST) else []
    expect(before == after, f"the same snapshots listed as before: {before}", after)
