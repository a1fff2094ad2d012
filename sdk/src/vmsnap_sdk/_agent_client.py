"""Client adapter: a :class:`HypervisorAgent` that calls a remote agent over gRPC."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import grpc
from google.protobuf import duration_pb2

from vmsnap_sdk import _convert as cv
from vmsnap_sdk._client import call
from vmsnap_sdk._proto.hypervisor.v1 import hypervisor_pb2 as pb
from vmsnap_sdk._proto.hypervisor.v1 import hypervisor_pb2_grpc
from vmsnap_sdk._tls import ClientTLS, open_channel
from vmsnap_sdk._types import (
    VM,
    AgentInfo,
    CloneTarget,
    Consistency,
    NativeSnapshot,
    NativeSnapshotAtFreeze,
    Page,
    QuiesceInfo,
    QuiesceMethod,
    QuiesceResult,
    UnquiesceResult,
    VMPage,
    Volume,
)
from vmsnap_sdk.agent import HypervisorAgent


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


class AgentClient(HypervisorAgent):
    """A remote hypervisor agent. ``timeout`` is the default per-call deadline."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float | None = 30.0) -> None:
        self.channel = channel
        self.timeout = timeout
        self._stub = hypervisor_pb2_grpc.HypervisorAgentStub(channel)

    @classmethod
    def connect(
        cls, address: str, *, tls: ClientTLS | None = None, timeout: float | None = 30.0
    ) -> AgentClient:
        return cls(open_channel(address, tls), timeout=timeout)

    async def close(self) -> None:
        await self.channel.close(None)

    def _t(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    async def get_info(self, *, timeout: float | None = None) -> AgentInfo:
        response = await call(self._stub.GetAgentInfo, pb.GetAgentInfoRequest(), self._t(timeout))
        return cv.agent_info_from_pb(response)

    async def describe_vm(self, vm_id: str, *, timeout: float | None = None) -> VM:
        response = await call(
            self._stub.DescribeVM, pb.DescribeVMRequest(vm_id=vm_id), self._t(timeout)
        )
        return cv.vm_from_pb(response.vm)

    async def list_vms(self, page: Page, *, timeout: float | None = None) -> VMPage:
        response = await call(
            self._stub.ListVMs,
            pb.ListVMsRequest(page_size=page.size, page_token=page.token),
            self._t(timeout),
        )
        return VMPage(
            vms=tuple(cv.vm_from_pb(v) for v in response.vms), next_token=response.next_page_token
        )

    async def define_vm(self, vm: VM, *, timeout: float | None = None) -> VM:
        response = await call(
            self._stub.DefineVM, pb.DefineVMRequest(vm=cv.vm_to_pb(vm)), self._t(timeout)
        )
        return cv.vm_from_pb(response.vm)

    async def undefine_vm(self, vm_id: str, *, timeout: float | None = None) -> None:
        await call(self._stub.UndefineVM, pb.UndefineVMRequest(vm_id=vm_id), self._t(timeout))

    async def start_vm(self, vm_id: str, *, timeout: float | None = None) -> VM:
        response = await call(self._stub.StartVM, pb.StartVMRequest(vm_id=vm_id), self._t(timeout))
        return cv.vm_from_pb(response.vm)

    async def stop_vm(self, vm_id: str, force: bool, *, timeout: float | None = None) -> VM:
        response = await call(
            self._stub.StopVM, pb.StopVMRequest(vm_id=vm_id, force=force), self._t(timeout)
        )
        return cv.vm_from_pb(response.vm)

    async def quiesce(
        self,
        vm_id: str,
        method: QuiesceMethod,
        lease_seconds: float,
        best_effort: bool,
        operation_id: str,
        *,
        no_native_snapshot: bool = False,
        native_snapshot: NativeSnapshotAtFreeze | None = None,
        timeout: float | None = None,
    ) -> QuiesceResult:
        request = pb.QuiesceRequest(
            vm_id=vm_id,
            method=pb.QuiesceMethod.ValueType(method.value),
            lease=_duration(lease_seconds),
            best_effort=best_effort,
            operation_id=operation_id,
            no_native_snapshot=no_native_snapshot,
        )
        if native_snapshot is not None:
            request.native_snapshot.snapshot_id = native_snapshot.snapshot_id
            request.native_snapshot.disks.extend(native_snapshot.disks)
        response = await call(self._stub.Quiesce, request, self._t(timeout))
        return QuiesceResult(
            token=response.token,
            expire_time=response.expire_time.ToDatetime(tzinfo=UTC),
            consistency=cv._enum(Consistency, response.consistency),
            method=cv._enum(QuiesceMethod, response.method),
            warning=response.warning,
            memory_state=cv.memory_state_from_pb(response.memory_state)
            if response.HasField("memory_state")
            else None,
            native_snapshot=cv.native_from_pb(response.native_snapshot)
            if response.HasField("native_snapshot")
            else None,
            released=response.released,
        )

    async def renew_quiesce(
        self, token: str, lease_seconds: float, *, timeout: float | None = None
    ) -> datetime:
        response = await call(
            self._stub.RenewQuiesce,
            pb.RenewQuiesceRequest(token=token, lease=_duration(lease_seconds)),
            self._t(timeout),
        )
        return response.expire_time.ToDatetime(tzinfo=UTC)

    async def unquiesce(
        self, token: str, operation_id: str = "", *, timeout: float | None = None
    ) -> UnquiesceResult:
        response = await call(
            self._stub.Unquiesce,
            pb.UnquiesceRequest(token=token, operation_id=operation_id),
            self._t(timeout),
        )
        return UnquiesceResult(
            frozen_for_seconds=response.frozen_for.ToNanoseconds() / 1e9,
            thawed_now=response.thawed_now,
        )

    async def list_quiesces(
        self, vm_id: str = "", *, timeout: float | None = None
    ) -> Sequence[QuiesceInfo]:
        response = await call(
            self._stub.ListQuiesces, pb.ListQuiescesRequest(vm_id=vm_id), self._t(timeout)
        )
        return [cv.quiesce_info_from_pb(q) for q in response.quiesces]

    async def take_native_snapshot(
        self,
        vm_id: str,
        snapshot_id: str,
        disks: Sequence[str],
        include_memory: bool,
        *,
        timeout: float | None = None,
    ) -> NativeSnapshot:
        response = await call(
            self._stub.TakeNativeSnapshot,
            pb.TakeNativeSnapshotRequest(
                vm_id=vm_id,
                snapshot_id=snapshot_id,
                disks=list(disks),
                include_memory=include_memory,
            ),
            self._t(timeout),
        )
        return cv.native_from_pb(response.snapshot)

    async def revert_native_snapshot(
        self, vm_id: str, snapshot_id: str, *, timeout: float | None = None
    ) -> VM:
        response = await call(
            self._stub.RevertNativeSnapshot,
            pb.RevertNativeSnapshotRequest(vm_id=vm_id, snapshot_id=snapshot_id),
            self._t(timeout),
        )
        return cv.vm_from_pb(response.vm)

    async def delete_native_snapshot(
        self, vm_id: str, snapshot_id: str, *, timeout: float | None = None
    ) -> None:
        await call(
            self._stub.DeleteNativeSnapshot,
            pb.DeleteNativeSnapshotRequest(vm_id=vm_id, snapshot_id=snapshot_id),
            self._t(timeout),
        )

    async def copy_native_disks(
        self,
        copy_id: str,
        vm_id: str,
        snapshot_id: str,
        disks: Sequence[CloneTarget],
        *,
        timeout: float | None = None,
    ) -> list[Volume]:
        response = await call(
            self._stub.CopyNativeDisks,
            pb.CopyNativeDisksRequest(
                copy_id=copy_id,
                vm_id=vm_id,
                snapshot_id=snapshot_id,
                disks=[pb.DiskCopy(disk=d.disk, name=d.name) for d in disks],
            ),
            self._t(timeout),
        )
        return [cv.volume_from_pb(v) for v in response.volumes]

    async def delete_copied_disks(self, copy_id: str, *, timeout: float | None = None) -> None:
        await call(
            self._stub.DeleteCopiedDisks,
            pb.DeleteCopiedDisksRequest(copy_id=copy_id),
            self._t(timeout),
        )

    async def list_native_snapshots(
        self, vm_id: str, *, timeout: float | None = None
    ) -> Sequence[NativeSnapshot]:
        response = await call(
            self._stub.ListNativeSnapshots,
            pb.ListNativeSnapshotsRequest(vm_id=vm_id),
            self._t(timeout),
        )
        return [cv.native_from_pb(s) for s in response.snapshots]
