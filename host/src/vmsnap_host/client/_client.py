"""The typed control-plane client: every VMSnapshotService RPC as an async method.

Each method builds the request, calls through ``vmsnap_sdk._client.call`` (the
one place gRPC errors become :mod:`vmsnap_sdk.errors` exceptions) and converts
the reply with ``_convert``. Mutating calls take an optional ``request_id``; a
fresh one is made when it is omitted, pass your own to retry safely.

Several host replicas: ``HostClient.connect("unix:///a.sock,unix:///b.sock")``
(or a ``dns:`` name, whose addresses gRPC resolves and fails over between). A
call that gets UNAVAILABLE is sent to the next replica, each tried once, with
the same request (so the same ``request_id``: a create that did reach a replica
before it died is not made twice). The replica that answered is used next.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vmsnap_host.client import _convert as cv
from vmsnap_host.client._address import default_address, default_token_file, stack_tls
from vmsnap_host.client._types import (
    AgentStatus,
    AuditRecord,
    Discovery,
    DiskRanges,
    DriverStatus,
    Finding,
    FreezeInfo,
    LabeledVM,
    Operation,
    Page,
    QuiescePolicy,
    ReconcileReport,
    SnapshotPolicy,
    UndefineResult,
    VMSnapshot,
)
from vmsnap_sdk import VM, ClientTLS, open_channel
from vmsnap_sdk._blocks_wire import iterate
from vmsnap_sdk._client import call
from vmsnap_sdk._convert import vm_from_pb, vm_to_pb
from vmsnap_sdk._errors import from_rpc_error
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_sdk._proto.host.v1 import host_pb2_grpc
from vmsnap_sdk.blocks import BlockRange
from vmsnap_sdk.errors import InvalidArgument, ResourceExhausted, Unavailable, Unimplemented

#: Longest single WaitOperation call; progress is reported between calls.
WAIT_SLICE = 2.0
#: Longest token file read (a JWT stays far below).
MAX_TOKEN_FILE = 16384


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


def split_addresses(address: str) -> list[str]:
    """The replicas' addresses in ``a,b,c`` (blanks and repeats dropped)."""
    parts = [a.strip() for a in address.split(",")]
    return list(dict.fromkeys(a for a in parts if a))


