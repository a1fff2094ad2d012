"""A snapshot disk's blocks through its driver: ranges (allocated or changed) and bytes.

The host is the only way a client reaches a driver: it finds the disk's group
and driver in the catalog, checks the driver offers the capability, asks it page
by page (each page resumes from the end of the last range, so a page is one
short driver call and nothing is buffered), and checks every page against the
contract's range rules (:func:`vmsnap_sdk.blocks.ranges_problem`) before passing
it on: a client never sees unsorted or overlapping ranges from a broken driver,
it gets INTERNAL / DRIVER_CONTRACT_VIOLATION naming the driver and the rule.
Read-only: nothing here mutates the catalog or an array.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from vmsnap_host.checks import ContractViolation
from vmsnap_host.manager import Manager
from vmsnap_host.model import GroupKind, Snapshot, SnapshotState
from vmsnap_host.registry import Registry
from vmsnap_sdk import Capability, StorageDriver
from vmsnap_sdk.blocks import BlockRange, SnapshotRef, ranges_problem
from vmsnap_sdk.errors import FailedPrecondition, NotFound, Reason

RANGES_RULE = "blocks.ranges_valid"
READ_RULE = "read.length_exact"


@dataclass(frozen=True)
class DiskSource:
    """Where one disk of a snapshot lives: its driver and its volume snapshot."""

    snapshot: Snapshot
    driver_name: str
    driver: StorageDriver
    ref: SnapshotRef


@dataclass(frozen=True)
class RangePage:
    capacity_bytes: int
    block_size: int
    ranges: tuple[BlockRange, ...]


class DiskBlocks:
    def __init__(self, manager: Manager, registry: Registry) -> None:
        self.manager = manager
        self.registry = registry

    async def source(self, snapshot_id: str, disk: str, capability: Capability) -> DiskSource:
        snap = await self.manager.get_snapshot(snapshot_id)
        if snap.state is not SnapshotState.READY:
            raise FailedPrecondition(
                f"snapshot {snapshot_id} is {snap.state.name}; only a READY snapshot's "
                "disks can be read",
                reason=Reason.DISK_NOT_EXPORTABLE,
            )
        for group in snap.groups:
            if disk not in group.disks:
                continue
            if group.kind is not GroupKind.DRIVER or group.result is None:
                raise FailedPrecondition(
                    f"disk {disk} of snapshot {snapshot_id} is a hypervisor-native snapshot; "
                    "only disks on storage arrays can be read through their driver",
                    reason=Reason.DISK_NOT_EXPORTABLE,
                )
            volume = next(v for v in group.result.volume_snapshots if v.disk == disk)
            if capability not in self.registry.capabilities(group.owner):
                raise FailedPrecondition(
                    f"driver {group.owner} (disk {disk}) does not offer "
                    f"CAPABILITY_{capability.name}",
                    reason=Reason.DRIVER_CAPABILITY_MISSING,
                )
            return DiskSource(
                snap, group.owner, self.registry.driver(group.owner), SnapshotRef(snap.id, volume)
            )
        raise NotFound(
            f"snapshot {snapshot_id} has no disk {disk}; GetVMSnapshot lists its disks",
            reason=Reason.NOT_FOUND,
        )

    async def base(self, target: DiskSource, since_id: str, disk: str) -> SnapshotRef:
        """The older snapshot's volume snapshot of the same disk, driver and volume."""
        base = await self.source(since_id, disk, Capability.CHANGED_BLOCKS)
        problem = ""
        if base.snapshot.vm_id != target.snapshot.vm_id:
            problem = f"is of VM {base.snapshot.vm_id}, not {target.snapshot.vm_id}"
        elif base.driver_name != target.driver_name:
            problem = f"holds disk {disk} on driver {base.driver_name}, not {target.driver_name}"
        elif base.ref.volume.locator != target.ref.volume.locator:
            problem = f"holds disk {disk} on volume {base.ref.volume.locator}, another volume"
        elif since_id == target.snapshot.id or _newer(base.snapshot, target.snapshot):
            problem = f"is not older than {target.snapshot.id}"
        if problem:
            raise FailedPrecondition(
                f"since snapshot {since_id} {problem}; a delta needs an older snapshot of "
                "the same disk",
                reason=Reason.DELTA_BASE_MISMATCH,
            )
        return base.ref

    async def pages(
        self, snapshot_id: str, disk: str, since_id: str, start: int, most: int
    ) -> AsyncIterator[RangePage]:
        """Checked pages of ranges; the first always comes (it states the sizes)."""
        target = await self.source(snapshot_id, disk, Capability.CHANGED_BLOCKS)
        base = await self.base(target, since_id, disk) if since_id else None
        position, after, first = start, 0, True
        while True:
            if base is None:
                page = await target.driver.get_allocated(target.ref, position, most)
            else:
                page = await target.driver.get_delta(base, target.ref, position, most)
            problem = ranges_problem(
                page.ranges,
                block_size=page.block_size,
                capacity_bytes=page.capacity_bytes,
                starting_offset=position,
                kind=page.kind,
                after=after,
            )
            if problem is None and len(page.ranges) > most:
                problem = f"{len(page.ranges)} ranges for max_results {most}"
            if problem is not None:
                raise ContractViolation.broken(target.driver_name, RANGES_RULE, problem)
            if page.ranges or first:
                yield RangePage(page.capacity_bytes, page.block_size, page.ranges)
            first = False
            if page.done or not page.ranges:
                return
            position = after = page.ranges[-1].end

    async def read(
        self, snapshot_id: str, disk: str, offset: int, length: int, chunk: int
    ) -> AsyncIterator[tuple[int, bytes]]:
        source = await self.source(snapshot_id, disk, Capability.READ_SNAPSHOT)
        position, end = offset, offset + length
        while position < end:
            n = min(chunk, end - position)
            data = await source.driver.read_snapshot(source.ref, position, n)
            if len(data) != n:
                raise ContractViolation.broken(
                    source.driver_name, READ_RULE, f"read {len(data)} bytes at {position}, not {n}"
                )
            yield position, data
            position += n


def _newer(a: Snapshot, b: Snapshot) -> bool:
    if a.create_time is None or b.create_time is None:
        return False
    return a.create_time > b.create_time
