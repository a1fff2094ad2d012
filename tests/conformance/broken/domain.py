"""Domain-level breakage: the reference driver with one behaviour gone wrong.

Each class is a StorageDriver served through the SDK, so each fault is one a
vendor could write with the SDK's help, and the suite must still catch it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import replace

from tests.conformance.reference_driver import ReferenceDriver, Snap
from vmsnap_sdk import (
    VM,
    Capability,
    CloneRequest,
    Consistency,
    DriverInfo,
    Limits,
    Operation,
    Page,
    Priority,
    ProbeResult,
    RevertRequest,
    RevertResult,
    SnapshotPage,
    SnapshotResult,
    TakeRequest,
    UnmanagedPage,
    UnmanagedSnapshot,
    Volume,
    VolumeDecision,
    VolumeSnapshot,
    current_call,
)
from vmsnap_sdk.blocks import BlockPage, SnapshotRef
from vmsnap_sdk.errors import FailedPrecondition, Internal, NotFound, Unimplemented

ALL_CAPABILITIES = frozenset(Capability) - {Capability.UNSPECIFIED}


class BadIdentity(ReferenceDriver):
    """Bad name, version and contract, unknown capability, negative limits; never ready."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = itertools.count()

    async def get_info(self) -> DriverInfo:
        return DriverInfo(
            name="Not A Reverse-DNS Name, and far too long for the host's driver table",
            vendor_version=f"latest-{next(self.calls)}",
            contract_versions=("v0",),
            capabilities=ALL_CAPABILITIES | {Capability.UNSPECIFIED},
            limits=Limits(max_volumes_per_snapshot=-1),
        )

    async def probe(self) -> ProbeResult:
        return ProbeResult(ready=False, message="array unreachable")


class Overclaims(ReferenceDriver):
    """Advertises revert, undo, list and post-processing, and offers none of them."""

    async def revert_snapshot(self, request: RevertRequest) -> RevertResult:
        raise Unimplemented("no revert after all")

    async def list_snapshots(self, page: Page, vm_id: str = "") -> SnapshotPage:
        raise Unimplemented("no list after all")

    async def get_snapshot(self, vm_snapshot_id: str) -> SnapshotResult:
        raise Unimplemented("no get after all")

    async def list_unmanaged_snapshots(
        self, volumes: Sequence[Volume], page: Page
    ) -> UnmanagedPage:
        raise Unimplemented("no unmanaged listing after all")

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        return replace(await super().take_snapshot(request), ready=False)

    async def clone_volumes(self, request: CloneRequest) -> Sequence[Volume]:
        raise Unimplemented("no clone after all")


class ListsManaged(ReferenceDriver):
    """Offers its own (tagged) snapshots for adoption, whatever the volumes asked."""

    async def list_unmanaged_snapshots(
        self, volumes: Sequence[Volume], page: Page
    ) -> UnmanagedPage:
        return UnmanagedPage(
            tuple(
                UnmanagedSnapshot(
                    id=snap.result.vm_snapshot_id,
                    volume_snapshots=snap.result.volume_snapshots,
                    consistent_group=True,
                )
                for snap in self.snapshots.values()
            )
        )


class UnmanagedSideEffects(ReferenceDriver):
    """ "Adopts" on discovery: listing unmanaged snapshots deletes one of its own."""

    async def list_unmanaged_snapshots(
        self, volumes: Sequence[Volume], page: Page
    ) -> UnmanagedPage:
        if self.snapshots:
            self.snapshots.pop(sorted(self.snapshots)[-1])
        return UnmanagedPage(())


class Underclaims(ReferenceDriver):
    """Advertises nothing but serves everything (the fixture too, served regardless)."""

    async def get_info(self) -> DriverInfo:
        return replace(await super().get_info(), capabilities=frozenset())


class ClaimsEverything(ReferenceDriver):
    """Claims every volume, its own or not, and never says why."""

    async def can_handle(
        self, vm: VM, volumes: Sequence[Volume], operation: Operation, options: Mapping[str, str]
    ) -> Sequence[VolumeDecision]:
        return [VolumeDecision(v.disk, Priority.PLUGIN, "") for v in volumes]


class CanHandleSideEffects(ReferenceDriver):
    """CanHandle "prepares" a snapshot on the array, and answers differently each time."""

    async def can_handle(
        self, vm: VM, volumes: Sequence[Volume], operation: Operation, options: Mapping[str, str]
    ) -> Sequence[VolumeDecision]:
        n = next(self.counter)
        own = [v for v in volumes if self.owns(v)]
        self.snapshots[f"prepared-{n}"] = Snap(
            SnapshotResult(f"prepared-{n}", (), vm_id=vm.id), {}, 0.0, ()
        )
        decisions = list(await super().can_handle(vm, volumes, operation, options))
        if n % 2 and own:
            return [replace(d, priority=Priority.HIGHEST) for d in decisions]
        if n % 2:
            return [replace(d, priority=Priority.UNSPECIFIED) for d in decisions]
        return decisions