class HostClient:
    """A connection to a vmsnap host, or to several replicas of it (fail-over on
    UNAVAILABLE). ``timeout`` is the default per-call deadline.

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
        replicas: Sequence[tuple[str, grpc.aio.Channel]] = (),
        token: str | None = None,
    ) -> None:
        """``channel`` (at ``address``) first, then ``replicas`` (address, channel)."""
        self._targets = [(address, channel), *replicas]
        self._stubs = [host_pb2_grpc.VMSnapshotServiceStub(c) for _, c in self._targets]
        self._current = 0
        self.address = ",".join(a for a, _ in self._targets)
        self.timeout = timeout
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
        """A client for ``address`` (default: ``$VMSNAP_HOST`` or the local stack's
        socket): one address, several separated by commas, or a ``dns:`` name.

        Credentials: ``token``, else the token in ``token_file``, else the file
        ``$VMSNAP_TOKEN_FILE`` names, else the local stack's admin token
        (``$VMSNAP_HOME/secrets/token-admin``, written by ``vmsnap up --auth``)
        when it exists; else none. Without ``address`` and ``tls``, the local
        stack's TLS settings when it runs on mutual TLS (``vmsnap up --tls``).
        """
        if address is None and tls is None and not os.environ.get("VMSNAP_HOST"):
            tls = stack_tls("host")
        if token is None:
            path = token_file or default_token_file()
            token = read_token(path) if path else None
        targets = split_addresses(address or default_address()) or [default_address()]
        channels = [(t, open_channel(t, tls)) for t in targets]
        first, *rest = channels
        return cls(first[1], address=first[0], timeout=timeout, replicas=rest, token=token)

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel of the replica in use."""
        return self._targets[self._current][1]

    @property
    def replica(self) -> str:
        """The address of the replica in use."""
        return self._targets[self._current][0]

    async def close(self) -> None:
        """Close the channels to every replica; calls in flight are cancelled."""
        for _, channel in self._targets:
            await channel.close(None)

    async def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        """Call ``method`` on the replica in use, then on each other one in turn while
        the answer is UNAVAILABLE."""
        count = len(self._stubs)
        for attempt in range(count):
            index = (self._current + attempt) % count
            try:
                response = await call(
                    getattr(self._stubs[index], method), request, timeout, self._metadata
                )
            except Unavailable:
                if attempt == count - 1:
                    raise
                continue
            self._current = index
            return response
        raise AssertionError("unreachable")  # pragma: no cover

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
        response = await self._call("CreateVMSnapshot", request, deadline)
        return cv.operation(response.operation)

    async def create_vm_from_snapshot(
        self,
        snapshot_id: str,
        new_vm_id: str,
        *,
        agent: str = "",
        new_vm_name: str = "",
        parameters: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        wait: float | None = None,
    ) -> Operation:
        """Start making a new VM from a READY snapshot (its disks cloned by their
        drivers, defined STOPPED on ``agent``, by default the snapshot's); wait on
        the returned CLONE operation. ``wait`` as in :meth:`create_vm_snapshot`."""
        request = pb.CreateVMFromSnapshotRequest(
            request_id=_request_id(request_id),
            snapshot_id=snapshot_id,
            new_vm_id=new_vm_id,
            agent=agent,
            new_vm_name=new_vm_name,
            parameters=dict(parameters or {}),
        )
        deadline = self._t(timeout)
        if wait is not None:
            request.wait.CopyFrom(cv.duration(wait))
            deadline = None if deadline is None else max(deadline, wait + 10.0)
        response = await self._call("CreateVMFromSnapshot", request, deadline)
        return cv.operation(response.operation)

    async def get_vm_snapshot(self, id: str, *, timeout: float | None = None) -> VMSnapshot:
        """The VM snapshot with that id (NotFound when the catalog has none)."""
        response = await self._call(
            "GetVMSnapshot", pb.GetVMSnapshotRequest(id=id), self._t(timeout)
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
            "ListVMSnapshots",
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
        response = await self._call("RevertVMSnapshot", request, self._t(timeout))
        return cv.operation(response.operation)

    async def delete_vm_snapshot(
        self, id: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> Operation:
        """Start deleting a VM snapshot (idempotent)."""
        request = pb.DeleteVMSnapshotRequest(request_id=_request_id(request_id), id=id)
        response = await self._call("DeleteVMSnapshot", request, self._t(timeout))
        return cv.operation(response.operation)

    # --- operations -------------------------------------------------------------------

    async def get_operation(self, id: str, *, timeout: float | None = None) -> Operation:
        """The operation with that id, as it stands now (NotFound when unknown)."""
        response = await self._call("GetOperation", pb.GetOperationRequest(id=id), self._t(timeout))
        return cv.operation(response.operation)

    async def wait_operation(self, id: str, wait_seconds: float) -> Operation:
        """One WaitOperation call: the operation when done, or as it stands after the wait."""
        response = await self._call(
            "WaitOperation",
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

    async def watch_operations(
        self,
        vm_id: str = "",
        *,
        operation_id: str = "",
        since: datetime | None = None,
    ) -> AsyncIterator[Operation]:
        """Operations as they change, pushed by the host (WatchOperations).

        Yields each matching operation after every committed change (step,
        progress, end): first those changed at or after ``since`` (or, with
        ``operation_id``, that operation as it stands), then live. With
        ``operation_id`` the iteration ends after that operation's final state;
        otherwise it runs until the caller stops iterating. A watcher that fell
        too far behind raises ResourceExhausted (WATCH_TOO_SLOW): watch again with
        ``since`` set to the last ``update_time`` seen.
        """
        request = pb.WatchOperationsRequest(vm_id=vm_id, operation_id=operation_id)
        if since is not None:
            request.since.FromDatetime(since)
        stream = self._stubs[self._current].WatchOperations(request, metadata=self._metadata)
        try:
            async for response in stream:
                yield cv.operation(response.operation)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            stream.cancel()

    async def follow(
        self,
        operation_id: str,
        *,
        timeout: float | None = None,
        on_progress: Callable[[Operation], None] | None = None,
    ) -> Operation:
        """Like :meth:`wait`, but pushed: ``on_progress`` sees each step as the host
        journals it (WatchOperations), not every 2 s. Returns the operation when
        done, or as it stands after ``timeout`` seconds (None: no limit). A host
        without WatchOperations is waited on with :meth:`wait`."""
        last: Operation | None = None

        async def watch() -> Operation | None:
            nonlocal last
            async for op in self.watch_operations(operation_id=operation_id):
                last = op
                if on_progress is not None:
                    on_progress(op)
                if op.done:
                    return op
            return None

        try:
            done = await asyncio.wait_for(watch(), timeout)
        except TimeoutError:
            return last or await self.get_operation(operation_id)
        except (Unimplemented, ResourceExhausted, Unavailable):
            # A host without WatchOperations, this watcher dropped as too slow, or the
            # replica gone (another may have taken the operation over): wait the old
            # way, with its fail-over (the operation is not affected either way).
            return await self.wait(operation_id, timeout=timeout, on_progress=on_progress)
        return done or await self.get_operation(operation_id)

    async def cancel_operation(
        self, operation_id: str, *, timeout: float | None = None
    ) -> Operation:
        """Cancel an operation (CancelOperation): a queued one ends at once (done,
        CANCELLED); a running take is rolled back and a running revert finished on
        one side at its next step (``cancel_requested`` is true until then: follow
        it). FailedPrecondition when it is finished already (OPERATION_FINISHED) or
        is a delete that started (OPERATION_NOT_CANCELLABLE)."""
        response = await self._call(
            "CancelOperation",
            pb.CancelOperationRequest(operation_id=operation_id),
            self._t(timeout),
        )
        return cv.operation(response.operation)

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
            "ListOperations",
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
        """Register (or update) the storage driver at ``address``; the host checks it
        first and refuses one that does not answer or keep the contract."""
        request = pb.RegisterDriverRequest(address=address, order=order, tls=cv.tls_config(tls))
        response = await self._call("RegisterDriver", request, self._t(timeout))
        return cv.driver(response.driver)

    async def list_drivers(self, *, timeout: float | None = None) -> list[DriverStatus]:
        """Every registered storage driver with its health, versions and capabilities."""
        response = await self._call("ListDrivers", pb.ListDriversRequest(), self._t(timeout))
        return [cv.driver(d) for d in response.drivers]

    async def remove_driver(self, name: str, *, timeout: float | None = None) -> None:
        """Forget a registered driver and the volumes it owned (NotFound when unknown)."""
        await self._call("RemoveDriver", pb.RemoveDriverRequest(name=name), self._t(timeout))

    async def register_agent(
        self, address: str, *, tls: ClientTLS | None = None, timeout: float | None = None
    ) -> AgentStatus:
        """Register (or update) the hypervisor agent at ``address`` after checking it."""
        request = pb.RegisterAgentRequest(address=address, tls=cv.tls_config(tls))
        response = await self._call("RegisterAgent", request, self._t(timeout))
        return cv.agent(response.agent)

    async def list_agents(self, *, timeout: float | None = None) -> list[AgentStatus]:
        """Every registered hypervisor agent with its health and version."""
        response = await self._call("ListAgents", pb.ListAgentsRequest(), self._t(timeout))
        return [cv.agent(a) for a in response.agents]

    async def remove_agent(self, name: str, *, timeout: float | None = None) -> None:
        """Forget a registered hypervisor agent (NotFound when unknown)."""
        await self._call("RemoveAgent", pb.RemoveAgentRequest(name=name), self._t(timeout))

    # --- reconciliation ----------------------------------------------------------------

    async def reconcile(
        self, dry_run: bool = False, *, timeout: float | None = None
    ) -> ReconcileReport:
        """Run one reconciliation pass now: orphans deleted, vanished objects marked,
        stale freezes thawed (``dry_run``: only reported). A pass lists every driver
        and agent: give it a ``timeout`` longer than the default for large arrays."""
        response = await self._call(
            "Reconcile", pb.ReconcileRequest(dry_run=dry_run), self._t(timeout)
        )
        return ReconcileReport(
            tuple(cv.finding(f) for f in response.findings), response.omitted_count
        )

    async def list_findings(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> Page[Finding]:
        """One page of the findings the reconciler kept, newest first."""
        response = await self._call(
            "ListFindings",
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
            "ListAuditRecords",
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
        self,
        vm: VM,
        *,
        agent: str = "",
        project: str = "",
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> VM:
        """Define a VM on an agent (``agent`` may be empty when only one is registered),
        in ``project`` (empty: the caller's only project; see DefineVMRequest.project),
        with ``labels`` kept by the host (replacing any the VM id had)."""
        request = pb.DefineVMRequest(
            agent=agent, vm=vm_to_pb(vm), project=project, labels=dict(labels or {})
        )
        response = await self._call("DefineVM", request, self._t(timeout))
        return vm_from_pb(response.vm)

    async def get_vm(self, vm_id: str, *, timeout: float | None = None) -> VM:
        """The VM as its agent describes it: state and disks with their locators."""
        response = await self._call("GetVM", pb.GetVMRequest(vm_id=vm_id), self._t(timeout))
        return vm_from_pb(response.vm)

    async def list_vms(self, *, timeout: float | None = None) -> list[VM]:
        """Every VM the registered agents know."""
        response = await self._call("ListVMs", pb.ListVMsRequest(), self._t(timeout))
        return [vm_from_pb(v) for v in response.vms]

    async def get_labeled_vm(self, vm_id: str, *, timeout: float | None = None) -> LabeledVM:
        """The VM (as :meth:`get_vm`) with its labels."""
        response = await self._call("GetVM", pb.GetVMRequest(vm_id=vm_id), self._t(timeout))
        return LabeledVM(vm_from_pb(response.vm), dict(response.labels))

    async def list_labeled_vms(self, *, timeout: float | None = None) -> list[LabeledVM]:
        """Every VM (as :meth:`list_vms`) with its labels."""
        response = await self._call("ListVMs", pb.ListVMsRequest(), self._t(timeout))
        return [
            LabeledVM(
                vm_from_pb(v),
                dict(response.labels[v.id].labels) if v.id in response.labels else {},
            )
            for v in response.vms
        ]

    async def set_vm_labels(
        self,
        vm_id: str,
        labels: Mapping[str, str] | None = None,
        *,
        remove: Sequence[str] = (),
        timeout: float | None = None,
    ) -> dict[str, str]:
        """Remove the ``remove`` keys, then set ``labels``; returns all the VM's labels."""
        request = pb.SetVMLabelsRequest(
            vm_id=vm_id, labels=dict(labels or {}), remove_keys=list(remove)
        )
        response = await self._call("SetVMLabels", request, self._t(timeout))
        return dict(response.labels)

    # --- snapshot policies --------------------------------------------------------------

    async def create_policy(
        self,
        name: str,
        *,
        schedule: str,
        vm_id: str = "",
        selector: Mapping[str, str] | None = None,
        keep_last: int = 0,
        keep_daily: int = 0,
        keep_weekly: int = 0,
        quiesce: QuiescePolicy = QuiescePolicy.BEST_EFFORT,
        time_zone: str = "",
        timeout: float | None = None,
    ) -> SnapshotPolicy:
        """Create a snapshot policy for one VM (``vm_id``) or the VMs whose labels match
        ``selector``; ``schedule`` is a cron expression or ``@every 30s``. The same
        definition again returns the stored policy."""
        message = pb.SnapshotPolicy(
            name=name,
            schedule=schedule,
            vm_id=vm_id,
            selector=dict(selector or {}),
            time_zone=time_zone,
            retention=pb.Retention(
                keep_last=keep_last, keep_daily=keep_daily, keep_weekly=keep_weekly
            ),
            quiesce=pb.QuiescePolicy.ValueType(quiesce.value),
        )
        response = await self._call(
            "CreatePolicy", pb.CreatePolicyRequest(policy=message), self._t(timeout)
        )
        return cv.policy(response.policy)

    async def get_policy(self, name: str, *, timeout: float | None = None) -> SnapshotPolicy:
        """A policy with its most recent runs (``runs``, newest first)."""
        response = await self._call("GetPolicy", pb.GetPolicyRequest(name=name), self._t(timeout))
        return cv.policy(response.policy, response.runs)

    async def list_policies(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> Page[SnapshotPolicy]:
        """One page of policies, oldest first."""
        request = pb.ListPoliciesRequest(page_size=page_size, page_token=page_token)
        response = await self._call("ListPolicies", request, self._t(timeout))
        return Page(tuple(cv.policy(p) for p in response.policies), response.next_page_token)

    async def all_policies(self, *, timeout: float | None = None) -> list[SnapshotPolicy]:
        """Every policy (all pages)."""
        out: list[SnapshotPolicy] = []
        token = ""
        while True:
            page = await self.list_policies(page_size=1000, page_token=token, timeout=timeout)
            out.extend(page.items)
            token = page.next_token
            if not token:
                return out

    async def pause_policy(self, name: str, *, timeout: float | None = None) -> SnapshotPolicy:
        """Stop a policy's runs until :meth:`resume_policy` (idempotent)."""
        response = await self._call(
            "PausePolicy", pb.PausePolicyRequest(name=name), self._t(timeout)
        )
        return cv.policy(response.policy)

    async def resume_policy(self, name: str, *, timeout: float | None = None) -> SnapshotPolicy:
        """Run a paused policy again from its next scheduled time (idempotent)."""
        response = await self._call(
            "ResumePolicy", pb.ResumePolicyRequest(name=name), self._t(timeout)
        )
        return cv.policy(response.policy)

    async def delete_policy(self, name: str, *, timeout: float | None = None) -> None:
        """Delete a policy; its snapshots stay (idempotent)."""
        await self._call("DeletePolicy", pb.DeletePolicyRequest(name=name), self._t(timeout))

    async def start_vm(self, vm_id: str, *, timeout: float | None = None) -> VM:
        """Start a defined VM; returns it as it is now."""
        response = await self._call("StartVM", pb.StartVMRequest(vm_id=vm_id), self._t(timeout))
        return vm_from_pb(response.vm)

    async def stop_vm(self, vm_id: str, *, force: bool = False, timeout: float | None = None) -> VM:
        """Stop a VM (``force``: power off at once); returns it as it is now."""
        response = await self._call(
            "StopVM", pb.StopVMRequest(vm_id=vm_id, force=force), self._t(timeout)
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
        response = await self._call("UndefineVM", request, self._t(timeout))
        return UndefineResult(
            response.undefined, tuple(cv.operation(o) for o in response.delete_operations)
        )

    # --- changed blocks and export (streams, read whole; no fail-over mid-stream) ---

    async def disk_ranges(
        self,
        vm_snapshot_id: str,
        disk: str,
        *,
        since: str = "",
        starting_offset: int = 0,
        max_results: int = 0,
        timeout: float | None = None,
    ) -> DiskRanges:
        """The ranges of one disk of a READY snapshot that hold data, or with
        ``since`` (an older snapshot of the same VM) the ranges that changed since."""
        stream = self._stubs[self._current].GetSnapshotDiskBlocks(
            pb.GetSnapshotDiskBlocksRequest(
                vm_snapshot_id=vm_snapshot_id,
                disk=disk,
                since_vm_snapshot_id=since,
                starting_offset=starting_offset,
                max_results=max_results,
            ),
            timeout=self._t(timeout),
            metadata=self._metadata,
        )
        capacity = block = 0
        ranges: list[BlockRange] = []
        async for message in iterate(stream):
            capacity, block = message.capacity_bytes, message.block_size_bytes
            ranges.extend(BlockRange(r.offset, r.length) for r in message.ranges)
        return DiskRanges(capacity_bytes=capacity, block_size=block, ranges=tuple(ranges))

    async def read_snapshot_disk(
        self,
        vm_snapshot_id: str,
        disk: str,
        offset: int,
        length: int,
        *,
        chunk_size: int = 0,
        timeout: float | None = None,
    ) -> bytes:
        """``length`` bytes of one disk of a READY snapshot from ``offset`` (read
        large disks in pieces: the answer is held in memory)."""
        stream = self._stubs[self._current].ReadSnapshotDisk(
            pb.ReadSnapshotDiskRequest(
                vm_snapshot_id=vm_snapshot_id,
                disk=disk,
                offset=offset,
                length=length,
                chunk_size=chunk_size,
            ),
            timeout=self._t(timeout),
            metadata=self._metadata,
        )
        parts = [message.data async for message in iterate(stream)]
        return b"".join(parts)

    # --- freeze API for third-party tools -------------------------------------------

    async def freeze_vm(
        self,
        vm_id: str,
        lease_seconds: float,
        *,
        quiesce: QuiescePolicy = QuiescePolicy.BEST_EFFORT,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> FreezeInfo:
        """Freeze a RUNNING VM for your own cut. The VM's agent thaws it by itself
        ``lease_seconds`` after the freeze (or the last renewal): renew it with
        :meth:`renew_freeze` well before ``expire_time``, thaw it with :meth:`thaw_vm`."""
        request = pb.FreezeVMRequest(
            request_id=_request_id(request_id),
            vm_id=vm_id,
            quiesce=pb.QuiescePolicy.ValueType(quiesce.value),
        )
        request.lease.CopyFrom(cv.duration(lease_seconds))
        return cv.freeze(await self._call("FreezeVM", request, self._t(timeout)))

    async def renew_freeze(
        self, token: str, lease_seconds: float, *, timeout: float | None = None
    ) -> datetime:
        """Extend a freeze's lease from now; the new expiry. FailedPrecondition
        (reason FREEZE_EXPIRED) when it lapsed: the VM was thawed."""
        request = pb.RenewFreezeRequest(token=token)
        request.lease.CopyFrom(cv.duration(lease_seconds))
        response = await self._call("RenewFreeze", request, self._t(timeout))
        expire: datetime = response.expire_time.ToDatetime(tzinfo=UTC)
        return expire

    async def thaw_vm(self, token: str, *, timeout: float | None = None) -> float:
        """Thaw a freeze; how long the VM was frozen (seconds). FailedPrecondition
        (reason FREEZE_EXPIRED) when its lease had lapsed: writes may have resumed."""
        response = await self._call("ThawVM", pb.ThawVMRequest(token=token), self._t(timeout))
        return float(response.frozen.ToNanoseconds() / 1e9)

    # --- adopting array snapshots made elsewhere ------------------------------------

    async def discover_snapshots(self, vm_id: str, *, timeout: float | None = None) -> Discovery:
        """Array snapshots of the VM's volumes that no vmsnap host made (changes
        nothing on any array)."""
        response = await self._call(
            "DiscoverSnapshots", pb.DiscoverSnapshotsRequest(vm_id=vm_id), self._t(timeout)
        )
        return cv.discovery(response)

    async def adopt_snapshot(
        self,
        vm_id: str,
        set_id: str,
        name: str,
        *,
        description: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> VMSnapshot:
        """Make a discovered set (DiscoveredSet.id) a READY VM snapshot."""
        request = pb.AdoptSnapshotRequest(
            request_id=_request_id(request_id),
            vm_id=vm_id,
            set_id=set_id,
            name=name,
            description=description,
        )
        response = await self._call("AdoptSnapshot", request, self._t(timeout))
        return cv.vm_snapshot(response.vm_snapshot)
