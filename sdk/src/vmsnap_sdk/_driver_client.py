"""Client adapter: a :class:`StorageDriver` that calls a remote driver over gRPC.

The host uses this exactly like a local driver object; errors come back as the
VMSnapError classes the remote raised (with reason, field violations and retry
delay), transport failures as Unavailable / DeadlineExceeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from vmsnap_sdk import _convert as cv
from vmsnap_sdk._client import call
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.driver.v1 import driver_pb2, driver_pb2_grpc
from vmsnap_sdk._tls import ClientTLS, open_channel
from vmsnap_sdk._types import (
    VM,
    DriverInfo,
    Operation,
    Page,
    ProbeResult,
    RevertRequest,
    RevertResult,
    SnapshotPage,
    SnapshotResult,
    TakeRequest,
    UnmanagedPage,
    Volume,
    VolumeDecision,
)
from vmsnap_sdk.driver import StorageDriver


class DriverClient(StorageDriver):
    """A remote storage driver. ``timeout`` is the default per-call deadline in seconds."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float | None = 30.0) -> None:
        self.channel = channel
        self.timeout = timeout
        self._stub = driver_pb2_grpc.StorageDriverStub(channel)
        self._fixture = driver_pb2_grpc.ConformanceFixtureStub(channel)

    @classmethod
    def connect(
        cls, address: str, *, tls: ClientTLS | None = None, timeout: float | None = 30.0
    ) -> DriverClient:
        """A client on a new channel (connects lazily, on the first call)."""
        return cls(open_channel(address, tls), timeout=timeout)

    async def close(self) -> None:
        await self.channel.close(None)

    def _t(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    async def get_info(self, *, timeout: float | None = None) -> DriverInfo:
        response = await call(
            self._stub.GetDriverInfo, driver_pb2.GetDriverInfoRequest(), self._t(timeout)
        )
        return cv.driver_info_from_pb(response)

    async def probe(self, *, timeout: float | None = None) -> ProbeResult:
        response = await call(self._stub.Probe, driver_pb2.ProbeRequest(), self._t(timeout))
        return ProbeResult(ready=response.ready, message=response.message)

    async def can_handle(
        self,
        vm: VM,
        volumes: Sequence[Volume],
        operation: Operation,
        options: Mapping[str, str],
        *,
        timeout: float | None = None,
    ) -> Sequence[VolumeDecision]:
        request = driver_pb2.CanHandleRequest(
            vm=cv.vm_to_pb(vm),
            volumes=cv.volumes_to_pb(volumes),
            operation=driver_pb2.Operation.ValueType(operation.value),
            options=dict(options),
        )
        response = await call(self._stub.CanHandle, request, self._t(timeout))
        return [cv.decision_from_pb(d) for d in response.decisions]

    async def take_snapshot(
        self, request: TakeRequest, *, timeout: float | None = None
    ) -> SnapshotResult:
        message = driver_pb2.TakeVMSnapshotRequest(
            vm_snapshot_id=request.vm_snapshot_id,
            vm=cv.vm_to_pb(request.vm),
            volumes=cv.volumes_to_pb(request.volumes),
            quiesced=request.quiesced,
            consistency=common_pb2.Consistency.ValueType(request.consistency.value),
            parameters=dict(request.parameters),
            vm_snapshot_name=request.vm_snapshot_name,
        )
        response = await call(self._stub.TakeVMSnapshot, message, self._t(timeout))
        return cv.result_from_pb(response.result)

    async def get_snapshot(
        self, vm_snapshot_id: str, *, timeout: float | None = None
    ) -> SnapshotResult:
        response = await call(
            self._stub.GetVMSnapshot,
            driver_pb2.GetVMSnapshotRequest(vm_snapshot_id=vm_snapshot_id),
            self._t(timeout),
        )
        return cv.result_from_pb(response.result)

    async def revert_snapshot(
        self, request: RevertRequest, *, timeout: float | None = None
    ) -> RevertResult:
        message = driver_pb2.RevertVMSnapshotRequest(
            vm_snapshot_id=request.vm_snapshot_id,
            snapshot=cv.result_to_pb(request.snapshot),
            vm=cv.vm_to_pb(request.vm),
            save_current_state=request.save_current_state,
            undo_vm_snapshot_id=request.undo_vm_snapshot_id,
        )
        response = await call(self._stub.RevertVMSnapshot, message, self._t(timeout))
        undo = cv.result_from_pb(response.undo) if response.HasField("undo") else None
        return RevertResult(undo=undo)

    async def delete_snapshot(
        self,
        vm_snapshot_id: str,
        snapshot: SnapshotResult | None,
        *,
        timeout: float | None = None,
    ) -> None:
        message = driver_pb2.DeleteVMSnapshotRequest(vm_snapshot_id=vm_snapshot_id)
        if snapshot is not None:
            message.snapshot.CopyFrom(cv.result_to_pb(snapshot))
        await call(self._stub.DeleteVMSnapshot, message, self._t(timeout))

    async def list_snapshots(
        self, page: Page, vm_id: str = "", *, timeout: float | None = None
    ) -> SnapshotPage:
        response = await call(
            self._stub.ListVMSnapshots,
            driver_pb2.ListVMSnapshotsRequest(
                page_size=page.size, page_token=page.token, vm_id=vm_id
            ),
            self._t(timeout),
        )
        return SnapshotPage(
            snapshots=tuple(cv.result_from_pb(r) for r in response.vm_snapshots),
            next_token=response.next_page_token,
        )

    async def list_unmanaged_snapshots(
        self, volumes: Sequence[Volume], page: Page, *, timeout: float | None = None
    ) -> UnmanagedPage:
        response = await call(
            self._stub.ListUnmanagedSnapshots,
            driver_pb2.ListUnmanagedSnapshotsRequest(
                volumes=[cv.volume_to_pb(v) for v in volumes],
                page_size=page.size,
                page_token=page.token,
            ),
            self._t(timeout),
        )
        return UnmanagedPage(
            snapshots=tuple(cv.unmanaged_from_pb(u) for u in response.snapshots),
            next_token=response.next_page_token,
        )

    async def create_test_volume(
        self, name: str, size_bytes: int, *, timeout: float | None = None
    ) -> Volume:
        response = await call(
            self._fixture.CreateTestVolume,
            driver_pb2.CreateTestVolumeRequest(name=name, size_bytes=size_bytes),
            self._t(timeout),
        )
        return cv.volume_from_pb(response.volume)

    async def delete_test_volume(self, locator: str, *, timeout: float | None = None) -> None:
        await call(
            self._fixture.DeleteTestVolume,
            driver_pb2.DeleteTestVolumeRequest(locator=locator),
            self._t(timeout),
        )

    async def write_volume(
        self, locator: str, offset: int, data: bytes, *, timeout: float | None = None
    ) -> None:
        await call(
            self._fixture.WriteVolume,
            driver_pb2.WriteVolumeRequest(locator=locator, offset=offset, data=data),
            self._t(timeout),
        )

    async def read_volume(
        self, locator: str, offset: int, length: int, *, timeout: float | None = None
    ) -> bytes:
        response = await call(
            self._fixture.ReadVolume,
            driver_pb2.ReadVolumeRequest(locator=locator, offset=offset, length=length),
            self._t(timeout),
        )
        return response.data
