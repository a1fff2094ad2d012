"""Server adapter: the StorageDriver and ConformanceFixture RPCs → a StorageDriver.

Validates each request (so a driver only ever sees well-formed input), converts
to domain types, calls the driver through :func:`invoke`, checks the driver's
answer keeps the contract (including the size limits of :mod:`vmsnap_sdk.limits`:
an answer over them is refused with INTERNAL naming the field, and logged, so a
vendor finds out in its own tests), and converts back.
"""

from __future__ import annotations

import logging
from typing import Any, TypeAlias

import grpc

from vmsnap_sdk import _blocks_wire as bw
from vmsnap_sdk import _convert as cv
from vmsnap_sdk import _validate as val
from vmsnap_sdk import limits
from vmsnap_sdk._errors import Internal, InvalidArgument
from vmsnap_sdk._proto.driver.v1 import driver_pb2, driver_pb2_grpc
from vmsnap_sdk._reasons import Reason
from vmsnap_sdk._server import invoke
from vmsnap_sdk._types import (
    CloneRequest,
    CloneTarget,
    Consistency,
    Operation,
    Page,
    RevertRequest,
    TakeRequest,
    Volume,
)
from vmsnap_sdk.driver import StorageDriver

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger("vmsnap.server")


def _within_limits(method: str, problem: str | None) -> None:
    """Refuse to send an answer that breaks a size limit of the contract."""
    if problem is None:
        return
    log.error(
        "the driver's answer breaks the contract's size limits; refused",
        extra={"fields": {"method": method, "problem": problem}},
    )
    raise Internal(
        f"the driver's {method} answer breaks the contract's size limits: {problem} "
        "(vmsnap_sdk.limits); the SDK refused to send it",
        reason=Reason.ANSWER_OVER_LIMITS,
    )


def _valid_input(method: str, volume: Volume) -> None:
    """Refuse a test volume its caller could not pass back (DefineVM, CanHandle,
    TakeVMSnapshot validate it): the fixture exists to make valid inputs."""
    try:
        val.require_volumes("volume", [volume])
    except InvalidArgument as exc:
        log.error(
            "the driver's answer is not a valid input; refused",
            extra={"fields": {"method": method, "problem": exc.message}},
        )
        raise Internal(
            f"the driver's {method} answer is not a valid input: {exc.message} (make the "
            "disk with vmsnap_sdk.fixture_disk_name(name)); the SDK refused to send it",
            reason=Reason.ANSWER_INVALID,
        ) from None


