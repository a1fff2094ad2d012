"""vmsnap.host.v1.VMSnapshotService: validate, call the manager or registry, convert.

Every handler runs through ``vmsnap_sdk._server.invoke``, the one place a
raised VMSnapError becomes a status (and anything else INTERNAL without its
text). Validation errors name the field, as the SDK's do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeAlias, TypeVar

import grpc

from vmsnap_host.adopt import DiscoveredSet
from vmsnap_host.api import convert, errors
from vmsnap_host.api import policies as pconv
from vmsnap_host.auth import access
from vmsnap_host.auth.settings import AuthConfigError, project_name
from vmsnap_host.blocks import DiskBlocks
from vmsnap_host.executor.freeze_api import MAX_LEASE, MIN_LEASE
from vmsnap_host.manager import (
    Admitted,
    Manager,
    operation_not_found,
    request_id_reused,
    snapshot_not_found,
)
from vmsnap_host.model import OperationRecord, QuiescePolicy, Snapshot
from vmsnap_host.peers import PeerPolicy, PolicyError
from vmsnap_host.policies import model as pmodel
from vmsnap_host.policies.catalog import PolicyCatalog
from vmsnap_host.reconcile import Finding, Reconciler
from vmsnap_host.registry import Health, Registry, vm_not_found
from vmsnap_host.store import Store
from vmsnap_host.store.writer import Step
from vmsnap_sdk import VM, ClientTLS, Page, current_call
from vmsnap_sdk import _blocks_wire as bw
from vmsnap_sdk import _convert as cv
from vmsnap_sdk import _validate as val
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_sdk._proto.host.v1 import host_pb2_grpc
from vmsnap_sdk._server import invoke, invoke_stream
from vmsnap_sdk.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    Reason,
    Unimplemented,
    VMSnapError,
)

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]

MAX_DESCRIPTION = 1024
DEFAULT_WAIT = 30.0
MAX_WAIT = 600.0
#: Longest time UndefineVM waits for the deletes of its VM's snapshots in one call.
UNDEFINE_WAIT = 30.0
#: Operations a WatchOperations with `since` sends first, at most (the newest).
MAX_WATCH_INITIAL = 1000
#: Findings of one Reconcile in its response (all are kept: ListFindings).
MAX_RECONCILE_FINDINGS = 1000


#: The largest sequence number a page token may carry: the catalog's integers
#: are 64-bit signed (a larger one was INTERNAL, an overflow in SQLite).
MAX_SEQ = 2**63 - 1


def _page_token(field: str, token: str) -> int | None:
    if not token:
        return None
    digits = token.removeprefix("p")
    try:
        value = int(digits, 16) if len(digits) <= 16 and digits.isalnum() else -1
    except ValueError:
        value = -1
    if not token.startswith("p") or not 0 <= value <= MAX_SEQ:
        raise InvalidArgument.for_field(
            field, "is not a token from a previous page; omit it to start over"
        )
    return value


def _wait_seconds(field: str, present: bool, value: Any) -> float:
    """A wait asked for (a Duration field), bounded, answered before the caller's
    deadline with the operation as it stands."""
    timeout = DEFAULT_WAIT
    if present:
        timeout = value.ToNanoseconds() / 1e9
        if not 0 <= timeout <= MAX_WAIT:
            raise InvalidArgument.for_field(field, f"must be 0 .. {MAX_WAIT:.0f} s")
    remaining = current_call().time_remaining()
    if remaining is not None:
        timeout = min(timeout, max(0.0, remaining - 0.2))
    return float(timeout)


def _token(seq: int) -> str:
    return f"p{seq:x}"


def _quiesce(value: int) -> QuiescePolicy:
    if value == pb.QUIESCE_POLICY_UNSPECIFIED:
        return QuiescePolicy.BEST_EFFORT
    try:
        return QuiescePolicy(value)
    except ValueError:
        raise InvalidArgument.for_field("quiesce", "must be OFF, BEST_EFFORT or REQUIRED") from None


def _tls(policy: PeerPolicy, field: str, message: pb.TlsConfig, present: bool) -> ClientTLS | None:
    if not present:
        return None
    data = {
        k: v
        for k, v in (
            ("ca_file", message.ca_file),
            ("cert_file", message.cert_file),
            ("key_file", message.key_file),
            ("server_name", message.server_name),
            ("pin_sha256", message.pin_sha256),
        )
        if v
    }
    try:
        return policy.client_tls(field, data)
    except PolicyError as exc:
        raise InvalidArgument(str(exc), field_violations=[(field, str(exc))]) from None


def _address(policy: PeerPolicy, field: str, value: str) -> str:
    try:
        return policy.address(field, value)
    except PolicyError as exc:
        raise InvalidArgument(str(exc), field_violations=[(field, str(exc))]) from None


def _project(field: str, value: str) -> str:
    try:
        return project_name(field, value) if value else ""
    except AuthConfigError as exc:
        raise InvalidArgument.for_field(field, str(exc).split(": ", 1)[-1]) from None


_R = TypeVar("_R")


async def _call(context: Ctx, method: str, handler: Callable[[], Awaitable[_R]]) -> _R:
    """``invoke`` (the SDK's one error boundary) with the host's reasons only."""

    async def guarded() -> _R:
        try:
            return await handler()
        except VMSnapError as exc:
            access.failed(exc)
            await access.record()  # before the status reaches the caller
            raise errors.public(exc) from exc
        except Exception:
            call = access.current()
            if call is not None:
                call.result, call.detail = "INTERNAL", "a bug in the host (see its log)"
            await access.record()
            raise

    return await invoke(context, method, guarded)


def _audited_with_admission() -> Admitted:
    """The call's audit record, committed with the operation's admission: the call
    is then audited as admitted (OK), whatever a ``wait`` in it later answers."""
    steps, committed = access.audit_with()
    return Admitted(steps, committed)


def _request_seen(op: OperationRecord) -> None:
    """Refuse, without saying what for, a request_id another project used."""
    if not access.sees(op.project):
        rid = op.request_id
        raise access.hidden(request_id_reused(rid), op.project, f"request_id {rid}")


class HostServicer(host_pb2_grpc.VMSnapshotServiceServicer):
    def __init__(
        self,
        manager: Manager,
        registry: Registry,
        store: Store,
        reconciler: Reconciler | None = None,
        peers: PeerPolicy | None = None,
        *,
        policies: PolicyCatalog | None = None,
    ) -> None:
        self.manager = manager
        self.registry = registry
        self.store = store
        self.reconciler = reconciler
        self.peers = peers or PeerPolicy()
        self.blocks = DiskBlocks(manager, registry)
        self.policies = policies or PolicyCatalog(store)

    def _op_pb(self, op: OperationRecord) -> pb.Operation:
        return convert.operation_to_pb(op, self.store.get_snapshot(op.vm_snapshot_id))

    async def _op(self, op: OperationRecord, snapshot: Snapshot | None = None) -> pb.Operation:
        """The operation as answered, with its snapshot: ``snapshot`` when the write
        that finished the operation read it (Manager.wait_finished), else read
        (Store.read)."""
        if snapshot is not None and snapshot.id == op.vm_snapshot_id:
            return convert.operation_to_pb(op, snapshot)
        return await self.store.read(self._op_pb, op)

    async def _ops(self, ops: Sequence[OperationRecord]) -> list[pb.Operation]:
        """Several, with their snapshots read in one call of Store.read."""
        return await self.store.read(lambda: [self._op_pb(op) for op in ops])

    # --- what the caller may see (another project's object is NOT_FOUND) ----------

    async def _vm_project(self, vm_id: str) -> str:
        """The VM's project, after checking the caller sees it (NOT_FOUND if not)."""
        project = await self.store.read(self.store.vm_project, vm_id) or ""
        access.note(target=vm_id, project=project)
        if not access.sees(project):
            raise access.hidden(vm_not_found(vm_id), project, f"VM {vm_id}")
        return project

    async def _snapshot(self, snapshot_id: str) -> Snapshot:
        snap = await self.manager.get_snapshot(snapshot_id)
        access.note(target=snapshot_id, project=snap.project)
        if not access.sees(snap.project):
            raise access.hidden(
                snapshot_not_found(snapshot_id), snap.project, f"snapshot {snapshot_id}"
            )
        return snap

    async def _operation(self, operation_id: str) -> OperationRecord:
        op = await self.manager.get_operation(operation_id)
        access.note(target=operation_id, project=op.project)
        if not access.sees(op.project):
            raise access.hidden(
                operation_not_found(operation_id), op.project, f"operation {operation_id}"
            )
        return op

    async def _request_id(self, request_id: str) -> None:
        """A request_id another project used is refused without saying what for."""
        access.note(request_id=request_id)
        op = await self.store.read(self.store.operation_by_request, request_id)
        if op is not None:
            _request_seen(op)

    # --- snapshots ----------------------------------------------------------------

    async def CreateVMSnapshot(  # noqa: N802 - gRPC method names
        self, request: pb.CreateVMSnapshotRequest, context: Ctx
    ) -> pb.CreateVMSnapshotResponse:
        async def run() -> pb.CreateVMSnapshotResponse:
            val.require_id("request_id", request.request_id)
            val.require_id("vm_id", request.vm_id)
            val.require_text("name", request.name)
            val.require_text("description", request.description, MAX_DESCRIPTION, required=False)
            val.require_map("parameters", request.parameters)
            wait = _wait_seconds("wait", True, request.wait) if request.HasField("wait") else None
            project = await self._vm_project(request.vm_id)
            # The request id is read once, by the manager under the VM's admission
            # lock; another project's is refused there, as _request_id does.
            access.note(request_id=request.request_id)
            op = await self.manager.create_snapshot(
                request.request_id,
                request.vm_id,
                request.name,
                description=request.description,
                include_memory=request.include_memory,
                quiesce=_quiesce(request.quiesce),
                parameters=dict(request.parameters),
                project=project,
                also=_audited_with_admission(),
                seen=_request_seen,
            )
            if wait and not op.done:
                finished = await self.manager.wait_finished(op.id, wait)
                return pb.CreateVMSnapshotResponse(
                    operation=await self._op(finished.operation, finished.snapshot)
                )
            return pb.CreateVMSnapshotResponse(operation=await self._op(op))

        return await _call(context, "CreateVMSnapshot", run)

    async def GetVMSnapshot(  # noqa: N802
        self, request: pb.GetVMSnapshotRequest, context: Ctx
    ) -> pb.GetVMSnapshotResponse:
        async def run() -> pb.GetVMSnapshotResponse:
            val.require_id("id", request.id)
            snap = await self._snapshot(request.id)
            return pb.GetVMSnapshotResponse(vm_snapshot=convert.snapshot_to_pb(snap))

        return await _call(context, "GetVMSnapshot", run)

    async def ListVMSnapshots(  # noqa: N802
        self, request: pb.ListVMSnapshotsRequest, context: Ctx
    ) -> pb.ListVMSnapshotsResponse:
        async def run() -> pb.ListVMSnapshotsResponse:
            if request.vm_id:
                val.require_id("vm_id", request.vm_id)
            size = val.page_size("page_size", request.page_size)
            after = _page_token("page_token", request.page_token) or 0
            rows = await self.store.read(
                self.store.list_snapshots,
                request.vm_id,
                after,
                size + 1,
                request.show_removed,
                projects=access.visible_projects(),
            )
            page = rows[:size]
            return pb.ListVMSnapshotsResponse(
                vm_snapshots=[convert.snapshot_to_pb(s) for _, s in page],
                next_page_token=_token(page[-1][0]) if len(rows) > size else "",
            )

        return await _call(context, "ListVMSnapshots", run)

    async def RevertVMSnapshot(  # noqa: N802
        self, request: pb.RevertVMSnapshotRequest, context: Ctx
    ) -> pb.RevertVMSnapshotResponse:
        async def run() -> pb.RevertVMSnapshotResponse:
            val.require_id("request_id", request.request_id)
            val.require_id("id", request.id)
            await self._snapshot(request.id)
            await self._request_id(request.request_id)
            op = await self.manager.revert_snapshot(
                request.request_id, request.id, request.stop_vm, also=_audited_with_admission()
            )
            return pb.RevertVMSnapshotResponse(operation=await self._op(op))

        return await _call(context, "RevertVMSnapshot", run)

    async def DeleteVMSnapshot(  # noqa: N802
        self, request: pb.DeleteVMSnapshotRequest, context: Ctx
    ) -> pb.DeleteVMSnapshotResponse:
        async def run() -> pb.DeleteVMSnapshotResponse:
            val.require_id("request_id", request.request_id)
            val.require_id("id", request.id)
            await self._snapshot(request.id)
            await self._request_id(request.request_id)
            op = await self.manager.delete_snapshot(
                request.request_id, request.id, also=_audited_with_admission()
            )
            return pb.DeleteVMSnapshotResponse(operation=await self._op(op))

        return await _call(context, "DeleteVMSnapshot", run)

    # --- clone to a new VM ---------------------------------------------------------

    async def CreateVMFromSnapshot(  # noqa: N802
        self, request: pb.CreateVMFromSnapshotRequest, context: Ctx
    ) -> pb.CreateVMFromSnapshotResponse:
        async def run() -> pb.CreateVMFromSnapshotResponse:
            val.require_id("request_id", request.request_id)
            val.require_id("snapshot_id", request.snapshot_id)
            val.require_id("new_vm_id", request.new_vm_id)
            if request.agent:
                val.require_text("agent", request.agent, 128)
            val.require_text("new_vm_name", request.new_vm_name, required=False)
            val.require_map("parameters", request.parameters)
            wait = _wait_seconds("wait", True, request.wait) if request.HasField("wait") else None
            await self._snapshot(request.snapshot_id)  # another project's: NOT_FOUND
            await self._request_id(request.request_id)
            op = await self.manager.create_vm_from_snapshot(
                request.request_id,
                request.snapshot_id,
                request.new_vm_id,
                agent=request.agent,
                name=request.new_vm_name,
                parameters=dict(request.parameters),
            )
            if wait and not op.done:
                op = await self.manager.wait_operation(op.id, wait)
            return pb.CreateVMFromSnapshotResponse(operation=await self._op(op))

        return await _call(context, "CreateVMFromSnapshot", run)

    # --- operations ---------------------------------------------------------------

    async def GetOperation(  # noqa: N802
        self, request: pb.GetOperationRequest, context: Ctx
    ) -> pb.GetOperationResponse:
        async def run() -> pb.GetOperationResponse:
            val.require_id("id", request.id)
            return pb.GetOperationResponse(
                operation=await self._op(await self._operation(request.id))
            )

        return await _call(context, "GetOperation", run)

    async def WaitOperation(  # noqa: N802
        self, request: pb.WaitOperationRequest, context: Ctx
    ) -> pb.WaitOperationResponse:
        async def run() -> pb.WaitOperationResponse:
            val.require_id("id", request.id)
            await self._operation(request.id)
            timeout = _wait_seconds("timeout", request.HasField("timeout"), request.timeout)
            finished = await self.manager.wait_finished(request.id, timeout)
            return pb.WaitOperationResponse(
                operation=await self._op(finished.operation, finished.snapshot)
            )

        return await _call(context, "WaitOperation", run)

    async def ListOperations(  # noqa: N802
        self, request: pb.ListOperationsRequest, context: Ctx
    ) -> pb.ListOperationsResponse:
        async def run() -> pb.ListOperationsResponse:
            if request.vm_id:
                val.require_id("vm_id", request.vm_id)
            size = val.page_size("page_size", request.page_size)
            before = _page_token("page_token", request.page_token)
            rows = await self.store.read(
                self.store.list_operations,
                request.vm_id,
                before,
                size + 1,
                request.only_running,
                projects=access.visible_projects(),
            )
            page = rows[:size]
            return pb.ListOperationsResponse(
                operations=await self._ops([op for _, op in page]),
                next_page_token=_token(page[-1][0]) if len(rows) > size else "",
            )

        return await _call(context, "ListOperations", run)

    # --- live events and cancel (docs/design.md, "Live events, cancel and traces") ---------

    async def WatchOperations(  # noqa: N802
        self, request: pb.WatchOperationsRequest, context: Ctx
    ) -> AsyncIterator[pb.WatchOperationsResponse]:
        async def run() -> AsyncIterator[pb.WatchOperationsResponse]:
            if request.vm_id:
                val.require_id("vm_id", request.vm_id)
                await self._vm_project(request.vm_id)  # another project's VM: NOT_FOUND
            if request.operation_id:
                val.require_id("operation_id", request.operation_id)
                await self._operation(request.operation_id)
            # Subscribed before the catalog is read: no change falls in between (one
            # may come twice, as it stood and as it changed).
            with self.manager.events.watch(request.vm_id, request.operation_id) as watcher:
                initial: list[OperationRecord] = []
                if request.operation_id:
                    initial = [await self.manager.get_operation(request.operation_id)]
                elif request.HasField("since"):
                    since = _since("since", request.since)
                    initial = await self.store.read(
                        self.store.operations_changed_since, request.vm_id, since, MAX_WATCH_INITIAL
                    )
                for op in initial:
                    if not access.sees(op.project):
                        continue
                    yield pb.WatchOperationsResponse(operation=await self._op(op), initial=True)
                    if request.operation_id and op.done:
                        return
                while True:
                    change = await watcher.next()
                    if not access.sees(change.operation.project):
                        continue  # another project's: the caller never learns of it
                    yield pb.WatchOperationsResponse(
                        operation=convert.operation_to_pb(change.operation, change.snapshot)
                    )
                    if request.operation_id and change.operation.done:
                        return

        async def guarded() -> AsyncIterator[pb.WatchOperationsResponse]:
            try:
                async for item in run():
                    yield item
            except VMSnapError as exc:
                raise errors.public(exc) from exc

        async for item in invoke_stream(context, "WatchOperations", guarded):
            yield item

    async def CancelOperation(  # noqa: N802
        self, request: pb.CancelOperationRequest, context: Ctx
    ) -> pb.CancelOperationResponse:
        async def run() -> pb.CancelOperationResponse:
            val.require_id("operation_id", request.operation_id)
            await self._operation(request.operation_id)  # another project's: NOT_FOUND
            op = await self.manager.cancel_operation(request.operation_id)
            return pb.CancelOperationResponse(operation=await self._op(op))

        return await _call(context, "CancelOperation", run)

    # --- drivers and agents -------------------------------------------------------

    async def _registered(self, kind: str, name: str) -> set[str]:
        """Addresses of the stored registrations of a kind under that name."""
        rows = await self.store.read(self.store.registrations, kind)
        return {a for a, n, _, _ in rows if n == name}

    async def _moved(self, kind: str, name: str, address: str) -> list[Step]:
        """Removal of the stored registrations a peer that moved here left behind."""
        return [
            self.store.w_remove_registration(kind, a)
            for a in sorted(await self._registered(kind, name) - {address})
        ]

    async def RegisterDriver(  # noqa: N802
        self, request: pb.RegisterDriverRequest, context: Ctx
    ) -> pb.RegisterDriverResponse:
        async def run() -> pb.RegisterDriverResponse:
            address = _address(self.peers, "address", request.address)
            access.note(target=address)
            tls = _tls(self.peers, "tls", request.tls, request.HasField("tls"))
            # A registration that fails its checks, or that would take the name of a
            # serving driver, changes nothing (the registry raises).
            entry = await self.registry.add_driver(
                address, order=request.order, tls=tls, require_serving=True
            )
            await self.store.write(
                self.store.w_save_registration(
                    "driver", address, entry.name, request.order, _tls_dict(tls)
                ),
                *await self._moved("driver", entry.name, address),
            )
            return pb.RegisterDriverResponse(driver=convert.driver_to_pb(entry))

        return await _call(context, "RegisterDriver", run)

    async def ListDrivers(  # noqa: N802
        self, request: pb.ListDriversRequest, context: Ctx
    ) -> pb.ListDriversResponse:
        async def run() -> pb.ListDriversResponse:
            return pb.ListDriversResponse(
                drivers=[convert.driver_to_pb(e) for e in self.registry.drivers()]
            )

        return await _call(context, "ListDrivers", run)

    async def RemoveDriver(  # noqa: N802
        self, request: pb.RemoveDriverRequest, context: Ctx
    ) -> pb.RemoveDriverResponse:
        async def run() -> pb.RemoveDriverResponse:
            val.require_text("name", request.name, 128)
            access.note(target=request.name)
            # By name in the registry, and by stored registration too: a driver down
            # since the host started has not told the registry its name yet.
            addresses = await self._registered("driver", request.name)
            entry = await self.registry.remove_driver(request.name)
            if entry is not None:
                addresses.add(entry.address)
            for address in addresses:
                await self.registry.remove_driver(request.name, address=address)
            # Its volumes have no owner any more: the next plan gives them to whoever
            # claims them (the operator said the driver is gone for good).
            await self.store.write(
                *(self.store.w_remove_registration("driver", a) for a in sorted(addresses)),
                self.store.w_forget_owner(request.name),
            )
            return pb.RemoveDriverResponse()

        return await _call(context, "RemoveDriver", run)

    async def RegisterAgent(  # noqa: N802
        self, request: pb.RegisterAgentRequest, context: Ctx
    ) -> pb.RegisterAgentResponse:
        async def run() -> pb.RegisterAgentResponse:
            address = _address(self.peers, "address", request.address)
            access.note(target=address)
            tls = _tls(self.peers, "tls", request.tls, request.HasField("tls"))
            entry = await self.registry.add_agent(address, tls=tls, require_serving=True)
            await self.store.write(
                self.store.w_save_registration("agent", address, entry.name, 0, _tls_dict(tls)),
                *await self._moved("agent", entry.name, address),
            )
            return pb.RegisterAgentResponse(agent=convert.agent_to_pb(entry))

        return await _call(context, "RegisterAgent", run)

    async def ListAgents(  # noqa: N802
        self, request: pb.ListAgentsRequest, context: Ctx
    ) -> pb.ListAgentsResponse:
        async def run() -> pb.ListAgentsResponse:
            return pb.ListAgentsResponse(
                agents=[convert.agent_to_pb(e) for e in self.registry.agents()]
            )

        return await _call(context, "ListAgents", run)

    async def RemoveAgent(  # noqa: N802
        self, request: pb.RemoveAgentRequest, context: Ctx
    ) -> pb.RemoveAgentResponse:
        async def run() -> pb.RemoveAgentResponse:
            val.require_text("name", request.name, 128)
            access.note(target=request.name)
            addresses = await self._registered("agent", request.name)
            entry = await self.registry.remove_agent(request.name)
            if entry is not None:
                addresses.add(entry.address)
            for address in addresses:
                await self.registry.remove_agent(request.name, address=address)
            if addresses:
                await self.store.write(
                    *(self.store.w_remove_registration("agent", a) for a in sorted(addresses))
                )
            return pb.RemoveAgentResponse()

        return await _call(context, "RemoveAgent", run)

    # --- VMs, passed through to their agent ---------------------------------------

    async def DefineVM(  # noqa: N802
        self, request: pb.DefineVMRequest, context: Ctx
    ) -> pb.DefineVMResponse:
        async def run() -> pb.DefineVMResponse:
            vm: VM = cv.vm_from_pb(request.vm)
            val.require_id("vm.id", vm.id)
            val.require_volumes("vm.volumes", vm.volumes)
            project = await self._define_project(vm.id, _project("project", request.project))
            labels = dict(request.labels)
            pmodel.check_labels("labels", labels)
            agents = self.registry.agents()
            if request.agent:
                name = request.agent
            elif len(agents) == 1:
                name = agents[0].name
            else:
                raise InvalidArgument.for_field(
                    "agent", f"is required when {len(agents)} agents are registered (ListAgents)"
                )
            if self.registry.agent_entry(name) is None:
                raise NotFound(
                    f"agent {name} is not registered (ListAgents)", reason=Reason.AGENT_NOT_FOUND
                )
            defined = await self.registry.agent(name).define_vm(vm)
            if project and await self.store.read(self.store.vm_project, vm.id) != project:
                await self.store.write(self.store.w_set_vm_project(vm.id, project))
            if labels:
                # Labels live in the catalog (agents know nothing of them): set once
                # the agent accepted the VM; a retried define sets the same again.
                await self.store.write(self.policies.w_set_labels(vm.id, labels, replace=True))
            return pb.DefineVMResponse(
                vm=cv.vm_to_pb(defined),
                project=project,
                labels=await self.policies.store.read(self.policies.labels, vm.id),
            )

        return await _call(context, "DefineVM", run)

    async def GetVM(self, request: pb.GetVMRequest, context: Ctx) -> pb.GetVMResponse:  # noqa: N802
        async def run() -> pb.GetVMResponse:
            val.require_id("vm_id", request.vm_id)
            project = await self._vm_project(request.vm_id)
            _, vm = await self.registry.find_vm(request.vm_id)
            return pb.GetVMResponse(
                vm=cv.vm_to_pb(vm),
                project=project,
                labels=await self.policies.store.read(self.policies.labels, vm.id),
            )

        return await _call(context, "GetVM", run)

    async def ListVMs(self, request: pb.ListVMsRequest, context: Ctx) -> pb.ListVMsResponse:  # noqa: N802
        async def run() -> pb.ListVMsResponse:
            vms: list[VM] = []
            for entry in self.registry.agents():
                if entry.health is not Health.SERVING:
                    continue
                agent = self.registry.agent(entry.name)
                token = ""
                while True:
                    page = await agent.list_vms(Page(size=500, token=token))
                    vms.extend(page.vms)
                    token = page.next_token
                    if not token:
                        break
            if access.visible_projects() is not None:
                projects = await self.store.read(self.store.vm_project_map, [v.id for v in vms])
                vms = [v for v in vms if access.sees(projects.get(v.id, ""))]
            labels = await self.policies.store.read(self.policies.all_labels)
            return pb.ListVMsResponse(
                vms=[cv.vm_to_pb(v) for v in vms],
                labels={v.id: pb.VMLabels(labels=labels[v.id]) for v in vms if v.id in labels},
            )

        return await _call(context, "ListVMs", run)

    async def StartVM(self, request: pb.StartVMRequest, context: Ctx) -> pb.StartVMResponse:  # noqa: N802
        async def run() -> pb.StartVMResponse:
            val.require_id("vm_id", request.vm_id)
            await self._vm_project(request.vm_id)
            await self.manager.check_may_start(request.vm_id)
            entry, _ = await self.registry.find_vm(request.vm_id)
            vm = await self.registry.agent(entry.name).start_vm(request.vm_id)
            return pb.StartVMResponse(vm=cv.vm_to_pb(vm))

        return await _call(context, "StartVM", run)

    async def StopVM(self, request: pb.StopVMRequest, context: Ctx) -> pb.StopVMResponse:  # noqa: N802
        async def run() -> pb.StopVMResponse:
            val.require_id("vm_id", request.vm_id)
            await self._vm_project(request.vm_id)
            entry, _ = await self.registry.find_vm(request.vm_id)
            vm = await self.registry.agent(entry.name).stop_vm(request.vm_id, request.force)
            return pb.StopVMResponse(vm=cv.vm_to_pb(vm))

        return await _call(context, "StopVM", run)

    async def UndefineVM(  # noqa: N802
        self, request: pb.UndefineVMRequest, context: Ctx
    ) -> pb.UndefineVMResponse:
        async def run() -> pb.UndefineVMResponse:
            val.require_id("request_id", request.request_id)
            val.require_id("vm_id", request.vm_id)
            await self._vm_project(request.vm_id)
            await self._request_id(request.request_id)
            loop = asyncio.get_running_loop()
            remaining = current_call().time_remaining()
            budget = UNDEFINE_WAIT if remaining is None else min(UNDEFINE_WAIT, remaining - 0.5)
            give_up = loop.time() + max(0.0, budget)
            while True:
                # Each pass starts what it can and undefines once every delete is
                # done; between passes, wait for the deletes it started.
                undefined, ops = await self.manager.undefine_vm(
                    request.request_id, request.vm_id, delete_snapshots=request.delete_snapshots
                )
                pending = [op for op in ops if not op.done]
                if undefined or loop.time() >= give_up or self.manager.stopping:
                    break  # stopping: the caller calls again (the same request_id)
                if pending:
                    await self.manager.wait_operation(
                        pending[0].id, max(0.0, give_up - loop.time())
                    )
                else:  # a delete could not be queued yet (the VM's queue is full)
                    await asyncio.sleep(min(0.2, max(0.0, give_up - loop.time())))
            return pb.UndefineVMResponse(
                undefined=undefined, delete_operations=await self._ops(ops)
            )

        return await _call(context, "UndefineVM", run)

    # --- reconciliation -----------------------------------------------------------

    async def Reconcile(  # noqa: N802
        self, request: pb.ReconcileRequest, context: Ctx
    ) -> pb.ReconcileResponse:
        async def run() -> pb.ReconcileResponse:
            if self.reconciler is None:
                raise Unimplemented(
                    "this host runs without a reconciler; start it with vmsnap-host",
                    reason=Reason.NO_RECONCILER,
                )
            access.note(target="dry run" if request.dry_run else "")
            report = await self.reconciler.run_once(dry_run=request.dry_run)
            shown = report.findings[:MAX_RECONCILE_FINDINGS]
            return pb.ReconcileResponse(
                findings=[convert.finding_to_pb(f) for f in shown],
                omitted_count=len(report.findings) - len(shown),
            )

        return await _call(context, "Reconcile", run)

    async def ListFindings(  # noqa: N802
        self, request: pb.ListFindingsRequest, context: Ctx
    ) -> pb.ListFindingsResponse:
        async def run() -> pb.ListFindingsResponse:
            size = val.page_size("page_size", request.page_size)
            before = _page_token("page_token", request.page_token)
            rows = await self.store.read(self.store.findings, size + 1, before_seq=before)
            page = rows[:size]
            return pb.ListFindingsResponse(
                findings=[convert.finding_to_pb(Finding.from_row(r)) for r in page],
                next_page_token=_token(int(page[-1]["seq"])) if len(rows) > size else "",
            )

        return await _call(context, "ListFindings", run)

    # --- audit --------------------------------------------------------------------

    async def ListAuditRecords(  # noqa: N802
        self, request: pb.ListAuditRecordsRequest, context: Ctx
    ) -> pb.ListAuditRecordsResponse:
        async def run() -> pb.ListAuditRecordsResponse:
            size = val.page_size("page_size", request.page_size)
            before = _page_token("page_token", request.page_token)
            val.require_text("principal", request.principal, 255, required=False)
            project = _project("project", request.project)
            rows = await self.store.read(
                self.store.audit_records,
                size + 1,
                before,
                principal=request.principal,
                project=project,
                only_refused=request.only_refused,
            )
            page = rows[:size]
            return pb.ListAuditRecordsResponse(
                records=[convert.audit_to_pb(r) for r in page],
                next_page_token=_token(int(page[-1]["seq"])) if len(rows) > size else "",
            )

        return await _call(context, "ListAuditRecords", run)

    # --- projects of VMs ------------------------------------------------------------

    async def _define_project(self, vm_id: str, asked: str) -> str:
        """The project a DefineVM gives the VM (see DefineVMRequest.project)."""
        principal = access.caller()
        if asked and not principal.sees(asked):
            raise InvalidArgument.for_field(
                "project",
                f"{asked} is not one of your projects ({', '.join(sorted(principal.projects))})",
            )
        if not asked and not principal.all_projects:
            if len(principal.projects) != 1:
                raise InvalidArgument.for_field(
                    "project",
                    "is required: you belong to several projects "
                    f"({', '.join(sorted(principal.projects))})",
                )
            asked = next(iter(principal.projects))
        access.note(target=vm_id, project=asked)
        current = await self.store.read(self.store.vm_project, vm_id)
        if current is not None:
            if not principal.sees(current):
                raise access.hidden(_vm_exists(vm_id), current, f"VM {vm_id}")
            if asked and asked != current:
                raise _vm_exists(vm_id, f" in project {current}")
            return current
        if asked and not principal.all_projects:
            # A VM that exists without a project (defined on the agent directly) is
            # adopted by an admin only: nobody claims another's VM by its id.
            try:
                await self.registry.find_vm(vm_id)
            except NotFound:
                return asked
            raise _vm_exists(vm_id)
        return asked

    # --- changed blocks and export (issue 15; read-only, role viewer) -------------
    # Server streams: coroutines that write, so errors keep the one boundary (_call).

    async def GetSnapshotDiskBlocks(  # type: ignore[override]  # noqa: N802 - writes
        self, request: pb.GetSnapshotDiskBlocksRequest, context: Ctx
    ) -> None:
        async def run() -> None:
            val.require_id("vm_snapshot_id", request.vm_snapshot_id)
            val.require_text("disk", request.disk)
            if request.since_vm_snapshot_id:
                val.require_id("since_vm_snapshot_id", request.since_vm_snapshot_id)
            start = bw.offset("starting_offset", request.starting_offset)
            most = bw.max_results("max_results", request.max_results)
            # Another project's snapshot is NOT_FOUND, like one that does not exist.
            await self._snapshot(request.vm_snapshot_id)
            if request.since_vm_snapshot_id:
                await self._snapshot(request.since_vm_snapshot_id)
            async for page in self.blocks.pages(
                request.vm_snapshot_id, request.disk, request.since_vm_snapshot_id, start, most
            ):
                await context.write(
                    pb.GetSnapshotDiskBlocksResponse(
                        capacity_bytes=page.capacity_bytes,
                        block_size_bytes=page.block_size,
                        ranges=[
                            pb.DiskRange(offset=r.offset, length=r.length) for r in page.ranges
                        ],
                    )
                )

        await _call(context, "GetSnapshotDiskBlocks", run)

    async def ReadSnapshotDisk(  # type: ignore[override]  # noqa: N802 - writes
        self, request: pb.ReadSnapshotDiskRequest, context: Ctx
    ) -> None:
        async def run() -> None:
            val.require_id("vm_snapshot_id", request.vm_snapshot_id)
            val.require_text("disk", request.disk)
            offset = bw.offset("offset", request.offset)
            length = bw.length("length", request.length)
            chunk = bw.chunk_size("chunk_size", request.chunk_size)
            await self._snapshot(request.vm_snapshot_id)  # visible to the caller, else NOT_FOUND
            async for at, data in self.blocks.read(
                request.vm_snapshot_id, request.disk, offset, length, chunk
            ):
                await context.write(pb.ReadSnapshotDiskResponse(offset=at, data=data))

        await _call(context, "ReadSnapshotDisk", run)

    # --- freeze API for third-party tools (docs/design.md, "Freeze API") ---------
    # Roles: FreezeVM, RenewFreeze and ThawVM need operator; all three mutate
    # (audited).

    async def FreezeVM(  # noqa: N802
        self, request: pb.FreezeVMRequest, context: Ctx
    ) -> pb.FreezeVMResponse:
        async def run() -> pb.FreezeVMResponse:
            val.require_id("request_id", request.request_id)
            val.require_id("vm_id", request.vm_id)
            lease = _lease("lease", request.HasField("lease"), request.lease)
            project = await self._vm_project(request.vm_id)
            await self._request_id(request.request_id)
            state = await self.manager.freeze_vm(
                request.request_id,
                request.vm_id,
                lease,
                _quiesce(request.quiesce),
                project=project,
            )
            response = pb.FreezeVMResponse(
                token=state.token,
                consistency=common_pb2.Consistency.ValueType(state.consistency.value),
                operation_id=state.operation_id,
                method=f"QUIESCE_METHOD_{state.method.name}",
                message=state.message,
            )
            response.expire_time.FromDatetime(state.expire_time)
            return response

        return await _call(context, "FreezeVM", run)

    async def RenewFreeze(  # noqa: N802
        self, request: pb.RenewFreezeRequest, context: Ctx
    ) -> pb.RenewFreezeResponse:
        async def run() -> pb.RenewFreezeResponse:
            val.require_text("token", request.token, 256)
            lease = _lease("lease", request.HasField("lease"), request.lease)
            expires = await self.manager.renew_freeze(request.token, lease)
            response = pb.RenewFreezeResponse()
            response.expire_time.FromDatetime(expires)
            return response

        return await _call(context, "RenewFreeze", run)

    async def ThawVM(self, request: pb.ThawVMRequest, context: Ctx) -> pb.ThawVMResponse:  # noqa: N802
        async def run() -> pb.ThawVMResponse:
            val.require_text("token", request.token, 256)
            frozen = await self.manager.thaw_vm(request.token)
            response = pb.ThawVMResponse()
            response.frozen.FromNanoseconds(int(frozen * 1e9))
            return response

        return await _call(context, "ThawVM", run)

    # --- adopting array snapshots made elsewhere (docs/design.md, "Adopt") -------
    # Roles: DiscoverSnapshots needs viewer (reads; changes nothing on any array);
    # AdoptSnapshot needs operator and mutates (audited).

    async def DiscoverSnapshots(  # noqa: N802
        self, request: pb.DiscoverSnapshotsRequest, context: Ctx
    ) -> pb.DiscoverSnapshotsResponse:
        async def run() -> pb.DiscoverSnapshotsResponse:
            val.require_id("vm_id", request.vm_id)
            await self._vm_project(request.vm_id)  # another project's VM: NOT_FOUND
            found = await self.manager.adopter.discover(request.vm_id)
            return pb.DiscoverSnapshotsResponse(
                sets=[_discovered(s) for s in found.sets],
                unsupported_drivers=list(found.unsupported_drivers),
            )

        return await _call(context, "DiscoverSnapshots", run)

    async def AdoptSnapshot(  # noqa: N802
        self, request: pb.AdoptSnapshotRequest, context: Ctx
    ) -> pb.AdoptSnapshotResponse:
        async def run() -> pb.AdoptSnapshotResponse:
            val.require_id("request_id", request.request_id)
            val.require_id("vm_id", request.vm_id)
            val.require_text("set_id", request.set_id, 1200)
            val.require_text("name", request.name)
            val.require_text("description", request.description, MAX_DESCRIPTION, required=False)
            project = await self._vm_project(request.vm_id)  # another project's VM: NOT_FOUND
            await self._request_id(request.request_id)
            snap = await self.manager.adopt_snapshot(
                request.request_id,
                request.vm_id,
                request.set_id,
                request.name,
                request.description,
                project=project,
            )
            return pb.AdoptSnapshotResponse(vm_snapshot=convert.snapshot_to_pb(snap))

        return await _call(context, "AdoptSnapshot", run)

    # --- snapshot policies and VM labels (issue 14) -------------------------------

    async def CreatePolicy(  # noqa: N802
        self, request: pb.CreatePolicyRequest, context: Ctx
    ) -> pb.CreatePolicyResponse:
        async def run() -> pb.CreatePolicyResponse:
            policy = pconv.policy_from_pb(request.policy)
            if policy.vm_id:
                await self._vm_project(policy.vm_id)  # another project's VM: NOT_FOUND
            elif access.visible_projects() is not None:
                # A selector matches VMs of every project: only a caller who sees
                # them all (admin) may snapshot by selector.
                raise InvalidArgument.for_field(
                    "policy.selector",
                    "matches VMs of every project: only an admin may create a selector "
                    "policy; give policy.vm_id (vmsnap policy create NAME --vm VM)",
                )
            first = policy.parsed().next_after(time.time())
            stored = await self.policies.create(policy, first)
            return pb.CreatePolicyResponse(policy=pconv.policy_to_pb(stored))

        return await _call(context, "CreatePolicy", run)

    async def GetPolicy(  # noqa: N802
        self, request: pb.GetPolicyRequest, context: Ctx
    ) -> pb.GetPolicyResponse:
        async def run() -> pb.GetPolicyResponse:
            _policy_name(request.name)
            policy = await self.policies.store.read(self.policies.require, request.name)
            return pb.GetPolicyResponse(
                policy=pconv.policy_to_pb(policy),
                runs=[
                    pconv.run_to_pb(r)
                    for r in await self.policies.store.read(self.policies.runs, policy.id)
                ],
            )

        return await _call(context, "GetPolicy", run)

    async def ListPolicies(  # noqa: N802
        self, request: pb.ListPoliciesRequest, context: Ctx
    ) -> pb.ListPoliciesResponse:
        async def run() -> pb.ListPoliciesResponse:
            size = val.page_size("page_size", request.page_size)
            after = _page_token("page_token", request.page_token) or 0
            rows = await self.policies.store.read(self.policies.page, after, size + 1)
            page = rows[:size]
            return pb.ListPoliciesResponse(
                policies=[pconv.policy_to_pb(p) for _, p in page],
                next_page_token=_token(page[-1][0]) if len(rows) > size else "",
            )

        return await _call(context, "ListPolicies", run)

    async def PausePolicy(  # noqa: N802
        self, request: pb.PausePolicyRequest, context: Ctx
    ) -> pb.PausePolicyResponse:
        async def run() -> pb.PausePolicyResponse:
            _policy_name(request.name)
            policy = await self.policies.set_paused(request.name, True, None)
            return pb.PausePolicyResponse(policy=pconv.policy_to_pb(policy))

        return await _call(context, "PausePolicy", run)

    async def ResumePolicy(  # noqa: N802
        self, request: pb.ResumePolicyRequest, context: Ctx
    ) -> pb.ResumePolicyResponse:
        async def run() -> pb.ResumePolicyResponse:
            _policy_name(request.name)
            policy = await self.policies.store.read(self.policies.require, request.name)
            if policy.paused:
                # The next time after now: runs missed while paused are not made up.
                nxt = policy.parsed().next_after(time.time())
                policy = await self.policies.set_paused(request.name, False, nxt)
            return pb.ResumePolicyResponse(policy=pconv.policy_to_pb(policy))

        return await _call(context, "ResumePolicy", run)

    async def DeletePolicy(  # noqa: N802
        self, request: pb.DeletePolicyRequest, context: Ctx
    ) -> pb.DeletePolicyResponse:
        async def run() -> pb.DeletePolicyResponse:
            _policy_name(request.name)
            await self.policies.delete(request.name)
            return pb.DeletePolicyResponse()

        return await _call(context, "DeletePolicy", run)

    async def SetVMLabels(  # noqa: N802
        self, request: pb.SetVMLabelsRequest, context: Ctx
    ) -> pb.SetVMLabelsResponse:
        async def run() -> pb.SetVMLabelsResponse:
            val.require_id("vm_id", request.vm_id)
            await self._vm_project(request.vm_id)  # another project's VM: NOT_FOUND
            labels = dict(request.labels)
            pmodel.check_labels("labels", labels)
            for key in request.remove_keys:
                pmodel.check_label_key("remove_keys", key)
            after = {
                k: v
                for k, v in (
                    await self.policies.store.read(self.policies.labels, request.vm_id)
                ).items()
                if k not in request.remove_keys
            } | labels
            if len(after) > pmodel.MAX_LABELS:
                raise InvalidArgument.for_field(
                    "labels", f"the VM would have {len(after)} labels; at most {pmodel.MAX_LABELS}"
                )
            await self.store.write(
                self.policies.w_set_labels(request.vm_id, labels, list(request.remove_keys))
            )
            return pb.SetVMLabelsResponse(
                labels=await self.policies.store.read(self.policies.labels, request.vm_id)
            )

        return await _call(context, "SetVMLabels", run)


def _discovered(s: DiscoveredSet) -> pb.DiscoveredSet:
    u = s.snapshot
    message = pb.DiscoveredSet(
        id=s.id,
        driver=s.driver,
        object_id=u.id,
        name=u.name,
        volumes=[
            pb.DiscoveredVolume(
                disk=v.disk, locator=v.locator, handle=v.handle, size_bytes=v.size_bytes
            )
            for v in u.volume_snapshots
        ],
        complete=s.complete,
        consistency=common_pb2.Consistency.ValueType(s.consistency.value),
    )
    if u.create_time is not None:
        message.create_time.FromDatetime(u.create_time)
    return message


def _lease(field: str, present: bool, value: Any) -> float:
    if not present:
        raise InvalidArgument.for_field(field, "is required (how long the freeze may hold)")
    seconds = value.ToNanoseconds() / 1e9
    if not MIN_LEASE <= seconds <= MAX_LEASE:
        raise InvalidArgument.for_field(
            field, f"must be {MIN_LEASE:.0f} s .. {MAX_LEASE:.0f} s, not {seconds:g} s"
        )
    return float(seconds)


def _policy_name(name: str) -> None:
    if not pmodel.NAME.match(name):
        raise InvalidArgument.for_field(
            "name", "must be 1..63 chars of [A-Za-z0-9._-], starting with a letter or digit"
        )


def _since(field: str, value: Any) -> float:
    """A Timestamp field as seconds since the epoch; INVALID_ARGUMENT when it is not
    a valid Timestamp (nanos 0..999999999, years 1..9999)."""
    if not 0 <= value.nanos < 1_000_000_000 or not -62135596800 <= value.seconds <= 253402300799:
        raise InvalidArgument.for_field(
            field, "is not a valid timestamp (nanos 0..999999999, years 1..9999)"
        )
    return float(value.seconds) + float(value.nanos) / 1e9


def _vm_exists(vm_id: str, where: str = "") -> AlreadyExists:
    return AlreadyExists(
        f"VM {vm_id} already exists{where}; choose another id",
        reason=Reason.VM_ALREADY_EXISTS,
    )


def _tls_dict(tls: ClientTLS | None) -> dict[str, str]:
    if tls is None:
        return {}
    return {
        k: v
        for k, v in (
            ("ca_file", tls.ca_file),
            ("cert_file", tls.cert_file),
            ("key_file", tls.key_file),
            ("server_name", tls.server_name),
            ("pin_sha256", tls.pin_sha256),
        )
        if v
    }


__all__ = ["HostServicer", "VMSnapError"]
