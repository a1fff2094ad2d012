"""can_handle: CanHandle is pure, answers once per volume in order, never claims strangers."""

from __future__ import annotations

from collections.abc import Sequence

from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._types import Capability
from vmsnap_sdk.conformance._expect import expect, expect_code
from vmsnap_sdk.conformance._registry import check
from vmsnap_sdk.conformance._rpc import call
from vmsnap_sdk.conformance._session import Session, handles
from vmsnap_sdk.conformance.checks._common import INVALID, foreign_volume, own_or_none

OPERATIONS = (driver_pb2.OPERATION_TAKE, driver_pb2.OPERATION_REVERT, driver_pb2.OPERATION_DELETE)


async def ask(
    s: Session,
    volumes: Sequence[common_pb2.Volume],
    operation: driver_pb2.Operation.ValueType = driver_pb2.OPERATION_TAKE,
) -> list[driver_pb2.VolumeDecision]:
    request = driver_pb2.CanHandleRequest(
        vm=s.vm(volumes), volumes=list(volumes), operation=operation
    )
    reply = await call("CanHandle", s.driver.CanHandle, request, s.rpc_timeout)
    return list(reply.decisions)


def mixed(own: Sequence[common_pb2.Volume]) -> list[common_pb2.Volume]:
    """Foreign volumes with disk names out of sorted order, around the own ones."""
    strangers = [foreign_volume("vdq", 1), foreign_volume("vdc", 2), foreign_volume("vdx", 3)]
    return [strangers[0], *own, *strangers[1:]]


def show(decisions: Sequence[driver_pb2.VolumeDecision]) -> str:
    return ", ".join(f"{d.disk}:{driver_pb2.Priority.Name(d.priority)}" for d in decisions)


@check(
    "can_handle.unknown_volume_cant_handle",
    "A volume the driver does not know is CANT_HANDLE, not an error",
)
async def unknown_volume(s: Session) -> None:
    decisions = await ask(s, [foreign_volume("vda")])
    expect(
        len(decisions) == 1 and decisions[0].priority == driver_pb2.PRIORITY_CANT_HANDLE,
        "one decision, PRIORITY_CANT_HANDLE",
        show(decisions),
    )


@check("can_handle.empty_request_invalid", "CanHandle without volumes is INVALID_ARGUMENT")
async def empty_request(s: Session) -> None:
    await expect_code(ask(s, []), INVALID, what="CanHandle with no volumes")


@check("can_handle.operation_required", "CanHandle without an operation is INVALID_ARGUMENT")
async def operation_required(s: Session) -> None:
    await expect_code(
        ask(s, [foreign_volume()], driver_pb2.OPERATION_UNSPECIFIED),
        INVALID,
        what="CanHandle with OPERATION_UNSPECIFIED",
    )


@check("can_handle.duplicate_disk_invalid", "Two volumes with one disk name are INVALID_ARGUMENT")
async def duplicate_disk(s: Session) -> None:
    volumes = [foreign_volume("vda", 1), foreign_volume("vda", 2)]
    await expect_code(ask(s, volumes), INVALID, what="CanHandle naming disk vda twice")


@check(
    "can_handle.one_decision_per_volume",
    "One decision per volume, in request order: the planner zips them",
)
async def one_decision_each(s: Session) -> None:
    volumes = mixed(await own_or_none(s))
    decisions = await ask(s, volumes)
    expect(
        [d.disk for d in decisions] == [v.disk for v in volumes],
        f"decisions for {[v.disk for v in volumes]} in that order",
        [d.disk for d in decisions],
    )


@check(
    "can_handle.all_operations", "TAKE, REVERT and DELETE questions are each answered per volume"
)
async def all_operations(s: Session) -> None:
    volumes = mixed(await own_or_none(s))
    for operation in OPERATIONS:
        decisions = await ask(s, volumes, operation)
        expect(
            [d.disk for d in decisions] == [v.disk for v in volumes],
            f"one decision per volume for {driver_pb2.Operation.Name(operation)}",
            show(decisions),
        )


@check(
    "can_handle.claims_own_volumes",
    "The driver claims its own volumes (DEFAULT or above) and only those",
)
async def claims_own(s: Session) -> None:
    own = await s.volumes(1)
    decisions = await ask(s, mixed(own))
    by_disk = {d.disk: d.priority for d in decisions}
    expect(
        by_disk.get(own[0].disk, 0) >= driver_pb2.PRIORITY_DEFAULT,
        f"{own[0].disk} ({own[0].locator}) claimed",
        show(decisions),
    )
    strangers = [d for d in decisions if d.disk != own[0].disk]
    expect(
        all(d.priority <= driver_pb2.PRIORITY_CANT_HANDLE for d in strangers),
        "foreign volumes CANT_HANDLE",
        show(decisions),
    )


@check(
    "can_handle.reasons_present",
    "Every decision carries a reason, recorded in the plan for operators",
)
async def reasons(s: Session) -> None:
    decisions = await ask(s, mixed(await own_or_none(s)))
    missing = [d.disk for d in decisions if not d.reason.strip()]
    expect(not missing, "a reason on every decision", f"none for {missing}")


@check("can_handle.pure", "Asking twice gives the same answer: CanHandle is a pure question")
async def pure(s: Session) -> None:
    volumes = mixed(await own_or_none(s))
    first = await ask(s, volumes)
    second = await ask(s, volumes)
    expect(
        [(d.disk, d.priority) for d in first] == [(d.disk, d.priority) for d in second],
        show(first),
        show(second),
    )


@check(
    "can_handle.no_side_effects",
    "CanHandle creates nothing on the array (ListVMSnapshots unchanged)",
    requires=(Capability.LIST,),
)
async def no_side_effects(s: Session) -> None:
    volumes = mixed(await own_or_none(s))

    def keyed(results: Sequence[driver_pb2.VMSnapshotResult]) -> list[tuple[str, str]]:
        return sorted((r.vm_snapshot_id, repr(sorted(handles(r).items()))) for r in results)

    before = await s.list_all()
    for operation in OPERATIONS:
        await ask(s, volumes, operation)
    after = await s.list_all()
    added = {r.vm_snapshot_id for r in after} - {r.vm_snapshot_id for r in before}
    expect(
        keyed(before) == keyed(after),
        "the same snapshots listed before and after CanHandle",
        f"{len(before)} before, {len(after)} after; new ids {sorted(added)}",
    )