class DriverServicer(driver_pb2_grpc.StorageDriverServicer):
    """Serves a :class:`StorageDriver` over vmsnap.driver.v1.StorageDriver."""

    def __init__(self, driver: StorageDriver) -> None:
        self._driver = driver

    async def GetDriverInfo(  # noqa: N802 - gRPC method names
        self, request: driver_pb2.GetDriverInfoRequest, context: Ctx
    ) -> driver_pb2.GetDriverInfoResponse:
        async def run() -> driver_pb2.GetDriverInfoResponse:
            info = await self._driver.get_info()
            _within_limits("GetDriverInfo", limits.driver_info_problem(info))
            return cv.driver_info_to_pb(info)

        return await invoke(context, "GetDriverInfo", run)

    async def Probe(  # noqa: N802
        self, request: driver_pb2.ProbeRequest, context: Ctx
    ) -> driver_pb2.ProbeResponse:
        async def run() -> driver_pb2.ProbeResponse:
            result = await self._driver.probe()
            # A message for people: cut like an error message, never refused.
            return driver_pb2.ProbeResponse(ready=result.ready, message=limits.cut(result.message))

        return await invoke(context, "Probe", run)

    async def CanHandle(  # noqa: N802
        self, request: driver_pb2.CanHandleRequest, context: Ctx
    ) -> driver_pb2.CanHandleResponse:
        async def run() -> driver_pb2.CanHandleResponse:
            volumes = [cv.volume_from_pb(v) for v in request.volumes]
            val.require_volumes("volumes", volumes)
            if request.operation == driver_pb2.OPERATION_UNSPECIFIED:
                raise InvalidArgument.for_field("operation", "is required (TAKE, REVERT or DELETE)")
            val.require_map("options", request.options)
            vm = cv.vm_from_pb(request.vm)
            decisions = list(
                await self._driver.can_handle(
                    vm, volumes, cv._enum(Operation, request.operation), dict(request.options)
                )
            )
            by_disk = {d.disk: d for d in decisions}
            if set(by_disk) != {v.disk for v in volumes} or len(decisions) != len(volumes):
                raise Internal("driver answered CanHandle without one decision per volume")
            _within_limits("CanHandle", limits.decisions_problem(decisions))
            return driver_pb2.CanHandleResponse(
                decisions=[cv.decision_to_pb(by_disk[v.disk]) for v in volumes]
            )

        return await invoke(context, "CanHandle", run)

    async def TakeVMSnapshot(  # noqa: N802
        self, request: driver_pb2.TakeVMSnapshotRequest, context: Ctx
    ) -> driver_pb2.TakeVMSnapshotResponse:
        async def run() -> driver_pb2.TakeVMSnapshotResponse:
            val.require_id("vm_snapshot_id", request.vm_snapshot_id)
            val.require_id("vm.id", request.vm.id)
            volumes = tuple(cv.volume_from_pb(v) for v in request.volumes)
            val.require_volumes("volumes", volumes)
            val.require_map("parameters", request.parameters)
            val.require_text("vm_snapshot_name", request.vm_snapshot_name, required=False)
            take = TakeRequest(
                vm_snapshot_id=request.vm_snapshot_id,
                vm=cv.vm_from_pb(request.vm),
                volumes=volumes,
                quiesced=request.quiesced,
                consistency=cv._enum(Consistency, request.consistency),
                parameters=dict(request.parameters),
                vm_snapshot_name=request.vm_snapshot_name,
            )
            result = await self._driver.take_snapshot(take)
            if result.disks != {v.disk for v in volumes}:
                raise Internal("driver's result does not cover exactly the requested volumes")
            _within_limits("TakeVMSnapshot", limits.result_problem(result))
            return driver_pb2.TakeVMSnapshotResponse(result=cv.result_to_pb(result))

        return await invoke(context, "TakeVMSnapshot", run)

    async def GetVMSnapshot(  # noqa: N802
        self, request: driver_pb2.GetVMSnapshotRequest, context: Ctx
    ) -> driver_pb2.GetVMSnapshotResponse:
        async def run() -> driver_pb2.GetVMSnapshotResponse:
            val.require_id("vm_snapshot_id", request.vm_snapshot_id)
            result = await self._driver.get_snapshot(request.vm_snapshot_id)
            _within_limits("GetVMSnapshot", limits.result_problem(result))
            return driver_pb2.GetVMSnapshotResponse(result=cv.result_to_pb(result))

        return await invoke(context, "GetVMSnapshot", run)

    async def RevertVMSnapshot(  # noqa: N802
        self, request: driver_pb2.RevertVMSnapshotRequest, context: Ctx
    ) -> driver_pb2.RevertVMSnapshotResponse:
        async def run() -> driver_pb2.RevertVMSnapshotResponse:
            val.require_id("vm_snapshot_id", request.vm_snapshot_id)
            if request.save_current_state:
                val.require_id("undo_vm_snapshot_id", request.undo_vm_snapshot_id)
            revert = RevertRequest(
                vm_snapshot_id=request.vm_snapshot_id,
                snapshot=cv.result_from_pb(request.snapshot),
                vm=cv.vm_from_pb(request.vm),
                save_current_state=request.save_current_state,
                undo_vm_snapshot_id=request.undo_vm_snapshot_id,
            )
            result = await self._driver.revert_snapshot(revert)
            response = driver_pb2.RevertVMSnapshotResponse()
            if result.undo is not None:
                _within_limits("RevertVMSnapshot", limits.result_problem(result.undo))
                response.undo.CopyFrom(cv.result_to_pb(result.undo))
            return response

        return await invoke(context, "RevertVMSnapshot", run)

    async def DeleteVMSnapshot(  # noqa: N802
        self, request: driver_pb2.DeleteVMSnapshotRequest, context: Ctx
    ) -> driver_pb2.DeleteVMSnapshotResponse:
        async def run() -> driver_pb2.DeleteVMSnapshotResponse:
            val.require_id("vm_snapshot_id", request.vm_snapshot_id)
            snapshot = cv.result_from_pb(request.snapshot) if request.HasField("snapshot") else None
            await self._driver.delete_snapshot(request.vm_snapshot_id, snapshot)
            return driver_pb2.DeleteVMSnapshotResponse()

        return await invoke(context, "DeleteVMSnapshot", run)

    async def ListVMSnapshots(  # noqa: N802
        self, request: driver_pb2.ListVMSnapshotsRequest, context: Ctx
    ) -> driver_pb2.ListVMSnapshotsResponse:
        async def run() -> driver_pb2.ListVMSnapshotsResponse:
            size = val.page_size("page_size", request.page_size)
            token = val.require_token("page_token", request.page_token)
            if request.vm_id:
                val.require_id("vm_id", request.vm_id)
            page = await self._driver.list_snapshots(Page(size=size, token=token), request.vm_id)
            _within_limits("ListVMSnapshots", limits.page_problem(page.snapshots, page.next_token))
            return driver_pb2.ListVMSnapshotsResponse(
                vm_snapshots=[cv.result_to_pb(r) for r in page.snapshots],
                next_page_token=page.next_token,
            )

        return await invoke(context, "ListVMSnapshots", run)

    # Server streams: each handler writes its messages with context.write (grpc.aio
    # allows it in a coroutine handler), so errors still end in invoke's one boundary.
    async def GetMetadataAllocated(  # type: ignore[override]  # noqa: N802 - a coroutine that writes
        self, request: driver_pb2.GetMetadataAllocatedRequest, context: Ctx
    ) -> None:
        async def run() -> None:
            ref, start, most = bw.allocated_request(request)
            await bw.stream_pages(
                context.write,
                driver_pb2.GetMetadataAllocatedResponse,
                lambda at, n: self._driver.get_allocated(ref, at, n),
                start,
                most,
            )

        await invoke(context, "GetMetadataAllocated", run)

    async def GetMetadataDelta(  # type: ignore[override]  # noqa: N802 - a coroutine that writes
        self, request: driver_pb2.GetMetadataDeltaRequest, context: Ctx
    ) -> None:
        async def run() -> None:
            base, target, start, most = bw.delta_request(request)
            await bw.stream_pages(
                context.write,
                driver_pb2.GetMetadataDeltaResponse,
                lambda at, n: self._driver.get_delta(base, target, at, n),
                start,
                most,
            )

        await invoke(context, "GetMetadataDelta", run)

    async def ReadSnapshot(  # type: ignore[override]  # noqa: N802 - a coroutine that writes
        self, request: driver_pb2.ReadSnapshotRequest, context: Ctx
    ) -> None:
        async def run() -> None:
            ref, start, size, chunk = bw.read_request(request)
            await bw.stream_read(
                context.write,
                lambda at, n: self._driver.read_snapshot(ref, at, n),
                start,
                size,
                chunk,
            )

        await invoke(context, "ReadSnapshot", run)

    async def CloneVolumes(  # noqa: N802
        self, request: driver_pb2.CloneVolumesRequest, context: Ctx
    ) -> driver_pb2.CloneVolumesResponse:
        async def run() -> driver_pb2.CloneVolumesResponse:
            val.require_id("clone_id", request.clone_id)
            val.require_id("vm_snapshot_id", request.vm_snapshot_id)
            val.require_id("new_vm_id", request.new_vm_id)
            if not request.HasField("snapshot"):
                raise InvalidArgument.for_field("snapshot", "is required (what the take returned)")
            snapshot = cv.result_from_pb(request.snapshot)
            targets = tuple(CloneTarget(t.disk, t.name) for t in request.targets)
            val.require_clone_targets("targets", targets, snapshot)
            val.require_map("parameters", request.parameters)
            clone = CloneRequest(
                clone_id=request.clone_id,
                vm_snapshot_id=request.vm_snapshot_id,
                snapshot=snapshot,
                new_vm_id=request.new_vm_id,
                targets=targets,
                parameters=dict(request.parameters),
            )
            volumes = list(await self._driver.clone_volumes(clone))
            _valid_clones("CloneVolumes", targets, volumes)
            return driver_pb2.CloneVolumesResponse(volumes=[cv.volume_to_pb(v) for v in volumes])

        return await invoke(context, "CloneVolumes", run)

    async def DeleteClonedVolumes(  # noqa: N802
        self, request: driver_pb2.DeleteClonedVolumesRequest, context: Ctx
    ) -> driver_pb2.DeleteClonedVolumesResponse:
        async def run() -> driver_pb2.DeleteClonedVolumesResponse:
            val.require_id("clone_id", request.clone_id)
            await self._driver.delete_cloned_volumes(request.clone_id)
            return driver_pb2.DeleteClonedVolumesResponse()

        return await invoke(context, "DeleteClonedVolumes", run)

    async def ListUnmanagedSnapshots(  # noqa: N802
        self, request: driver_pb2.ListUnmanagedSnapshotsRequest, context: Ctx
    ) -> driver_pb2.ListUnmanagedSnapshotsResponse:
        async def run() -> driver_pb2.ListUnmanagedSnapshotsResponse:
            volumes = [cv.volume_from_pb(v) for v in request.volumes]
            val.require_volumes("volumes", volumes)
            size = val.page_size("page_size", request.page_size)
            token = val.require_token("page_token", request.page_token)
            page = await self._driver.list_unmanaged_snapshots(
                volumes, Page(size=size, token=token)
            )
            _within_limits(
                "ListUnmanagedSnapshots", limits.unmanaged_problem(page.snapshots, page.next_token)
            )
            return driver_pb2.ListUnmanagedSnapshotsResponse(
                snapshots=[cv.unmanaged_to_pb(u) for u in page.snapshots],
                next_page_token=page.next_token,
            )

        return await invoke(context, "ListUnmanagedSnapshots", run)


