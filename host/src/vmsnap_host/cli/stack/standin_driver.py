"""An in-memory storage driver that stands in for a vendor's driver in the embedded stack.

``python -m vmsnap_host.cli.stack.standin_driver --scheme ontap --listen ADDRESS``
claims the volumes whose locator has that scheme and keeps their bytes in
memory, with real snapshots, reverts (with an undo snapshot when asked) and the
ConformanceFixture service, so that ``vmsnap demo`` can prove that a revert
brings the data back. The reference NetApp and SolidFire drivers, with their
emulators, take its place in the stack table when they are available.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import replace

from vmsnap_sdk import (
    VM,
    Capability,
    Consistency,
    DriverInfo,
    Operation,
    Page,
    Priority,
    RevertRequest,
    RevertResult,
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

VOLUME_BYTES = 1 << 20


class StandInDriver(StorageDriver):
    """Volumes ``<scheme>://…`` as byte arrays; a snapshot is a copy of them."""

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme
        self.volumes: dict[str, bytearray] = {}
        self.snapshots: dict[str, SnapshotResult] = {}
        self.data: dict[str, dict[str, bytes]] = {}  # snapshot id → locator → bytes

    def _volume(self, locator: str) -> bytearray:
        if not locator.startswith(f"{self.scheme}://"):
            raise NotFound(f"volume {locator} is not a {self.scheme}:// volume")
        return self.volumes.setdefault(locator, bytearray(VOLUME_BYTES))

    async def get_info(self) -> DriverInfo:
        return DriverInfo(
            name=f"io.vmsnap.standin.{self.scheme}",
            vendor_version="0.1.0",
            capabilities=frozenset(
                {
                    Capability.REVERT,
                    Capability.REVERT_UNDO,
                    Capability.CONSISTENT_GROUP,
                    Capability.LIST,
                    Capability.CONFORMANCE_FIXTURE,
                }
            ),
            labels={"stand-in": "true", "scheme": self.scheme},
        )

    async def can_handle(
        self, vm: VM, volumes: Sequence[Volume], operation: Operation, options: Mapping[str, str]
    ) -> Sequence[VolumeDecision]:
        def decide(v: Volume) -> VolumeDecision:
            if v.scheme == self.scheme:
                return VolumeDecision(
                    v.disk, Priority.PLUGIN, f"{self.scheme}:// volume, consistent group snapshot"
                )
            return VolumeDecision(v.disk, Priority.CANT_HANDLE, f"not a {self.scheme}:// volume")

        return [decide(v) for v in volumes]

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        wanted = tuple(
            VolumeSnapshot(
                v.disk,
                v.locator,
                f"{request.vm_snapshot_id}/{v.disk}",
                len(self._volume(v.locator)),
            )
            for v in request.volumes
        )
        existing = self.snapshots.get(request.vm_snapshot_id)
        if existing is not None:
            if existing.volume_snapshots != wanted:
                raise AlreadyExists(f"{request.vm_snapshot_id} was taken with other volumes")
            return existing
        consistency = Consistency.CRASH
        if request.quiesced:
            consistency = max(Consistency.CRASH, request.consistency)
        result = SnapshotResult(
            request.vm_snapshot_id,
            wanted,
            consistency=consistency,
            group_handle=f"cg-{request.vm_snapshot_id}",
            vm_id=request.vm.id,
        )
        # All volumes are copied in one step of the event loop: one point in time.
        self.data[request.vm_snapshot_id] = {
            v.locator: bytes(self._volume(v.locator)) for v in request.volumes
        }
        self.snapshots[request.vm_snapshot_id] = result
        return result

    async def get_snapshot(self, vm_snapshot_id: str) -> SnapshotResult:
        try:
            return self.snapshots[vm_snapshot_id]
        except KeyError:
            raise NotFound(f"no snapshot {vm_snapshot_id}") from None

    async def revert_snapshot(self, request: RevertRequest) -> RevertResult:
        data = self.data.get(request.vm_snapshot_id)
        if data is None:
            raise NotFound(f"no snapshot {request.vm_snapshot_id}")
        undo: SnapshotResult | None = None
        if request.save_current_state and request.undo_vm_snapshot_id:
            kept = self.snapshots[request.vm_snapshot_id]
            undo = replace(
                kept,
                vm_snapshot_id=request.undo_vm_snapshot_id,
                volume_snapshots=tuple(
                    replace(v, handle=f"{request.undo_vm_snapshot_id}/{v.disk}")
                    for v in kept.volume_snapshots
                ),
            )
            self.data[request.undo_vm_snapshot_id] = {
                locator: bytes(self._volume(locator)) for locator in data
            }
            self.snapshots[request.undo_vm_snapshot_id] = undo
        for locator, content in data.items():
            self._volume(locator)[:] = content
        return RevertResult(undo=undo)

    async def delete_snapshot(self, vm_snapshot_id: str, snapshot: SnapshotResult | None) -> None:
        self.snapshots.pop(vm_snapshot_id, None)
        self.data.pop(vm_snapshot_id, None)

    async def list_snapshots(self, page: Page, vm_id: str = "") -> SnapshotPage:
        ids = sorted(k for k, s in self.snapshots.items() if not vm_id or s.vm_id == vm_id)
        rest = [i for i in ids if i >= page.token] if page.token else ids
        following = rest[page.size : page.size + 1]
        return SnapshotPage(
            tuple(self.snapshots[i] for i in rest[: page.size]),
            following[0] if following else "",
        )

    # --- ConformanceFixture -----------------------------------------------------------

    async def create_test_volume(self, name: str, size_bytes: int) -> Volume:
        locator = f"{self.scheme}://standin/{name}"
        self.volumes[locator] = bytearray(size_bytes or VOLUME_BYTES)
        return Volume(disk="", locator=locator, size_bytes=len(self.volumes[locator]))

    async def delete_test_volume(self, locator: str) -> None:
        self.volumes.pop(locator, None)

    async def write_volume(self, locator: str, offset: int, data: bytes) -> None:
        volume = self._volume(locator)
        if offset + len(data) > len(volume):
            raise InvalidArgument.for_field("offset", f"past the end of {locator}")
        volume[offset : offset + len(data)] = data

    async def read_volume(self, locator: str, offset: int, length: int) -> bytes:
        return bytes(self._volume(locator)[offset : offset + length])


def main() -> None:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--scheme", required=True, help="locator scheme to claim, e.g. ontap")

    run_driver(
        lambda args: StandInDriver(args.scheme),
        description="vmsnap stand-in storage driver (in memory)",
        extra_arguments=extra,
    )


if __name__ == "__main__":
    main()