class SloppyResult(ReferenceDriver):
    """Results that misreport: wrong id, locators, empty handles, no VM, no consistency."""

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        result = await super().take_snapshot(request)
        return replace(
            result,
            vm_snapshot_id="sloppy-" + result.vm_snapshot_id,
            volume_snapshots=tuple(
                VolumeSnapshot(v.disk, "ref://pool/elsewhere", "", -1)
                for v in result.volume_snapshots
            ),
            consistency=Consistency.UNSPECIFIED,
            vm_id="",
            metadata={f"k{i}": "v" * 100 for i in range(100)},
        )


class DiskHandles(ReferenceDriver):
    """Names every volume snapshot after its disk: two snapshots share handles."""

    def cut(self, vm_snapshot_id: str, vm_id: str, volumes: Sequence[Volume]) -> Snap:
        snap = super().cut(vm_snapshot_id, vm_id, volumes)
        snap.result = replace(
            snap.result,
            volume_snapshots=tuple(
                replace(v, handle=f"snap-of-{v.disk}") for v in snap.result.volume_snapshots
            ),
        )
        return snap


class NonIdempotentTake(ReferenceDriver):
    """Every take cuts a new snapshot, replacing any with the same id."""

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        self.snapshots.pop(request.vm_snapshot_id, None)
        return await super().take_snapshot(request)


class RevertNoop(ReferenceDriver):
    """Revert answers OK and restores nothing, for any id; its undo is never kept."""

    async def revert_snapshot(self, request: RevertRequest) -> RevertResult:
        if not request.save_current_state:
            return RevertResult()
        undo = replace(request.snapshot, vm_snapshot_id=request.undo_vm_snapshot_id)
        return RevertResult(undo=undo)


class DeleteStrict(ReferenceDriver):
    """Delete of an unknown id is NOT_FOUND (and so a retried delete fails)."""

    async def delete_snapshot(self, vm_snapshot_id: str, snapshot: SnapshotResult | None) -> None:
        self.find(vm_snapshot_id)
        await super().delete_snapshot(vm_snapshot_id, snapshot)


class DeleteNoop(ReferenceDriver):
    """Delete answers OK and keeps everything."""

    async def delete_snapshot(self, vm_snapshot_id: str, snapshot: SnapshotResult | None) -> None:
        return None


class DeleteByVolume(ReferenceDriver):
    """Delete removes every snapshot of the volumes involved, not just this one."""

    async def delete_snapshot(self, vm_snapshot_id: str, snapshot: SnapshotResult | None) -> None:
        doomed = self.snapshots.get(vm_snapshot_id)
        if doomed is None:
            return
        locators = {v.locator for v in doomed.result.volume_snapshots}
        for key, snap in list(self.snapshots.items()):
            if locators & {v.locator for v in snap.result.volume_snapshots}:
                del self.snapshots[key]


class BadPaging(ReferenceDriver):
    """Pages overlap and overflow, tokens are not checked, vm_id is ignored and not tagged."""

    async def list_snapshots(self, page: Page, vm_id: str = "") -> SnapshotPage:
        ids = sorted(self.snapshots)
        start = int(page.token) if page.token.isdigit() else 0
        chunk = ids[start : start + page.size + 1]
        following = str(start + page.size) if start + page.size + 1 < len(ids) else ""
        return SnapshotPage(
            tuple(replace(self.current(self.snapshots[i]), vm_id="") for i in chunk), following
        )


class Racy(ReferenceDriver):
    """No locks: a take while another runs is FAILED_PRECONDITION, and same-id takes race."""

    def __init__(self) -> None:
        super().__init__()
        self.busy = False

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        if self.busy:
            raise FailedPrecondition("the array is busy")
        self.busy = True
        try:
            existing = self.snapshots.get(request.vm_snapshot_id)
            await asyncio.sleep(0.02)  # the array call, between check and create
            if existing is not None:
                return self.current(existing)
            for v in request.volumes:
                if not self.owns(v):
                    raise NotFound(f"volume {v.locator} is not in this pool")
            return self.current(self.cut(request.vm_snapshot_id, request.vm.id, request.volumes))
        finally:
            self.busy = False


class ConcurrentSameId(ReferenceDriver):
    """Check-then-create without a lock: concurrent retries of one id make several snapshots."""

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        existing = self.snapshots.get(request.vm_snapshot_id)
        await asyncio.sleep(0.01)
        if existing is not None:
            return self.current(existing)
        return self.current(self.cut(request.vm_snapshot_id, request.vm.id, request.volumes))


CHUNK = 4096
#: The bytes the suite compares (64 KiB): copied slowly, 16 chunks, 2 ms apart.
SLOW_BYTES = 64 * 1024