_MIB = 1024 * 1024


def _valid_clones(method: str, targets: tuple[CloneTarget, ...], volumes: list[Volume]) -> None:
    """One valid volume per target, in target order: the host defines the new VM with them."""
    problem = None
    if [v.disk for v in volumes] != [t.disk for t in targets]:
        problem = (
            f"volumes for disks {[v.disk for v in volumes]}, not one per target "
            f"{[t.disk for t in targets]} in target order"
        )
    else:
        try:
            val.require_volumes("volumes", volumes)
        except InvalidArgument as exc:
            problem = exc.message
    if problem is None:
        return
    log.error(
        "the driver's answer is not a valid input; refused",
        extra={"fields": {"method": method, "problem": problem}},
    )
    raise Internal(
        f"the driver's {method} answer is not a valid set of volumes: {problem}; "
        "the SDK refused to send it",
        reason=Reason.ANSWER_INVALID,
    )


class FixtureServicer(driver_pb2_grpc.ConformanceFixtureServicer):
    """Serves the ConformanceFixture RPCs of a test-array driver."""

    def __init__(self, driver: StorageDriver) -> None:
        self._driver = driver

    async def CreateTestVolume(  # noqa: N802
        self, request: driver_pb2.CreateTestVolumeRequest, context: Ctx
    ) -> driver_pb2.CreateTestVolumeResponse:
        async def run() -> driver_pb2.CreateTestVolumeResponse:
            if not val.ID_PATTERN.match(request.name) or len(request.name) > 63:
                raise InvalidArgument.for_field("name", "must be 1..63 chars of [A-Za-z0-9._-]")
            val.require_range("size_bytes", request.size_bytes, _MIB, 1024 * _MIB)
            volume = await self._driver.create_test_volume(request.name, request.size_bytes)
            _valid_input("CreateTestVolume", volume)
            return driver_pb2.CreateTestVolumeResponse(volume=cv.volume_to_pb(volume))

        return await invoke(context, "CreateTestVolume", run)

    async def DeleteTestVolume(  # noqa: N802
        self, request: driver_pb2.DeleteTestVolumeRequest, context: Ctx
    ) -> driver_pb2.DeleteTestVolumeResponse:
        async def run() -> driver_pb2.DeleteTestVolumeResponse:
            val.require_locator("locator", request.locator)
            await self._driver.delete_test_volume(request.locator)
            return driver_pb2.DeleteTestVolumeResponse()

        return await invoke(context, "DeleteTestVolume", run)

    async def WriteVolume(  # noqa: N802
        self, request: driver_pb2.WriteVolumeRequest, context: Ctx
    ) -> driver_pb2.WriteVolumeResponse:
        async def run() -> driver_pb2.WriteVolumeResponse:
            val.require_locator("locator", request.locator)
            val.require_range("offset", request.offset, 0, 2**50)
            val.require_range("data", len(request.data), 1, val.MAX_IO_BYTES)
            await self._driver.write_volume(request.locator, request.offset, request.data)
            return driver_pb2.WriteVolumeResponse()

        return await invoke(context, "WriteVolume", run)

    async def ReadVolume(  # noqa: N802
        self, request: driver_pb2.ReadVolumeRequest, context: Ctx
    ) -> driver_pb2.ReadVolumeResponse:
        async def run() -> driver_pb2.ReadVolumeResponse:
            val.require_locator("locator", request.locator)
            val.require_range("offset", request.offset, 0, 2**50)
            val.require_range("length", request.length, 1, val.MAX_IO_BYTES)
            data = await self._driver.read_volume(request.locator, request.offset, request.length)
            return driver_pb2.ReadVolumeResponse(data=data)

        return await invoke(context, "ReadVolume", run)
