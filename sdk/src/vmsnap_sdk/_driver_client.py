"""Client adapter: a :class:`StorageDriver` that calls a remote driver over gRPC.

The host uses this exactly like a local driver object; errors come back as the
VMSnapError classes the remote raised (with reason, field violations and retry
delay), transport failures as Unavailable / DeadlineExceeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from vmsnap_sdk import _blocks_wire as bw
from vmsnap_sdk import _convert as cv
from vmsnap_sdk._client import call
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.driver.v1 import driver_pb2, driver_pb2_grpc
from vmsnap_sdk._tls import ClientTLS, open_channel
from vmsnap_sdk._types import (
    VM,
    CloneRequest,
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
from vmsnap_sdk.blocks import (
    DEFAULT_MAX_RESULTS,
    MAX_CHUNK,
    MIN_CHUNK,
    BlockPage,
    SnapshotRef,
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

    async def clone_volumes(
        self, request: CloneRequest, *, timeout: float | None = None
    ) -> list[Volume]:
        message = driver_pb2.CloneVolumesRequest(
            clone_id=request.clone_id,
            vm_snapshot_id=request.vm_snapshot_id,
            snapshot=cv.result_to_pb(request.snapshot),
            new_vm_id=request.new_vm_id,
            targets=[driver_pb2.CloneTarget(disk=t.disk, name=t.name) for t in request.targets],
            parameters=dict(request.parameters),
        )
        response = await call(self._stub.CloneVolumes, message, self._t(timeout))
        return [cv.volume_from_pb(v) for v in response.volumes]

    async def delete_cloned_volumes(self, clone_id: str, *, timeout: float | None = None) -> None:
        await call(
            self._stub.DeleteClonedVolumes,
            driver_pb2.DeleteClonedVolumesRequest(clone_id=clone_id),
            self._t(timeout),
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

    # --- changed blocks and snapshot reads: one page (or chunk) per call --------------
    # The host walks a volume page by page (resuming from the last range's end), so
    # each call reads the stream's first message and cancels the rest.

    async def get_allocated(
        self,
        snapshot: SnapshotRef,
        starting_offset: int,
        max_results: int,
        *,
        timeout: float | None = None,
    ) -> BlockPage:
        stream = self._stub.GetMetadataAllocated(
            driver_pb2.GetMetadataAllocatedRequest(
                snapshot=bw.ref_to_pb(snapshot),
                starting_offset=starting_offset,
                max_results=max_results,
            ),
            timeout=self._t(timeout),
        )
        return _page(await bw.first_message(stream), max_results or DEFAULT_MAX_RESULTS)

    async def get_delta(
        self,
        base: SnapshotRef,
        target: SnapshotRef,
        starting_offset: int,
        max_results: int,
        *,
        timeout: float | None = None,
    ) -> BlockPage:
        stream = self._stub.GetMetadataDelta(
            driver_pb2.GetMetadataDeltaRequest(
                base=bw.ref_to_pb(base),
                target=bw.ref_to_pb(target),
                starting_offset=starting_offset,
                max_results=max_results,
            ),
            timeout=self._t(timeout),
        )
        return _page(await bw.first_message(stream), max_results or DEFAULT_MAX_RESULTS)

    async def read_snapshot(
        self, snapshot: SnapshotRef, offset: int, length: int, *, timeout: float | None = None
    ) -> bytes:
        if not 0 < length <= MAX_CHUNK:
            raise ValueError(f"read at most {MAX_CHUNK} bytes per call")
        stream = self._stub.ReadSnapshot(
            driver_pb2.ReadSnapshotRequest(
                snapshot=bw.ref_to_pb(snapshot),
                offset=offset,
                length=length,
                chunk_size=max(length, MIN_CHUNK),
            ),
            timeout=self._t(timeout),
        )
        data = b""
        async for message in bw.iterate(stream):
            data += message.data
        return data


def _page(message: object, most: int) -> BlockPage:
    if message is None:
        # A stream with no message at all: nothing to say, like an empty last page.
        return BlockPage(ranges=(), block_size=0, capacity_bytes=0)
    return bw.page_from_pb(message, most)
