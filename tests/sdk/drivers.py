"""Small in-process drivers that misbehave on purpose, for adapter tests."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from vmsnap_sdk import (
    VM,
    DriverInfo,
    Operation,
    Priority,
    SnapshotResult,
    StorageDriver,
    TakeRequest,
    Volume,
    VolumeDecision,
    VolumeSnapshot,
    current_call,
)
from vmsnap_sdk.errors import VMSnapError


class ScriptedDriver(StorageDriver):
    """Raises ``raise_on_take`` if set; otherwise takes after ``release`` is set."""

    def __init__(self) -> None:
        self.raise_on_take: BaseException | None = None
        self.release = asyncio.Event()
        self.release.set()
        self.entered = asyncio.Event()
        self.seen_remaining: list[float | None] = []
        self.calls = 0

    async def get_info(self) -> DriverInfo:
        return DriverInfo(name="io.vmsnap.test.scripted", vendor_version="0.0.1")

    async def can_handle(
        self, vm: VM, volumes: Sequence[Volume], operation: Operation, options: Mapping[str, str]
    ) -> Sequence[VolumeDecision]:
        return [VolumeDecision(v.disk, Priority.PLUGIN) for v in volumes]

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        self.calls += 1
        self.seen_remaining.append(current_call().time_remaining())
        self.entered.set()
        await self.release.wait()
        if self.raise_on_take is not None:
            raise self.raise_on_take
        return SnapshotResult(
            request.vm_snapshot_id,
            tuple(VolumeSnapshot(v.disk, v.locator, "h-" + v.disk) for v in request.volumes),
        )

    async def delete_snapshot(self, vm_snapshot_id: str, snapshot: SnapshotResult | None) -> None:
        return None


__all__ = ["ScriptedDriver", "VMSnapError"]
