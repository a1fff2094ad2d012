"""A full in-memory driver with every capability, the fixture included.

The suite's yardstick: it must pass every check. Volumes are byte arrays
under ``ref://pool/<name>``; a snapshot copies their bytes. Operations on one
volume are serialized by a per-volume lock taken in sorted order (no
deadlock), and takes finish post-processing (``ready``) shortly after.

Run it:  python -m tests.conformance.reference_driver --listen unix:///tmp/ref.sock
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime

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
    RevertRequest,
    RevertResult,
    SnapshotPage,
    SnapshotResult,
    StorageDriver,
    TakeRequest,
    UnmanagedPage,
    Volume,
    VolumeDecision,
    VolumeSnapshot,
    run_driver,
)
from vmsnap_sdk.blocks import BlockPage, SnapshotRef, blocks_to_ranges, page_of
from vmsnap_sdk.errors import AlreadyExists, InvalidArgument, NotFound

SCHEME = "ref"
#: Granularity of the reference driver's changed blocks.
BLOCK = 4096
POST_PROCESSING_SECONDS = 0.05


@dataclass
class Snap:
    result: SnapshotResult
    data: dict[str, bytes]
    ready_at: float
    key: tuple[tuple[str, str], ...]


class ReferenceDriver(StorageDriver):
    """Every capability, correct and serialized."""

    name = "io.vmsnap.test.reference"

    def __init__(self) -> None:
        self.volumes: dict[str, bytearray] = {}
        self.snapshots: dict[str, Snap] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.id_locks: dict[str, asyncio.Lock] = {}
        self.counter = itertools.count(1)
        #: clone_id → (what was asked, the new volumes): a retry answers the same.
        self.clones: dict[str, tuple[tuple[object, ...], list[Volume]]] = {}

    async def get_info(self) -> DriverInfo:
        return DriverInfo(
            name=self.name,
            vendor_version="1.0.0",
            capabilities=frozenset(Capability) - {Capability.UNSPECIFIED},
            limits=Limits(max_volumes_per_snapshot=64),
            labels={"array": "memory"},
        )

    # --- questions ----------------------------------------------------------------

    def owns(self, volume: Volume) -> bool:
        return volume.scheme == SCHEME and volume.locator in self.volumes

    async def can_handle(
        self, vm: VM, volumes: Sequence[Volume], operation: Operation, options: Mapping[str, str]
    ) -> Sequence[VolumeDecision]:
        return [
            VolumeDecision(v.disk, Priority.PLUGIN, "volume of the reference pool")
            if self.owns(v)
            else VolumeDecision(v.disk, Priority.CANT_HANDLE, "not a volume of this pool")
            for v in volumes
        ]

    # --- helpers ------------------------------------------------------------------

    def lock(self, key: str, table: dict[str, asyncio.Lock]) -> asyncio.Lock:
        return table.setdefault(key, asyncio.Lock())

    async def locked(self, stack: AsyncExitStack, locators: Sequence[str]) -> None:
        for locator in sorted(set(locators)):
            await stack.enter_async_context(self.lock(locator, self.locks))

    def current(self, snap: Snap) -> SnapshotResult:
        return replace(snap.result, ready=time.monotonic() >= snap.ready_at)

    def find(self, vm_snapshot_id: str) -> Snap:
        snap = self.snapshots.get(vm_snapshot_id)
        if snap is None:
            raise NotFound(f"snapshot {vm_snapshot_id} is unknown", reason="SNAPSHOT_NOT_FOUND")
        return snap

    def cut(self, vm_snapshot_id: str, vm_id: str, volumes: Sequence[Volume]) -> Snap:
        """Copy the volumes' bytes (callers hold their locks)."""
        n = next(self.counter)
        result = SnapshotResult(
            vm_snapshot_id=vm_snapshot_id,
            volume_snapshots=tuple(
                VolumeSnapshot(v.disk, v.locator, f"ref-{n}-{v.disk}", len(self.volumes[v.locator]))
                for v in volumes
            ),
            ready=False,
            consistency=Consistency.CRASH,
            group_handle=f"ref-group-{n}",
            metadata={"pool": "pool"},
            create_time=datetime.now(UTC),
            vm_id=vm_id,
        )
        snap = Snap(
            result,
            {v.locator: bytes(self.volumes[v.locator]) for v in volumes},
            time.monotonic() + POST_PROCESSING_SECONDS,
            tuple(sorted((v.disk, v.locator) for v in volumes)),
        )
        self.snapshots[vm_snapshot_id] = snap
        return snap

    # --- snapshots ----------------------------------------------------------------

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        key = tuple(sorted((v.disk, v.locator) for v in request.volumes))
        async with self.lock(request.vm_snapshot_id, self.id_locks):
            existing = self.snapshots.get(request.vm_snapshot_id)
            if existing is not None:
                if existing.key != key:
                    raise AlreadyExists(
                        f"{request.vm_snapshot_id} was taken with other volumes",
                        reason="SNAPSHOT_ID_REUSED",
                    )
                return self.current(existing)
            for v in request.volumes:
                if not self.owns(v):
                    raise NotFound(
                        f"volume {v.locator} is not in this pool", reason="VOLUME_NOT_FOUND"
                    )
            async with AsyncExitStack() as stack:
                await self.locked(stack, [v.locator for v in request.volumes])
                return self.current(
                    self.cut(request.vm_snapshot_id, request.vm.id, request.volumes)
                )

    async def get_snapshot(self, vm_snapshot_id: str) -> SnapshotResult:
        return self.current(self.find(vm_snapshot_id))

    async def revert_snapshot(self, request: RevertRequest) -> RevertResult:
        snap = self.find(request.vm_snapshot_id)
        volumes = [Volume(v.disk, v.locator) for v in snap.result.volume_snapshots]
        async with AsyncExitStack() as stack:
            await self.locked(stack, [v.locator for v in volumes])
            missing = [v.locator for v in volumes if v.locator not in self.volumes]
            if missing:
                raise NotFound(f"volumes {missing} are gone", reason="VOLUME_NOT_FOUND")
            undo = None
            if request.save_current_state:
                existing = self.snapshots.get(request.undo_vm_snapshot_id)
                undo_snap = existing or self.cut(
                    request.undo_vm_snapshot_id, snap.result.vm_id, volumes
                )
                undo = self.current(undo_snap)
            for locator, data in snap.data.items():
                self.volumes[locator][:] = data
        return RevertResult(undo=undo)

    async def delete_snapshot(self, vm_snapshot_id: str, snapshot: SnapshotResult | None) -> None:
        async with self.lock(vm_snapshot_id, self.id_locks):
            self.snapshots.pop(vm_snapshot_id, None)

    async def list_snapshots(self, page: Page, vm_id: str = "") -> SnapshotPage:
        after = decode_token(page.token)
        ids = sorted(i for i, s in self.snapshots.items() if (not vm_id or s.result.vm_id == vm_id))
        remaining = [i for i in ids if i > after] if after else ids
        chunk = remaining[: page.size]
        token = encode_token(chunk[-1]) if len(remaining) > page.size else ""
        return SnapshotPage(tuple(self.current(self.snapshots[i]) for i in chunk), token)

    # --- changed blocks and snapshot reads -----------------------------------------

    def snapshot_bytes(self, ref: SnapshotRef) -> bytes:
        snap = self.find(ref.vm_snapshot_id)
        data = snap.data.get(ref.volume.locator)
        if data is None:
            raise NotFound(
                f"snapshot {ref.vm_snapshot_id} has no volume {ref.volume.locator}",
                reason="SNAPSHOT_NOT_FOUND",
            )
        return data

    @staticmethod
    def blocks(data: bytes) -> list[bytes]:
        return [data[i : i + BLOCK] for i in range(0, len(data), BLOCK)]

    async def get_allocated(
        self, snapshot: SnapshotRef, starting_offset: int, max_results: int
    ) -> BlockPage:
        data = self.snapshot_bytes(snapshot)
        used = [i for i, b in enumerate(self.blocks(data)) if b.count(0) != len(b)]
        ranges, done = page_of(
            blocks_to_ranges(used, BLOCK, len(data)), starting_offset, max_results
        )
        return BlockPage(ranges, BLOCK, len(data), done=done)

    async def get_delta(
        self, base: SnapshotRef, target: SnapshotRef, starting_offset: int, max_results: int
    ) -> BlockPage:
        old, new = self.snapshot_bytes(base), self.snapshot_bytes(target)
        pairs = zip(self.blocks(old), self.blocks(new), strict=False)
        changed = [i for i, (a, b) in enumerate(pairs) if a != b]
        ranges, done = page_of(
            blocks_to_ranges(changed, BLOCK, len(new)), starting_offset, max_results
        )
        return BlockPage(ranges, BLOCK, len(new), done=done)

    async def read_snapshot(self, snapshot: SnapshotRef, offset: int, length: int) -> bytes:
        data = self.snapshot_bytes(snapshot)
        if offset + length > len(data):
            raise InvalidArgument.for_field("length", "reads past the end of the volume")
        return data[offset : offset + length]
    # --- clones -------------------------------------------------------------------

    async def clone_volumes(self, request: CloneRequest) -> Sequence[Volume]:
        key = (request.vm_snapshot_id, request.new_vm_id, request.targets)
        async with self.lock(f"clone:{request.clone_id}", self.id_locks):
            existing = self.clones.get(request.clone_id)
            if existing is not None:
                if existing[0] != key:
                    raise AlreadyExists(
                        f"clone {request.clone_id} was made from another snapshot or targets",
                        reason="CLONE_ID_REUSED",
                    )
                return existing[1]
            snap = self.find(request.vm_snapshot_id)
            by_disk = {v.disk: v.locator for v in snap.result.volume_snapshots}
            made = []
            for target in request.targets:
                locator = f"{SCHEME}://pool/{target.name}.{request.clone_id}"
                # A copy of the snapshot's bytes: independent of source and snapshot.
                data = snap.data[by_disk[target.disk]]
                self.volumes[locator] = bytearray(data)
                made.append(Volume(target.disk, locator, len(data)))
            self.clones[request.clone_id] = (key, made)
            return made

    async def delete_cloned_volumes(self, clone_id: str) -> None:
        async with self.lock(f"clone:{clone_id}", self.id_locks):
            _, made = self.clones.pop(clone_id, (None, []))
            for volume in made:
                self.volumes.pop(volume.locator, None)
    async def list_unmanaged_snapshots(
        self, volumes: Sequence[Volume], page: Page
    ) -> UnmanagedPage:
        # Every snapshot of this pool is the host's: nothing to adopt, ever.
        decode_token(page.token)
        return UnmanagedPage(())

    # --- fixture ------------------------------------------------------------------

    async def create_test_volume(self, name: str, size_bytes: int) -> Volume:
        locator = f"{SCHEME}://pool/{name}"
        self.volumes.setdefault(locator, bytearray(size_bytes))
        return Volume(disk="vda", locator=locator, size_bytes=size_bytes)

    async def delete_test_volume(self, locator: str) -> None:
        self.volumes.pop(locator, None)

    def volume(self, locator: str) -> bytearray:
        data = self.volumes.get(locator)
        if data is None:
            raise NotFound(f"test volume {locator} is unknown", reason="VOLUME_NOT_FOUND")
        return data

    async def write_volume(self, locator: str, offset: int, data: bytes) -> None:
        async with self.lock(locator, self.locks):
            volume = self.volume(locator)
            if offset + len(data) > len(volume):
                raise InvalidArgument.for_field("data", "writes past the end of the volume")
            volume[offset : offset + len(data)] = data

    async def read_volume(self, locator: str, offset: int, length: int) -> bytes:
        async with self.lock(locator, self.locks):
            return bytes(self.volume(locator)[offset : offset + length])


_TOKEN_PREFIX = "after:"


def encode_token(last_id: str) -> str:
    return base64.urlsafe_b64encode((_TOKEN_PREFIX + last_id).encode()).decode()


def decode_token(token: str) -> str:
    """The id a token continues after ("" for the first page); INVALID_ARGUMENT if forged."""
    if not token:
        return ""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith(_TOKEN_PREFIX) or len(text) == len(_TOKEN_PREFIX):
        raise InvalidArgument.for_field("page_token", "is not a token this driver issued")
    return text[len(_TOKEN_PREFIX) :]


if __name__ == "__main__":
    run_driver(lambda args: ReferenceDriver(), description="vmsnap reference test driver")