class CorruptingRevert(ReferenceDriver):
    """Copies bytes chunk by chunk with array latency in between, holding no lock.

    Snapshots with an even number copy front to back, odd ones back to front,
    so that two racing copies always cross: the result mixes both states.
    """

    @staticmethod
    def order(snap: Snap) -> list[int]:
        number = int(snap.result.volume_snapshots[0].handle.split("-")[1])
        starts = list(range(0, SLOW_BYTES, CHUNK))
        return starts if number % 2 == 0 else starts[::-1]

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        existing = self.snapshots.get(request.vm_snapshot_id)
        if existing is not None:
            return self.current(existing)
        snap = self.cut(request.vm_snapshot_id, request.vm.id, request.volumes)
        for v in request.volumes:  # copy the first bytes again, slowly: they move meanwhile
            copy = bytearray(snap.data[v.locator])
            for start in self.order(snap):
                copy[start : start + CHUNK] = self.volumes[v.locator][start : start + CHUNK]
                await asyncio.sleep(0.002)
            snap.data[v.locator] = bytes(copy)
        return self.current(snap)

    async def revert_snapshot(self, request: RevertRequest) -> RevertResult:
        snap = self.find(request.vm_snapshot_id)
        for locator, data in snap.data.items():
            self.volumes[locator][SLOW_BYTES:] = data[SLOW_BYTES:]
            for start in self.order(snap):
                self.volumes[locator][start : start + CHUNK] = data[start : start + CHUNK]
                await asyncio.sleep(0.002)
        return RevertResult()


class DeadlineWrongCode(ReferenceDriver):
    """Under a short deadline it answers INTERNAL instead of working or timing out."""

    def check_deadline(self) -> None:
        remaining = current_call().time_remaining()
        if remaining is not None and remaining < 1.0:
            raise Internal("not enough time left")

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        self.check_deadline()
        return await super().take_snapshot(request)

    async def delete_snapshot(self, vm_snapshot_id: str, snapshot: SnapshotResult | None) -> None:
        self.check_deadline()
        await super().delete_snapshot(vm_snapshot_id, snapshot)


class DeltaOmitsRange(ReferenceDriver):
    """Drops the last changed range of every delta page (a backup chain loses it)."""

    async def get_delta(
        self, base: SnapshotRef, target: SnapshotRef, starting_offset: int, max_results: int
    ) -> BlockPage:
        page = await super().get_delta(base, target, starting_offset, max_results)
        return replace(page, ranges=page.ranges[:-1])


class UnsortedRanges(ReferenceDriver):
    """Answers ranges in reverse order, the first one twice (unsorted, overlapping)."""

    async def get_delta(
        self, base: SnapshotRef, target: SnapshotRef, starting_offset: int, max_results: int
    ) -> BlockPage:
        page = await super().get_delta(base, target, starting_offset, max_results)
        return replace(page, ranges=tuple(reversed(page.ranges + page.ranges[:1])))

    async def get_allocated(
        self, snapshot: SnapshotRef, starting_offset: int, max_results: int
    ) -> BlockPage:
        page = await super().get_allocated(snapshot, starting_offset, max_results)
        return replace(page, ranges=tuple(reversed(page.ranges + page.ranges[:1])))


class IgnoresPageSize(ReferenceDriver):
    """Answers every range in one page, whatever max_results says."""

    async def get_delta(
        self, base: SnapshotRef, target: SnapshotRef, starting_offset: int, max_results: int
    ) -> BlockPage:
        return await super().get_delta(base, target, starting_offset, 1000)


class ReadsLiveVolume(ReferenceDriver):
    """ReadSnapshot reads the volume as it is now, not the snapshot."""

    async def read_snapshot(self, snapshot: SnapshotRef, offset: int, length: int) -> bytes:
        return bytes(self.volume(snapshot.volume.locator)[offset : offset + length])
class CloneShares(ReferenceDriver):
    """A "clone" that is the source volume under a second name: no copy at all."""

    async def clone_volumes(self, request: CloneRequest) -> Sequence[Volume]:
        snap = self.find(request.vm_snapshot_id)
        by_disk = {v.disk: v.locator for v in snap.result.volume_snapshots}
        made = []
        for target in request.targets:
            locator = f"ref://pool/{target.name}.{request.clone_id}"
            self.volumes[locator] = self.volumes[by_disk[target.disk]]  # the same bytes
            made.append(Volume(target.disk, locator, len(self.volumes[locator])))
        return made


class CloneNotIdempotent(ReferenceDriver):
    """Every CloneVolumes makes a new set, whatever the clone_id."""

    async def clone_volumes(self, request: CloneRequest) -> Sequence[Volume]:
        self.clones.pop(request.clone_id, None)
        made = await super().clone_volumes(request)
        n = next(self.counter)
        renamed = []
        for volume in made:
            locator = f"{volume.locator}.{n}"
            self.volumes[locator] = self.volumes.pop(volume.locator)
            renamed.append(replace(volume, locator=locator))
        self.clones.pop(request.clone_id, None)
        return renamed


class CloneDeleteNoop(ReferenceDriver):
    """DeleteClonedVolumes answers OK and removes nothing."""

    async def delete_cloned_volumes(self, clone_id: str) -> None:
        return None


class CloneUnclaimed(ReferenceDriver):
    """Clones land under a scheme its own CanHandle does not claim."""

    async def clone_volumes(self, request: CloneRequest) -> Sequence[Volume]:
        made = await super().clone_volumes(request)
        moved = []
        for volume in made:
            locator = volume.locator.replace("ref://", "copy://", 1)
            self.volumes.setdefault(locator, self.volumes[volume.locator])
            moved.append(replace(volume, locator=locator))
        return moved
