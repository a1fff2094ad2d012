"""The typed control-plane client: every VMSnapshotService RPC as an async method.

Each method builds the request, calls through ``vmsnap_sdk._client.call`` (the
one place gRPC errors become :mod:`vmsnap_sdk.errors` exceptions) and converts
the reply with ``_convert``. Mutating calls take an optional ``request_id``; a
fresh one is made when it is omitted, pass your own to retry safely.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vmsnap_host.client import _convert as cv
from vmsnap_host.client._address import default_address, default_token_file, stack_tls
from vmsnap_host.client._types import (
    AgentStatus,
    AuditRecord,
    DriverStatus,
    Finding,
    Operation,
    Page,
    QuiescePolicy,
    ReconcileReport,
    UndefineResult,
    VMSnapshot,
)
from vmsnap_sdk import VM, ClientTLS, open_channel
from vmsnap_sdk._client import call
from vmsnap_sdk._convert import vm_from_pb, vm_to_pb
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_sdk._proto.host.v1 import host_pb2_grpc
from vmsnap_sdk.errors import InvalidArgument

#: Longest single WaitOperation call; progress is reported between calls.
WAIT_SLICE = 2.0
#: Longest token file read (a JWT stays far below).
MAX_TOKEN_FILE = 16384

_Resp = TypeVar("_Resp")


def read_token(path: str | Path) -> str:
    """The token in a file (surrounding whitespace dropped); a clear error if unusable."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise InvalidArgument(f"token file {path}: {exc.strerror}") from None
    token = data.decode(errors="replace").strip()
    if not token or len(data) > MAX_TOKEN_FILE or any(c.isspace() for c in token):
        raise InvalidArgument(
            f"token file {path}: must hold one token (no spaces, at most {MAX_TOKEN_FILE} bytes)"
        )
    return token


def _request_id(value: str | None) -> str:
    return value or uuid.uuid4().hex


