"""Calls to the owner of one group of a plan: a driver, or the agent natively.

Every result is checked against the contract before anything stores it
(:mod:`vmsnap_host.checks`): a driver that returns handles for other disks,
misses one, or swaps handles on a retry fails the call like any other error.
Deletes are retried on the codes after which a retry can help.
"""

from __future__ import annotations

import asyncio

from vmsnap_host import checks
from vmsnap_host.config import Settings
from vmsnap_host.executor.freeze import with_deadline
from vmsnap_host.model import MEMORY_STATE_BYTES, MEMORY_STATE_LOCATION, Group, GroupKind
from vmsnap_host.registry import Registry
from vmsnap_sdk import (
    VM,
    Capability,
    Consistency,
    NativeSnapshot,
    RevertRequest,
    SnapshotResult,
    TakeRequest,
    Volume,
    VolumeSnapshot,
)
from vmsnap_sdk.errors import Aborted, Internal, NotFound, Reason, TransientError


def native_result(
    snapshot_id: str, native: NativeSnapshot, vm: VM, consistency: Consistency
) -> SnapshotResult:
    """A native snapshot described like a driver's result (handles = the native id)."""
    volumes = []
    for disk in native.disks:
        volume = vm.volume(disk)
        volumes.append(VolumeSnapshot(disk, volume.locator if volume else "", native.snapshot_id))
    metadata = {}
    if native.memory_state is not None:
        # Recorded with the snapshot: where the saved RAM lives and how big it is.
        metadata = {
            MEMORY_STATE_LOCATION: native.memory_state.location,
            MEMORY_STATE_BYTES: str(native.memory_state.size_bytes),
        }
    return SnapshotResult(
        vm_snapshot_id=snapshot_id,
        volume_snapshots=tuple(volumes),
        ready=True,
        consistency=consistency,
        vm_id=vm.id,
        metadata=metadata,
    )


class GroupCalls:
    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings

    async def take(
        self,
        group: Group,
        snapshot_id: str,
        vm: VM,
        *,
        name: str,
        parameters: dict[str, str],
        include_memory: bool,
        quiesced: bool,
        consistency: Consistency,
        deadline: float,
        taken: NativeSnapshot | None = None,
    ) -> SnapshotResult:
        """Take one group's snapshot under ``snapshot_id``; the result is checked.
        ``taken``: the agent's native snapshot, already taken in its Quiesce and
        checked with the same arguments when the freeze believed it
        (``freeze._believed``)."""
        if group.kind is GroupKind.HYPERVISOR:
            native = taken
            if native is None:
                agent = self.registry.agent(group.owner)
                native = await with_deadline(
                    agent.take_native_snapshot(vm.id, snapshot_id, group.disks, include_memory),
                    deadline,
                    f"native snapshot on agent {group.owner}",
                )
                checks.check_native(
                    group.owner,
                    snapshot_id,
                    group.disks,
                    native,
                    vm_id=vm.id,
                    include_memory=include_memory,
                )
            level = Consistency.APPLICATION if include_memory else consistency
            return native_result(snapshot_id, native, vm, level)
        driver = self.registry.driver(group.owner)
        volumes = tuple(v for d in group.disks if (v := vm.volume(d)) is not None)
        if len(volumes) != len(group.disks):
            gone = sorted(set(group.disks) - {v.disk for v in volumes})
            raise Internal(f"disks {', '.join(gone)} of the plan are not on VM {vm.id} any more")
        request = TakeRequest(
            vm_snapshot_id=snapshot_id,
            vm=vm,
            volumes=volumes,
            quiesced=quiesced,
            consistency=consistency,
            parameters=parameters,
            vm_snapshot_name=name,
        )
        result = await with_deadline(
            driver.take_snapshot(request), deadline, f"TakeVMSnapshot on driver {group.owner}"
        )
        return checks.check_take_result(group.owner, snapshot_id, volumes, result, vm_id=vm.id)

    async def poll(self, group: Group, snapshot_id: str) -> SnapshotResult:
        """Post-processing: the group's result now (must keep the same handles)."""
        result = await with_deadline(
            self.registry.driver(group.owner).get_snapshot(snapshot_id),
            self.settings.call_timeout_seconds,
            f"GetVMSnapshot on driver {group.owner}",
        )
        assert group.result is not None
        volumes = _volumes_of(group.result)
        return checks.check_take_result(
            group.owner, snapshot_id, volumes, result, previous=group.result
        )

    async def revert(
        self, group: Group, target_id: str, vm: VM, *, undo_id: str = ""
    ) -> SnapshotResult | None:
        """Revert one group to ``target_id`` (its stored result is ``group.result``);
        returns the undo the array kept when ``undo_id`` asked for one."""
        timeout = self.settings.take_timeout_seconds
        if group.kind is GroupKind.HYPERVISOR:
            agent = self.registry.agent(group.owner)
            await with_deadline(
                agent.revert_native_snapshot(vm.id, target_id),
                timeout,
                f"native revert on agent {group.owner}",
            )
            return None
        if group.result is None:
            raise Internal(
                f"driver {group.owner} has no stored result for {target_id} to revert to"
            )
        driver = self.registry.driver(group.owner)
        outcome = await with_deadline(
            driver.revert_snapshot(
                RevertRequest(
                    vm_snapshot_id=target_id,
                    snapshot=group.result,
                    vm=vm,
                    save_current_state=bool(undo_id),
                    undo_vm_snapshot_id=undo_id,
                )
            ),
            timeout,
            f"RevertVMSnapshot on driver {group.owner}",
        )
        return checks.check_revert_result(
            group.owner,
            undo_id,
            outcome,
            volumes=_volumes_of(group.result),
            undo_offered=Capability.REVERT_UNDO in self.registry.capabilities(group.owner),
            vm_id=vm.id,
        )

    async def find(self, group: Group, snapshot_id: str) -> SnapshotResult | None:
        """What the driver holds under ``snapshot_id`` (None: nothing)."""
        try:
            return await with_deadline(
                self.registry.driver(group.owner).get_snapshot(snapshot_id),
                self.settings.call_timeout_seconds,
                f"GetVMSnapshot on driver {group.owner}",
            )
        except NotFound:
            return None

    async def delete(self, group: Group, snapshot_id: str, vm_id: str) -> None:
        """Delete one group's snapshot (idempotent), retrying what a retry can help."""
        timeout = self.settings.call_timeout_seconds
        for attempt in range(3):
            try:
                if group.kind is GroupKind.HYPERVISOR:
                    agent = self.registry.agent(group.owner)
                    try:
                        await with_deadline(
                            agent.delete_native_snapshot(vm_id, snapshot_id),
                            timeout,
                            f"native delete on agent {group.owner}",
                        )
                    except NotFound as exc:
                        # The agent does not have the VM (the QEMU agent answers so):
                        # it holds none of its native snapshots, nothing is left to
                        # delete there. Leftovers in disk files that come back with
                        # the VM are orphans to the reconciler.
                        if exc.reason != Reason.VM_NOT_FOUND:
                            raise
                else:
                    driver = self.registry.driver(group.owner)
                    await with_deadline(
                        driver.delete_snapshot(snapshot_id, group.result),
                        timeout,
                        f"DeleteVMSnapshot on driver {group.owner}",
                    )
                return
            except (TransientError, Aborted):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.1 * 2**attempt)


def _volumes_of(result: SnapshotResult) -> tuple[Volume, ...]:
    return tuple(Volume(v.disk, v.locator) for v in result.volume_snapshots)


__all__ = ["GroupCalls", "native_result"]
