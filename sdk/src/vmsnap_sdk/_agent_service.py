"""Server adapter: the HypervisorAgent RPCs → a :class:`HypervisorAgent`."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, TypeAlias

import grpc
from google.protobuf import duration_pb2

from vmsnap_sdk import _convert as cv
from vmsnap_sdk import _validate as val
from vmsnap_sdk._errors import Internal, InvalidArgument, Unimplemented
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.hypervisor.v1 import hypervisor_pb2 as pb
from vmsnap_sdk._proto.hypervisor.v1 import hypervisor_pb2_grpc
from vmsnap_sdk._server import invoke
from vmsnap_sdk._types import CloneTarget, NativeSnapshotAtFreeze, Page, QuiesceMethod
from vmsnap_sdk.agent import HypervisorAgent

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]

MIN_LEASE = 0.1
MAX_LEASE = 600.0


def _lease(field: str, value: duration_pb2.Duration) -> float:
    seconds = value.ToNanoseconds() / 1e9
    if not MIN_LEASE <= seconds <= MAX_LEASE:
        raise InvalidArgument.for_field(field, f"must be {MIN_LEASE} s .. {MAX_LEASE:.0f} s")
    return seconds


def _seconds_to_pb(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def _native_at_freeze(request: pb.QuiesceRequest) -> NativeSnapshotAtFreeze | None:
    """QuiesceRequest.native_snapshot, checked (None when unset)."""
    if not request.HasField("native_snapshot"):
        return None
    if request.no_native_snapshot:
        raise InvalidArgument.for_field(
            "native_snapshot", "cannot be asked for with no_native_snapshot; set one of the two"
        )
    if request.method == pb.QUIESCE_METHOD_PAUSE_AND_SAVE_MEMORY:
        raise InvalidArgument.for_field(
            "native_snapshot",
            "is disk-only: under PAUSE_AND_SAVE_MEMORY take the memory snapshot with "
            "TakeNativeSnapshot(include_memory=true)",
        )
    asked = request.native_snapshot
    val.require_id("native_snapshot.snapshot_id", asked.snapshot_id)
    _require_disk_names("native_snapshot.disks", asked.disks)
    return NativeSnapshotAtFreeze(asked.snapshot_id, tuple(asked.disks))


def _require_disk_names(field: str, disks: Sequence[str]) -> None:
    """Each a disk name (vmsnap.common.v1.Volume.disk's rule), as TakeNativeSnapshot's."""
    for i, disk in enumerate(disks):
        if not val.DISK_PATTERN.match(disk):
            raise InvalidArgument.for_field(f"{field}[{i}]", "must be a disk name such as vda")


class AgentServicer(hypervisor_pb2_grpc.HypervisorAgentServicer):
    """Serves a :class:`HypervisorAgent` over vmsnap.hypervisor.v1.HypervisorAgent."""

    def __init__(self, agent: HypervisorAgent) -> None:
        self._agent = agent
        # An agent written before thaw-by-operation overrides unquiesce(token)
        # alone: it gets UNIMPLEMENTED for that form, not a TypeError.
        self._thaws_by_operation = "operation_id" in inspect.signature(agent.unquiesce).parameters
        # Likewise an agent written before the no_native_snapshot hint: it is not
        # given the hint (ignoring it is correct: it only allows less work).
        quiesce = inspect.signature(agent.quiesce).parameters
        self._takes_hint = "no_native_snapshot" in quiesce
        # And one written before a native snapshot could be asked for with the
        # quiesce: not given it, it answers none and the caller takes it apart.
        self._takes_native = "native_snapshot" in quiesce

    async def GetAgentInfo(  # noqa: N802
        self, request: pb.GetAgentInfoRequest, context: Ctx
    ) -> pb.GetAgentInfoResponse:
        async def run() -> pb.GetAgentInfoResponse:
            return cv.agent_info_to_pb(await self._agent.get_info())

        return await invoke(context, "GetAgentInfo", run)

    async def DescribeVM(  # noqa: N802
        self, request: pb.DescribeVMRequest, context: Ctx
    ) -> pb.DescribeVMResponse:
        async def run() -> pb.DescribeVMResponse:
            val.require_id("vm_id", request.vm_id)
            return pb.DescribeVMResponse(
                vm=cv.vm_to_pb(await self._agent.describe_vm(request.vm_id))
            )

        return await invoke(context, "DescribeVM", run)

    async def ListVMs(  # noqa: N802
        self, request: pb.ListVMsRequest, context: Ctx
    ) -> pb.ListVMsResponse:
        async def run() -> pb.ListVMsResponse:
            page = Page(
                size=val.page_size("page_size", request.page_size),
                token=val.require_token("page_token", request.page_token),
            )
            result = await self._agent.list_vms(page)
            return pb.ListVMsResponse(
                vms=[cv.vm_to_pb(vm) for vm in result.vms], next_page_token=result.next_token
            )

        return await invoke(context, "ListVMs", run)

    async def DefineVM(  # noqa: N802
        self, request: pb.DefineVMRequest, context: Ctx
    ) -> pb.DefineVMResponse:
        async def run() -> pb.DefineVMResponse:
            vm = cv.vm_from_pb(request.vm)
            val.require_id("vm.id", vm.id)
            val.require_text("vm.name", vm.name, required=False)
            val.require_volumes("vm.volumes", vm.volumes)
            val.require_range("vm.memory_mib", vm.memory_mib, 0, 1 << 22)
            return pb.DefineVMResponse(vm=cv.vm_to_pb(await self._agent.define_vm(vm)))

        return await invoke(context, "DefineVM", run)

    async def UndefineVM(  # noqa: N802
        self, request: pb.UndefineVMRequest, context: Ctx
    ) -> pb.UndefineVMResponse:
        async def run() -> pb.UndefineVMResponse:
            val.require_id("vm_id", request.vm_id)
            await self._agent.undefine_vm(request.vm_id)
            return pb.UndefineVMResponse()

        return await invoke(context, "UndefineVM", run)

    async def StartVM(  # noqa: N802
        self, request: pb.StartVMRequest, context: Ctx
    ) -> pb.StartVMResponse:
        async def run() -> pb.StartVMResponse:
            val.require_id("vm_id", request.vm_id)
            return pb.StartVMResponse(vm=cv.vm_to_pb(await self._agent.start_vm(request.vm_id)))

        return await invoke(context, "StartVM", run)

    async def StopVM(  # noqa: N802
        self, request: pb.StopVMRequest, context: Ctx
    ) -> pb.StopVMResponse:
        async def run() -> pb.StopVMResponse:
            val.require_id("vm_id", request.vm_id)
            vm = await self._agent.stop_vm(request.vm_id, request.force)
            return pb.StopVMResponse(vm=cv.vm_to_pb(vm))

        return await invoke(context, "StopVM", run)

    async def Quiesce(  # noqa: N802
        self, request: pb.QuiesceRequest, context: Ctx
    ) -> pb.QuiesceResponse:
        async def run() -> pb.QuiesceResponse:
            val.require_id("vm_id", request.vm_id)
            if request.method == pb.QUIESCE_METHOD_UNSPECIFIED:
                raise InvalidArgument.for_field(
                    "method",
                    "is required (OVERLAY, GUEST_FREEZE, GUEST_FREEZE_AND_OVERLAY, "
                    "PAUSE_AND_SAVE_MEMORY or GUEST_FREEZE_AND_CUT)",
                )
            lease = _lease("lease", request.lease)
            if request.operation_id:
                val.require_id("operation_id", request.operation_id)
            hint: dict[str, Any] = (
                {"no_native_snapshot": True}
                if request.no_native_snapshot and self._takes_hint
                else {}
            )
            native = _native_at_freeze(request)
            if native is not None and self._takes_native:
                hint["native_snapshot"] = native
            result = await self._agent.quiesce(
                request.vm_id,
                cv._enum(QuiesceMethod, request.method),
                lease,
                request.best_effort,
                request.operation_id,
                **hint,
            )
            response = pb.QuiesceResponse(
                token=result.token,
                consistency=common_pb2.Consistency.ValueType(result.consistency.value),
                method=pb.QuiesceMethod.ValueType(result.method.value),
                warning=result.warning,
                # Released only with the snapshot asked for that let it end, at
                # the cut (the contract).
                released=result.released
                and native is not None
                and result.native_snapshot is not None
                and result.method is QuiesceMethod.GUEST_FREEZE_AND_CUT,
            )
            if result.memory_state is not None:
                response.memory_state.CopyFrom(cv.memory_state_to_pb(result.memory_state))
            if result.native_snapshot is not None and native is not None:
                response.native_snapshot.CopyFrom(cv.native_to_pb(result.native_snapshot))
            response.expire_time.FromDatetime(result.expire_time)
            return response

        return await invoke(context, "Quiesce", run)

    async def RenewQuiesce(  # noqa: N802
        self, request: pb.RenewQuiesceRequest, context: Ctx
    ) -> pb.RenewQuiesceResponse:
        async def run() -> pb.RenewQuiesceResponse:
            val.require_text("token", request.token, 256)
            expiry = await self._agent.renew_quiesce(request.token, _lease("lease", request.lease))
            response = pb.RenewQuiesceResponse()
            response.expire_time.FromDatetime(expiry)
            return response

        return await invoke(context, "RenewQuiesce", run)

    async def Unquiesce(  # noqa: N802
        self, request: pb.UnquiesceRequest, context: Ctx
    ) -> pb.UnquiesceResponse:
        async def run() -> pb.UnquiesceResponse:
            if request.token and request.operation_id:
                raise InvalidArgument.for_field(
                    "operation_id",
                    "must be empty when token is set: thaw by token or by operation, not both",
                )
            if request.token:
                val.require_text("token", request.token, 256)
                result = await self._agent.unquiesce(request.token)
            elif request.operation_id:
                val.require_id("operation_id", request.operation_id)
                if not self._thaws_by_operation:
                    raise Unimplemented(
                        "this agent cannot thaw by operation id; pass the token from Quiesce"
                    )
                result = await self._agent.unquiesce("", operation_id=request.operation_id)
            else:
                raise InvalidArgument.for_field(
                    "token", "is required (or operation_id, to thaw every freeze of an operation)"
                )
            return pb.UnquiesceResponse(
                frozen_for=_seconds_to_pb(result.frozen_for_seconds), thawed_now=result.thawed_now
            )

        return await invoke(context, "Unquiesce", run)

    async def ListQuiesces(  # noqa: N802
        self, request: pb.ListQuiescesRequest, context: Ctx
    ) -> pb.ListQuiescesResponse:
        async def run() -> pb.ListQuiescesResponse:
            if request.vm_id:
                val.require_id("vm_id", request.vm_id)
            quiesces = await self._agent.list_quiesces(request.vm_id)
            return pb.ListQuiescesResponse(quiesces=[cv.quiesce_info_to_pb(q) for q in quiesces])

        return await invoke(context, "ListQuiesces", run)

    async def TakeNativeSnapshot(  # noqa: N802
        self, request: pb.TakeNativeSnapshotRequest, context: Ctx
    ) -> pb.TakeNativeSnapshotResponse:
        async def run() -> pb.TakeNativeSnapshotResponse:
            val.require_id("vm_id", request.vm_id)
            val.require_id("snapshot_id", request.snapshot_id)
            _require_disk_names("disks", request.disks)
            snapshot = await self._agent.take_native_snapshot(
                request.vm_id, request.snapshot_id, tuple(request.disks), request.include_memory
            )
            return pb.TakeNativeSnapshotResponse(snapshot=cv.native_to_pb(snapshot))

        return await invoke(context, "TakeNativeSnapshot", run)

    async def RevertNativeSnapshot(  # noqa: N802
        self, request: pb.RevertNativeSnapshotRequest, context: Ctx
    ) -> pb.RevertNativeSnapshotResponse:
        async def run() -> pb.RevertNativeSnapshotResponse:
            val.require_id("vm_id", request.vm_id)
            val.require_id("snapshot_id", request.snapshot_id)
            vm = await self._agent.revert_native_snapshot(request.vm_id, request.snapshot_id)
            return pb.RevertNativeSnapshotResponse(vm=cv.vm_to_pb(vm))

        return await invoke(context, "RevertNativeSnapshot", run)

    async def DeleteNativeSnapshot(  # noqa: N802
        self, request: pb.DeleteNativeSnapshotRequest, context: Ctx
    ) -> pb.DeleteNativeSnapshotResponse:
        async def run() -> pb.DeleteNativeSnapshotResponse:
            val.require_id("vm_id", request.vm_id)
            val.require_id("snapshot_id", request.snapshot_id)
            await self._agent.delete_native_snapshot(request.vm_id, request.snapshot_id)
            return pb.DeleteNativeSnapshotResponse()

        return await invoke(context, "DeleteNativeSnapshot", run)

    async def ListNativeSnapshots(  # noqa: N802
        self, request: pb.ListNativeSnapshotsRequest, context: Ctx
    ) -> pb.ListNativeSnapshotsResponse:
        async def run() -> pb.ListNativeSnapshotsResponse:
            if request.vm_id:
                val.require_id("vm_id", request.vm_id)
            snapshots = await self._agent.list_native_snapshots(request.vm_id)
            return pb.ListNativeSnapshotsResponse(snapshots=[cv.native_to_pb(s) for s in snapshots])

        return await invoke(context, "ListNativeSnapshots", run)

    async def CopyNativeDisks(  # noqa: N802
        self, request: pb.CopyNativeDisksRequest, context: Ctx
    ) -> pb.CopyNativeDisksResponse:
        async def run() -> pb.CopyNativeDisksResponse:
            val.require_id("copy_id", request.copy_id)
            val.require_id("vm_id", request.vm_id)
            val.require_id("snapshot_id", request.snapshot_id)
            disks = tuple(CloneTarget(d.disk, d.name) for d in request.disks)
            val.require_disk_copies("disks", disks)
            volumes = list(
                await self._agent.copy_native_disks(
                    request.copy_id, request.vm_id, request.snapshot_id, disks
                )
            )
            if [v.disk for v in volumes] != [d.disk for d in disks]:
                raise Internal("the agent's CopyNativeDisks answer is not one disk per request")
            val.require_volumes("volumes", volumes)
            return pb.CopyNativeDisksResponse(volumes=[cv.volume_to_pb(v) for v in volumes])

        return await invoke(context, "CopyNativeDisks", run)

    async def DeleteCopiedDisks(  # noqa: N802
        self, request: pb.DeleteCopiedDisksRequest, context: Ctx
    ) -> pb.DeleteCopiedDisksResponse:
        async def run() -> pb.DeleteCopiedDisksResponse:
            val.require_id("copy_id", request.copy_id)
            await self._agent.delete_copied_disks(request.copy_id)
            return pb.DeleteCopiedDisksResponse()

        return await invoke(context, "DeleteCopiedDisks", run)
