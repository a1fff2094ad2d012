"""A complete in-memory vmsnap storage driver: the smallest useful example.

Claims volumes whose locator starts with ``mem://``; snapshots are kept in a
dict. Run it as its own process:  python minimal_driver.py --listen unix:///tmp/mem.sock
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vmsnap_sdk import (
    VM,
    Capability,
    DriverInfo,
    Operation,
    Page,
    Priority,
    SnapshotPage,
    SnapshotResult,
    StorageDriver,
    TakeRequest,
    Volume,
    VolumeDecision,
    VolumeSnapshot,
    run_driver,
)
from vmsnap_sdk.errors import AlreadyExists, InvalidArgument, NotFound


class MemoryDriver(StorageDriver):
    def __init__(self) -> None:
        self.snapshots: dict[str, SnapshotResult] = {}

    async def get_info(self) -> DriverInfo:
        return DriverInfo(
            name="io.vmsnap.example.memory",
            vendor_version="1.0.0",
            capabilities=frozenset({Capability.CONSISTENT_GROUP, Capability.LIST}),
        )

    async def can_handle(
        self, vm: VM, volumes: Sequence[Volume], operation: Operation, options: Mapping[str, str]
    ) -> Sequence[VolumeDecision]:
        def decide(v: Volume) -> VolumeDecision:
            if v.scheme == "mem":
                return VolumeDecision(v.disk, Priority.PLUGIN, "in-memory volume")
            return VolumeDecision(v.disk, Priority.CANT_HANDLE, "not a mem:// volume")

        return [decide(v) for v in volumes]

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        for v in request.volumes:
            if v.scheme != "mem":
                raise NotFound(f"volume {v.locator} is not on this driver")
        wanted = tuple(
            VolumeSnapshot(v.disk, v.locator, f"{request.vm_snapshot_id}/{v.disk}")
            for v in request.volumes
        )
        result = SnapshotResult(request.vm_snapshot_id, wanted, vm_id=request.vm.id)
        existing = self.snapshots.setdefault(request.vm_snapshot_id, result)
        if existing.volume_snapshots != wanted:
            raise AlreadyExists(f"{request.vm_snapshot_id} was taken with other volumes")
        return existing

    async def delete_snapshot(self, vm_snapshot_id: str, snapshot: SnapshotResult | None) -> None:
        self.snapshots.pop(vm_snapshot_id, None)

    async def list_snapshots(self, page: Page, vm_id: str = "") -> SnapshotPage:
        ids = sorted(k for k, s in self.snapshots.items() if not vm_id or s.vm_id == vm_id)
        if page.token and page.token not in ids:  # a token this driver never issued
            raise InvalidArgument.for_field("page_token", "is not a token of this driver")
        start = ids.index(page.token) if page.token else 0
        chunk = ids[start : start + page.size]
        following = ids[start + page.size] if start + page.size < len(ids) else ""
        return SnapshotPage(tuple(self.snapshots[i] for i in chunk), following)


if __name__ == "__main__":
    run_driver(lambda args: MemoryDriver(), description=__doc__.splitlines()[0])
