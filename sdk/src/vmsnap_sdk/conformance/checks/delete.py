"""delete: DeleteVMSnapshot is idempotent, needs only the id, and removes exactly one snapshot."""

from __future__ import annotations

import contextlib

from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._types import Capability
from vmsnap_sdk.conformance._expect import CheckSkipped, expect, expect_code, expect_ok
from vmsnap_sdk.conformance._registry import check
from vmsnap_sdk.conformance._rpc import RpcFailure, call
from vmsnap_sdk.conformance._session import Session, handles
from vmsnap_sdk.conformance.checks._common import (
    INVALID,
    NOT_FOUND,
    describe_result,
    foreign_volume,
)


async def gone(s: Session, snapshot_id: str) -> None:
    """Fail unless the driver shows that the snapshot is gone (list, or GetVMSnapshot)."""
    if s.has(Capability.LIST):
        listed = await s.listed_ids()
        expect(snapshot_id not in listed, f"{snapshot_id} no longer listed", listed)
    elif s.has(Capability.POST_PROCESSING):
        await expect_code(s.get(snapshot_id), NOT_FOUND, what="GetVMSnapshot after the delete")
    else:
        raise CheckSkipped(
            "needs CAPABILITY_LIST or CAPABILITY_POST_PROCESSING to see that a snapshot is gone"
        )


@check("delete.unknown_id_ok", "Deleting an id the driver never saw is OK (never NOT_FOUND)")
async def unknown_id(s: Session) -> None:
    await expect_ok(s.delete(s.new_id("never")), "delete of an unknown id")


@check("delete.idempotent", "Deleting twice is OK both times: the host retries deletes")
async def idempotent(s: Session) -> None:
    snap = await s.take(s.new_id(), await s.volumes(1))
    await expect_ok(s.delete(snap.vm_snapshot_id, snap), "the first delete")
    await expect_ok(s.delete(snap.vm_snapshot_id, snap), "the second delete")


@check(
    "delete.gone_from_list",
    "After a delete the snapshot is not listed any more",
    requires=(Capability.LIST,),
)
async def gone_from_list(s: Session) -> None:
    snap = await s.take(s.new_id(), await s.volumes(1))
    listed = await s.listed_ids()
    expect(snap.vm_snapshot_id in listed, f"{snap.vm_snapshot_id} listed after the take", listed)
    await s.delete(snap.vm_snapshot_id, snap)
    await gone(s, snap.vm_snapshot_id)


@check(
    "delete.by_id_alone",
    "A delete with the id and no handles removes the snapshot (the host may have none)",
)
async def by_id_alone(s: Session) -> None:
    snap = await s.take(s.new_id(), await s.volumes(2))
    await s.delete(snap.vm_snapshot_id)
    await gone(s, snap.vm_snapshot_id)


@check(
    "delete.after_failed_take",
    "Deleting the id of a take that failed is OK: the host compensates so",
)
async def after_failed_take(s: Session) -> None:
    snapshot_id = s.new_id()
    with contextlib.suppress(RpcFailure):
        await s.take(snapshot_id, [foreign_volume("vda")])
    await expect_ok(s.delete(snapshot_id), "delete after a failed take")


@check("delete.missing_id_invalid", "A delete without vm_snapshot_id is INVALID_ARGUMENT")
async def missing_id(s: Session) -> None:
    await expect_code(
        call(
            "DeleteVMSnapshot",
            s.driver.DeleteVMSnapshot,
            driver_pb2.DeleteVMSnapshotRequest(),
            s.rpc_timeout,
        ),
        INVALID,
        what="delete without an id",
    )


@check(
    "delete.leaves_other_snapshots",
    "Deleting one snapshot of a volume leaves its other snapshots intact",
)
async def leaves_others(s: Session) -> None:
    volumes = await s.volumes(1)
    doomed = await s.take(s.new_id(), volumes)
    kept = await s.take(s.new_id(), volumes)
    await s.delete(doomed.vm_snapshot_id, doomed)
    if s.has(Capability.LIST):
        listed = await s.listed_ids()
        expect(kept.vm_snapshot_id in listed, f"{kept.vm_snapshot_id} still listed", listed)
    again = await s.take(kept.vm_snapshot_id, volumes)
    expect(
        handles(again) == handles(kept),
        f"the kept snapshot unchanged: {describe_result(kept)}",
        describe_result(again),
    )