class HostClient:
    """A connection to a vmsnap host. ``timeout`` is the default per-call deadline.

    Use as ``async with HostClient.connect() as host: ...`` or call :meth:`close`.
    ``token`` is sent as ``authorization: Bearer <token>`` on every call (a host
    with authentication on needs it, or a client certificate in ``tls``).
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        address: str = "",
        timeout: float | None = 30.0,
        token: str | None = None,
    ) -> None:
        self.channel = channel
        self.address = address
        self.timeout = timeout
        self._stub = host_pb2_grpc.VMSnapshotServiceStub(channel)
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )

    @classmethod
    def connect(
        cls,
        address: str | None = None,
        tls: ClientTLS | None = None,
        *,
        timeout: float | None = 30.0,
        token: str | None = None,
        token_file: str | Path | None = None,
    ) -> HostClient:
        """A client for ``address`` (default: ``$VMSNAP_HOST`` or the local stack's socket).

        Credentials: ``token``, else the token in ``token_file``, else the file
        ``$VMSNAP_TOKEN_FILE`` names, else the local stack's admin token
        (``$VMSNAP_HOME/secrets/token-admin``, written by ``vmsnap up --auth``)
        when it exists; else none. Without ``address`` and ``tls``, the local
        stack's TLS settings when it runs on mutual TLS (``vmsnap up --tls``).
        """
        if address is None and tls is None and not os.environ.get("VMSNAP_HOST"):
            tls = stack_tls("host")
        target = address or default_address()
        if token is None:
            path = token_file or default_token_file()
            token = read_token(path) if path else None
        return cls(open_channel(target, tls), address=target, timeout=timeout, token=token)

    async def _call(
        self, method: Callable[..., Awaitable[_Resp]], request: Any, timeout: float | None
    ) -> _Resp:
        return await call(method, request, timeout, self._metadata)

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> HostClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _t(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    async def serving(self, *, timeout: float = 2.0) -> bool:
        """Whether the host answers its health check with SERVING."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    # --- VM snapshots -------------------------------------------------------------

    async def create_vm_snapshot(
        self,
        vm_id: str,
        name: str,
        *,
        description: str = "",
        include_memory: bool = False,
        quiesce: QuiescePolicy = QuiescePolicy.BEST_EFFORT,
        parameters: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        wait: float | None = None,
    ) -> Operation:
        """Start taking a VM snapshot; wait on the returned operation.

        ``wait`` (seconds, at most 600): the host answers once the operation is
        done or that long has passed, whichever comes first — a take in one round
        trip. Check ``done``: if not, wait on it (:meth:`wait`)."""
        request = pb.CreateVMSnapshotRequest(
            request_id=_request_id(request_id),
            vm_id=vm_id,
            name=name,
            description=description,
            include_memory=include_memory,
            quiesce=pb.QuiescePolicy.ValueType(quiesce.value),
            parameters=dict(parameters or {}),
        )
        deadline = self._t(timeout)
        if wait is not None:
            request.wait.CopyFrom(cv.duration(wait))
            # The host answers by itself when the wait is over: give it that long.
            deadline = None if deadline is None else max(deadline, wait + 10.0)
        response = await self._call(self._stub.CreateVMSnapshot, request, deadline)
        return cv.operation(response.operation)

    async def get_vm_snapshot(self, id: str, *, timeout: float | None = None) -> VMSnapshot:
        response = await self._call(
            self._stub.GetVMSnapshot, pb.GetVMSnapshotRequest(id=id), self._t(timeout)
        )
        return cv.vm_snapshot(response.vm_snapshot)

    async def list_vm_snapshots(
        self,
        vm_id: str = "",
        *,
        show_removed: bool = False,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[VMSnapshot]:
        """One page, oldest first (:meth:`all_vm_snapshots` reads every page)."""
        response = await self._call(
            self._stub.ListVMSnapshots,
            pb.ListVMSnapshotsRequest(
                vm_id=vm_id, page_size=page_size, page_token=page_token, show_removed=show_removed
            ),
            self._t(timeout),
        )
        return Page(
            tuple(cv.vm_snapshot(s) for s in response.vm_snapshots), response.next_page_token
        )

    async def all_vm_snapshots(
        self, vm_id: str = "", *, show_removed: bool = False
    ) -> list[VMSnapshot]:
        """Every VM snapshot (of one VM, when given), oldest first."""
        result: list[VMSnapshot] = []
        token = ""
        while True:
            page = await self.list_vm_snapshots(vm_id, show_removed=show_removed, page_token=token)
            result += page.items
            token = page.next_token
            if not token:
                return result

    async def revert_vm_snapshot(
        self,
        id: str,
        *,
        stop_vm: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Operation:
        """Start reverting the VM to a snapshot (``stop_vm`` stops a running VM first)."""
        request = pb.RevertVMSnapshotRequest(
            request_id=_request_id(request_id), id=id, stop_vm=stop_vm
        )
        response = await self._call(self._stub.RevertVMSnapshot, request, self._t(timeout))
        return cv.operation(response.operation)

    async def delete_vm_snapshot(
        self, id: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> Operation:
        """Start deleting a VM snapshot (idempotent)."""
        request = pb.DeleteVMSnapshotRequest(request_id=_request_id(request_id), id=id)
        response = await self._call(self._stub.DeleteVMSnapshot, request, self._t(timeout))
        return cv.operation(response.operation)

    # --- operations -------------------------------------------------------------------

    async def get_operation(self, id: str, *, timeout: float | None = None) -> Operation:
        response = await self._call(
            self._stub.GetOperation, pb.GetOperationRequest(id=id), self._t(timeout)
        )
        return cv.operation(response.operation)

    async def wait_operation(self, id: str, wait_seconds: float) -> Operation:
        """One WaitOperation call: the operation when done, or as it stands after the wait."""
        response = await self._call(
            self._stub.WaitOperation,
            pb.WaitOperationRequest(id=id, timeout=cv.duration(wait_seconds)),
            wait_seconds + 10.0,
        )
        return cv.operation(response.operation)

    async def wait(
        self,
        operation_id: str,
        timeout: float | None = None,
        on_progress: Callable[[Operation], None] | None = None,
    ) -> Operation:
        """Wait until the operation is done or ``timeout`` seconds pass (None: no limit).

        Returns the operation as it stands either way: check ``done`` and
        ``error``. ``on_progress`` is called with each new state seen.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last: tuple[int, str] | None = None
        while True:
            remaining = WAIT_SLICE if deadline is None else deadline - time.monotonic()
            started = time.monotonic()
            op = await self.wait_operation(operation_id, max(0.0, min(WAIT_SLICE, remaining)))
            if on_progress is not None and (op.progress_percent, op.step) != last:
                last = (op.progress_percent, op.step)
                on_progress(op)
            if op.done or (deadline is not None and time.monotonic() >= deadline):
                return op
            # A host that answers at once while not done must not be called in a tight loop.
            if time.monotonic() - started < 0.05:
                await asyncio.sleep(0.1)

    async def list_operations(
        self,
        vm_id: str = "",
        *,
        only_running: bool = False,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[Operation]:
        """One page, newest first."""
        response = await self._call(
            self._stub.ListOperations,
            pb.ListOperationsRequest(
                vm_id=vm_id, page_size=page_size, page_token=page_token, only_running=only_running
            ),
            self._t(timeout),
        )
        return Page(tuple(cv.operation(o) for o in response.operations), response.next_page_token)

    # --- drivers and agents -------------------------------------------------------------

    async def register_driver(
        self,
        address: str,
        *,
        order: int = 0,
        tls: ClientTLS | None = None,
        timeout: float | None = None,
    ) -> DriverStatus:
        request = pb.RegisterDriverRequest(address=address, order=order, tls=cv.tls_config(tls))
        response = await self._call(self._stub.RegisterDriver, request, self._t(timeout))
        return cv.driver(response.driver)

    async def list_drivers(self, *, timeout: float | None = None) -> list[DriverStatus]:
        response = await self._call(self._stub.ListDrivers, pb.ListDriversRequest(), self._t(timeout))
        return [cv.driver(d) for d in response.drivers]

    async def remove_driver(self, name: str, *, timeout: float | None = None) -> None:
        await self._call(self._stub.RemoveDriver, pb.RemoveDriverRequest(name=name), self._t(timeout))

    async def register_agent(
        self, address: str, *, tls: ClientTLS | None = None, timeout: float | None = None
    ) -> AgentStatus:
        request = pb.RegisterAgentRequest(address=address, tls=cv.tls_config(tls))
        response = await self._call(self._stub.RegisterAgent, request, self._t(timeout))
        return cv.agent(response.agent)

    async def list_agents(self, *, timeout: float | None = None) -> list[AgentStatus]:
        response = await self._call(self._stub.ListAgents, pb.ListAgentsRequest(), self._t(timeout))
        return [cv.agent(a) for a in response.agents]

    async def remove_agent(self, name: str, *, timeout: float | None = None) -> None:
        await self._call(self._stub.RemoveAgent, pb.RemoveAgentRequest(name=name), self._t(timeout))

    # --- reconciliation ----------------------------------------------------------------

    async def reconcile(
        self, dry_run: bool = False, *, timeout: float | None = None
    ) -> ReconcileReport:
        """Run one reconciliation pass now: orphans deleted, vanished objects marked,
        stale freezes thawed (``dry_run``: only reported). A pass lists every driver
        and agent: give it a ``timeout`` longer than the default for large arrays."""
        response = await self._call(
            self._stub.Reconcile, pb.ReconcileRequest(dry_run=dry_run), self._t(timeout)
        )
        return ReconcileReport(
            tuple(cv.finding(f) for f in response.findings), response.omitted_count
        )

    async def list_findings(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> Page[Finding]:
        """One page of the findings the reconciler kept, newest first."""
        response = await self._call(
            self._stub.ListFindings,
            pb.ListFindingsRequest(page_size=page_size, page_token=page_token),
            self._t(timeout),
        )
        return Page(tuple(cv.finding(f) for f in response.findings), response.next_page_token)

    async def list_audit_records(
        self,
        *,
        principal: str = "",
        project: str = "",
        only_refused: bool = False,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[AuditRecord]:
        """One page of the audit log, newest first (admin only)."""
        response = await self._call(
            self._stub.ListAuditRecords,
            pb.ListAuditRecordsRequest(
                page_size=page_size,
                page_token=page_token,
                principal=principal,
                project=project,
                only_refused=only_refused,
            ),
            self._t(timeout),
        )
        return Page(tuple(cv.audit_record(r) for r in response.records), response.next_page_token)

    # --- VMs (passed through to their agents) -----------------------------------------

    async def define_vm(
        self, vm: VM, *, agent: str = "", project: str = "", timeout: float | None = None
    ) -> VM:
        """Define a VM on an agent (``agent`` may be empty when only one is registered),
        in ``project`` (empty: the caller's only project; see DefineVMRequest.project)."""
        response = await self._call(
            self._stub.DefineVM,
            pb.DefineVMRequest(agent=agent, vm=vm_to_pb(vm), project=project),
            self._t(timeout),
        )
        return vm_from_pb(response.vm)

    async def get_vm(self, vm_id: str, *, timeout: float | None = None) -> VM:
        response = await self._call(self._stub.GetVM, pb.GetVMRequest(vm_id=vm_id), self._t(timeout))
        return vm_from_pb(response.vm)

    async def list_vms(self, *, timeout: float | None = None) -> list[VM]:
        response = await self._call(self._stub.ListVMs, pb.ListVMsRequest(), self._t(timeout))
        return [vm_from_pb(v) for v in response.vms]

    async def start_vm(self, vm_id: str, *, timeout: float | None = None) -> VM:
        response = await self._call(self._stub.StartVM, pb.StartVMRequest(vm_id=vm_id), self._t(timeout))
        return vm_from_pb(response.vm)

    async def stop_vm(self, vm_id: str, *, force: bool = False, timeout: float | None = None) -> VM:
        response = await self._call(
            self._stub.StopVM, pb.StopVMRequest(vm_id=vm_id, force=force), self._t(timeout)
        )
        return vm_from_pb(response.vm)

    async def undefine_vm(
        self,
        vm_id: str,
        *,
        delete_snapshots: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> UndefineResult:
        """One UndefineVM call: the VM undefined, or its snapshots' deletes still
        running (wait for them and call again with the same ``request_id``)."""
        request = pb.UndefineVMRequest(
            request_id=_request_id(request_id), vm_id=vm_id, delete_snapshots=delete_snapshots
        )
        response = await self._call(self._stub.UndefineVM, request, self._t(timeout))
        return UndefineResult(
            response.undefined, tuple(cv.operation(o) for o in response.delete_operations)
        )
