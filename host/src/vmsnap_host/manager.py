"""The lifecycle: sanity checks, operations, one mutating operation per VM.

Each mutating request is checked first (with the code and message DESIGN.md
documents), journaled as an operation, then queued on its VM: one runs at a
time per VM, at most ``queue_bound`` wait, past that ABORTED — counted in the
catalog at admission, so the bound holds across replicas. While it runs the
host holds the VM's lease in the catalog (one replica at a time, waiting for
the lease otherwise), and every write the operation makes checks the lease's
fencing token.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from vmsnap_host import metrics
from vmsnap_host.adopt import Adopter
from vmsnap_host.config import Settings
from vmsnap_host.decisions import DecisionCache
from vmsnap_host.events import Broadcaster
from vmsnap_host.executor import Executor
from vmsnap_host.executor.errors import cancelled, error_info
from vmsnap_host.executor.freeze_api import FreezeState
from vmsnap_host.executor.take import Prepared
from vmsnap_host.model import (
    GroupKind,
    OperationRecord,
    OperationType,
    QuiescePolicy,
    Snapshot,
    SnapshotState,
)
from vmsnap_host.planner import Plan
from vmsnap_host.registry import AgentEntry, Registry
from vmsnap_host.renewer import Renewer
from vmsnap_host.state import StaleMove
from vmsnap_host.store import Store
from vmsnap_host.store.fence import Fence, LeaseEnd, fenced
from vmsnap_host.store.store import Duplicate, Finished, frozen_refusal
from vmsnap_host.store.writer import Step
from vmsnap_host.tracing import operation_span
from vmsnap_sdk import VM, Capability, VMState
from vmsnap_sdk.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    Reason,
    Unavailable,
    VMSnapError,
)
from vmsnap_sdk.limits import cut
from vmsnap_sdk.metrics import child

log = logging.getLogger("vmsnap.host.manager")

#: How often a waiter re-reads an operation that another replica runs.
_POLL = 0.2
#: How often an operation asks again for a VM lease held by another.
_LEASE_RETRY = 0.25


def _derived(request_id: str, snapshot_id: str) -> str:
    """The request_id of the delete an UndefineVM starts for a snapshot: the same for
    every retry of that undefine, and at most 128 chars."""
    digest = hashlib.sha256(request_id.encode()).hexdigest()[:24]
    return f"undefine.{digest}.{snapshot_id}"


def _request_digest(arguments: Mapping[str, object]) -> str:
    """What a request asked beyond its target, kept with its operation so that a
    request_id reused with other arguments is refused (AIP-155)."""
    text = json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def snapshot_not_found(snapshot_id: str) -> NotFound:
    """The answer for a snapshot id that does not exist (or that the caller may not see)."""
    return NotFound(
        f"VM snapshot {snapshot_id} does not exist; list them with ListVMSnapshots",
        reason=Reason.SNAPSHOT_NOT_FOUND,
    )


def operation_not_found(operation_id: str) -> NotFound:
    return NotFound(
        f"operation {operation_id} does not exist; list them with ListOperations",
        reason=Reason.OPERATION_NOT_FOUND,
    )


def request_id_reused(request_id: str, detail: str = "") -> AlreadyExists:
    return AlreadyExists(
        f"request_id {request_id} was already used for another request{detail}; use a new "
        "request_id",
        reason=Reason.REQUEST_ID_REUSED,
    )


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Done callback of a future nobody awaits: its error is read (not logged as
    never retrieved)."""
    if not future.cancelled():
        future.exception()


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Admitted:
    """Steps a caller commits with an operation's admission (the API call's audit
    record: one commit less per call, docs/design.md "Calls on a take's path"), and
    what to call once that admission has committed (not called when the request
    is answered without writing: a replay, a refusal)."""

    steps: Sequence[Step] = ()
    committed: Callable[[], None] = _nothing


@dataclass
class _VMQueue:
    lock: asyncio.Lock
    admitted: int = 0  # running + waiting


class Manager:
    """Accepts mutating requests and runs them, one per VM at a time."""

    def __init__(self, store: Store, registry: Registry, settings: Settings, owner: str) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.owner = owner
        #: CanHandle answers reused across plans (DESIGN.md: CanHandle is pure).
        self.decisions = DecisionCache(settings.can_handle_cache_seconds)
        self.executor = Executor(store, registry, settings, decisions=self.decisions)
        #: Live operation events for WatchOperations (fed by the store's commits).
        self.events = Broadcaster(store, owner=owner)
        self.adopter = Adopter(store, registry, settings.can_handle_timeout_seconds)
        self._queues: dict[str, _VMQueue] = {}
        self._admission: dict[str, asyncio.Lock] = {}
        self._admission_users: dict[str, int] = {}  # holders and waiters of each admission lock
        #: The task of every operation this process runs or has queued, by id.
        self._tasks: dict[str, asyncio.Task[Finished | None]] = {}
        #: Operations whose record is being committed and whose task is not started
        #: yet: recovery must not take them for abandoned ones in that window.
        self._admitting: set[str] = set()
        self._changed = asyncio.Condition()
        #: Set when the host begins to stop: waits answer at once (see begin_stop).
        self._stopping = asyncio.Event()
        #: Done when the host begins to stop: what a wait waits on beside its
        #: operation (one future for every waiter, made on the loop at first use).
        self._stopped: asyncio.Future[None] | None = None

    # --- requests -----------------------------------------------------------------

    async def create_snapshot(
        self,
        request_id: str,
        vm_id: str,
        name: str,
        *,
        description: str,
        include_memory: bool,
        quiesce: QuiescePolicy,
        parameters: Mapping[str, str],
        project: str = "",
        policy_id: str = "",
        policy_name: str = "",
        also: Admitted = Admitted(),
        seen: Callable[[OperationRecord], None] | None = None,
    ) -> OperationRecord:
        """``policy_id``/``policy_name``: the snapshot policy making it (its retention
        deletes only snapshots recorded with its id). ``also``: steps committed
        with the admission (the call's audit record). ``seen``: called with the
        operation an earlier request with this ``request_id`` made, before it is
        compared or returned (the API refuses another project's: one read of the
        request id per create, under the VM's admission lock)."""
        digest = _request_digest(
            {
                "description": description,
                "include_memory": include_memory,
                "quiesce": quiesce.name,
                "parameters": dict(parameters),
            }
        )
        async with self._admit(vm_id):
            existing = await self._replay(
                request_id, OperationType.CREATE, vm_id, name, digest, seen=seen
            )
            if existing is not None:
                return existing
            self._check_queue(vm_id)
            queue = self._queues.get(vm_id)
            idle = queue is None or queue.admitted == 0
            # A take that starts at once plans on the VM's last description (a RUNNING
            # VM's) and asks its agent for a fresh one while the admission commits;
            # the take compares the two before it touches anything (Take.run;
            # docs/design.md, "Admission on the last description").
            guess = self.registry.last_described(vm_id) if idle else None
            fresh: asyncio.Future[tuple[AgentEntry, VM]] | None = None
            if guess is not None:
                agent_entry, vm = guess
                fresh = asyncio.ensure_future(self.registry.find_vm(vm_id))
                # Two loop turns: in the first, find_vm makes the call (grpc.aio
                # schedules its sending as a task of its own); in the second, that task
                # sends it. Its wire time then overlaps the plan and the commit. With one
                # turn it went out only when the admission awaited its commit: its
                # answer came after the commit, each slowed by the other at the GIL
                # (docs/design.md, "Admission on the last description").
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            else:
                agent_entry, vm = await self.registry.find_vm(vm_id)
            try:
                try:
                    plan = await self._plan_create(
                        agent_entry, vm, include_memory=include_memory, parameters=parameters
                    )
                except VMSnapError:
                    if fresh is None:
                        raise
                    # Refused on the last description: the VM may have changed since (a
                    # disk whose driver is gone, detached). Refuse or plan on the VM as
                    # its agent describes it now, never on the guess.
                    asked, fresh = fresh, None
                    try:
                        # (find_vm keeps this one as the VM's last description.)
                        agent_entry, vm = await asked
                    except VMSnapError:
                        self.registry.forget_description(vm_id)
                        raise
                    plan = await self._plan_create(
                        agent_entry, vm, include_memory=include_memory, parameters=parameters
                    )
                snap = Snapshot(
                    id=uuid.uuid4().hex,
                    vm_id=vm_id,
                    name=name,
                    state=SnapshotState.ALLOCATED,
                    agent=agent_entry.name,
                    description=description,
                    include_memory=include_memory,
                    quiesce=quiesce,
                    groups=plan.groups,
                    warnings=plan.warnings,
                    parameters=dict(parameters),
                    project=project,
                    policy_id=policy_id,
                    policy_name=policy_name,
                )
                op = self._new_op(
                    OperationType.CREATE,
                    request_id,
                    vm_id,
                    snap.id,
                    {"name": name, "request": digest},
                    project=project,
                )
                # Journal before any side effect: the snapshot and its operation are durable
                # before the VM is touched. The bounds and the uniqueness rules are checked
                # again in that transaction, by the catalog: other replicas admit too.
                steps = [
                    *also.steps,
                    self._admit_step(vm_id, max_live=self.settings.max_snapshots_per_vm),
                ]
                prepared: Prepared | None = None
                if idle:
                    with contextlib.suppress(VMSnapError):
                        # Refused here, the take fails it when it runs (ERROR, recorded).
                        prepared = self.executor.take.prepare(op, snap, vm, fresh=fresh)
                    # Nothing runs or waits on this VM here: take its lease in the same
                    # commit (one fsync less on the path of every create), and when the
                    # lease is granted, insert the rows as the take's first write leaves
                    # them (CREATING, owed deletes, owners, freeze method: one more;
                    # docs/design.md, "Take").
                    steps.append(
                        self.store.w_create_leased(
                            snap,
                            op,
                            self.owner,
                            self.settings.lease_seconds,
                            prepared.started if prepared is not None else None,
                        )
                    )
                else:
                    steps.append(self.store.w_create(snap, op))
                try:
                    async with self._admitting_op(op):
                        committed = await self.store.write(*steps)
                        fence = int(committed or 0) if idle else 0
                        also.committed()
                        # Started at once, the take reuses this description of the VM (one
                        # DescribeVM per take) and its committed first write; a take that
                        # waits behind another operation describes the VM again when it
                        # runs (that operation may change it).
                        self._start(op, fence=fence, prepared=prepared if fence else None)
                        if fence and prepared is not None:
                            fresh = None  # the take has it
                except Duplicate as exc:
                    return await self._duplicate(
                        exc, request_id, OperationType.CREATE, vm_id, name, seen=seen
                    )
                return op
            finally:
                if fresh is not None:
                    # Not handed to a take: nobody waits for its answer.
                    fresh.cancel()
                    fresh.add_done_callback(_retrieved)

    async def _plan_create(
        self,
        agent_entry: AgentEntry,
        vm: VM,
        *,
        include_memory: bool,
        parameters: Mapping[str, str],
    ) -> Plan:
        """A create's checks of the VM's state and its plan, on ``vm`` as described."""
        if vm.state not in (VMState.RUNNING, VMState.STOPPED):
            raise FailedPrecondition(
                f"VM {vm.id} is {vm.state.name}; snapshots need it RUNNING or STOPPED: "
                "start or stop it first",
                reason=Reason.VM_STATE,
            )
        if include_memory and vm.state is not VMState.RUNNING:
            raise FailedPrecondition(
                f"VM {vm.id} is {vm.state.name}; a memory snapshot needs it RUNNING: start "
                "it, or take a disk-only snapshot (include_memory=false)",
                reason=Reason.VM_STATE,
            )
        # A name in use and the bound on live snapshots are not read here: the
        # admission's transaction refuses both (the live-name index: AlreadyExists
        # NAME_IN_USE; w_admit: RESOURCE_EXHAUSTED), as it must across replicas.
        return await self.executor.take.plan(
            agent_entry, vm, include_memory=include_memory, options=parameters
        )

    async def revert_snapshot(
        self, request_id: str, snapshot_id: str, stop_vm: bool, *, also: Admitted = Admitted()
    ) -> OperationRecord:
        snap = await self._snapshot(snapshot_id)
        digest = _request_digest({"stop_vm": stop_vm})
        async with self._admit(snap.vm_id):
            existing = await self._replay(
                request_id, OperationType.REVERT, snap.vm_id, snapshot_id, digest
            )
            if existing is not None:
                return existing
            if snap.state is not SnapshotState.READY:
                # An ERROR snapshot says why (e.g. a revert found its data gone).
                why = f" ({cut(snap.error.message, 600)})" if snap.error is not None else ""
                raise FailedPrecondition(
                    f"snapshot {snapshot_id} is {snap.state.name}{why}; only a READY snapshot "
                    "can be reverted to",
                    reason=Reason.SNAPSHOT_STATE,
                )
            self._check_queue(snap.vm_id)
            _, vm = await self.registry.find_vm(snap.vm_id)
            if not snap.include_memory and vm.state is not VMState.STOPPED and not stop_vm:
                raise FailedPrecondition(
                    f"VM {vm.id} is {vm.state.name}; reverting a disk-only snapshot needs it "
                    "STOPPED: stop it first (StopVM) or pass stop_vm=true",
                    reason=Reason.VM_NOT_STOPPED,
                )
            for g in snap.groups:
                if g.kind is GroupKind.DRIVER:
                    entry = self.registry.driver_entry(g.owner)
                    caps = entry.info.capabilities if entry and entry.info else frozenset()
                    if (
                        entry is not None
                        and entry.info is not None
                        and Capability.REVERT not in caps
                    ):
                        raise FailedPrecondition(
                            f"driver {g.owner} does not offer revert (CAPABILITY_REVERT); this "
                            "snapshot can be used only by restoring its volumes by hand",
                            reason=Reason.REVERT_UNSUPPORTED,
                        )
            op = self._new_op(
                OperationType.REVERT,
                request_id,
                snap.vm_id,
                snapshot_id,
                {"stop_vm": stop_vm, "request": digest},
                project=snap.project,
            )
            try:
                async with self._admitting_op(op):
                    await self.store.write(
                        *also.steps, self._admit_step(snap.vm_id), self.store.w_insert_operation(op)
                    )
                    also.committed()
                    self._start(op)
            except Duplicate as exc:
                return await self._duplicate(
                    exc, request_id, OperationType.REVERT, snap.vm_id, snapshot_id
                )
            return op

    async def create_vm_from_snapshot(
        self,
        request_id: str,
        snapshot_id: str,
        new_vm_id: str,
        *,
        agent: str,
        name: str,
        parameters: Mapping[str, str],
    ) -> OperationRecord:
        """Start a CLONE operation: a new VM from a READY snapshot (executor.clone).

        Queued on the *source* VM: a delete of the snapshot waits behind it, so the
        snapshot stays READY while its volumes are cloned."""
        snap = await self._snapshot(snapshot_id)
        async with self._admit(snap.vm_id):
            existing = await self._replay(request_id, OperationType.CLONE, snap.vm_id, snapshot_id)
            if existing is not None:
                if existing.params.get("new_vm_id") != new_vm_id:
                    raise AlreadyExists(
                        f"request_id {request_id} was already used to clone snapshot "
                        f"{snapshot_id} as VM {existing.params.get('new_vm_id')}; use a new "
                        "request_id",
                        reason=Reason.REQUEST_ID_REUSED,
                    )
                return existing
            if snap.state is not SnapshotState.READY:
                raise FailedPrecondition(
                    f"snapshot {snapshot_id} is {snap.state.name}; only a READY snapshot can "
                    "be cloned",
                    reason=Reason.SNAPSHOT_STATE,
                )
            try:
                await self.registry.find_vm(new_vm_id)
            except NotFound:
                pass
            else:
                raise AlreadyExists(
                    f"VM {new_vm_id} is already defined; choose another id for the new VM",
                    reason=Reason.VM_ID_IN_USE,
                )
            agent_name = agent or snap.agent
            for g in snap.groups:
                if g.kind is GroupKind.HYPERVISOR:
                    owner = self.registry.agent_entry(g.owner)
                    if owner is not None and owner.info and not owner.info.copy_native_disks:
                        raise FailedPrecondition(
                            f"disks {', '.join(g.disks)} of snapshot {snapshot_id} are "
                            f"native snapshots on agent {g.owner}, which cannot copy them "
                            "(copy_native_disks is false)",
                            reason=Reason.CLONE_UNSUPPORTED,
                        )
                    if agent_name != g.owner:
                        raise FailedPrecondition(
                            f"disks {', '.join(g.disks)} of snapshot {snapshot_id} are copied "
                            f"by agent {g.owner} onto its own hypervisor: define the new VM "
                            f"there (agent {g.owner}, or leave agent empty)",
                            reason=Reason.CLONE_UNSUPPORTED,
                        )
                    continue
                # Unknown capabilities (the driver not checked yet): the call decides.
                known = self.registry.driver_entry(g.owner)
                if (
                    known is not None
                    and known.info is not None
                    and Capability.CLONE_VOLUMES not in known.info.capabilities
                ):
                    raise FailedPrecondition(
                        f"driver {g.owner} does not offer CAPABILITY_CLONE_VOLUMES; the "
                        f"disks {', '.join(g.disks)} of snapshot {snapshot_id} cannot be "
                        "cloned into a new VM",
                        reason=Reason.CLONE_UNSUPPORTED,
                    )
            if self.registry.agent_entry(agent_name) is None:
                raise NotFound(
                    f"agent {agent_name} is not registered; name a registered agent "
                    "(ListAgents) or leave agent empty for the snapshot's own",
                    reason=Reason.AGENT_NOT_FOUND,
                )
            self._check_queue(snap.vm_id)
            op = self._new_op(
                OperationType.CLONE,
                request_id,
                snap.vm_id,
                snapshot_id,
                {
                    "new_vm_id": new_vm_id,
                    "agent": agent_name,
                    "name": name or new_vm_id,
                    "parameters": dict(parameters),
                },
                # The new VM joins the source's project (issue 12) when defined.
                project=snap.project,
            )
            try:
                async with self._admitting_op(op):
                    await self.store.write(
                        self._admit_step(snap.vm_id), self.store.w_insert_operation(op)
                    )
                    self._start(op)
            except Duplicate as exc:
                return await self._duplicate(
                    exc, request_id, OperationType.CLONE, snap.vm_id, snapshot_id
                )
            return op

    async def delete_snapshot(
        self, request_id: str, snapshot_id: str, *, also: Admitted = Admitted()
    ) -> OperationRecord:
        snap = await self._snapshot(snapshot_id)
        async with self._admit(snap.vm_id):
            return await self._delete(request_id, snap, also)

    async def _delete(
        self, request_id: str, snap: Snapshot, also: Admitted = Admitted()
    ) -> OperationRecord:
        """Start a delete (or replay it); the caller holds the VM's admission lock."""
        existing = await self._replay(request_id, OperationType.DELETE, snap.vm_id, snap.id)
        if existing is not None:
            return existing
        if snap.state in (
            SnapshotState.ALLOCATED,
            SnapshotState.CREATING,
            SnapshotState.REVERTING,
        ):
            raise FailedPrecondition(
                f"snapshot {snap.id} is {snap.state.name}; wait for its operation to "
                "finish (ListOperations) and delete it then",
                reason=Reason.SNAPSHOT_BUSY,
            )
        self._check_queue(snap.vm_id)
        op = self._new_op(
            OperationType.DELETE, request_id, snap.vm_id, snap.id, {}, project=snap.project
        )
        steps = [self._admit_step(snap.vm_id)]
        if snap.state is SnapshotState.REMOVED:
            # Idempotent: deleting a deleted snapshot succeeds at once.
            op = replace(op, done=True, progress=100, step="already removed")
            steps = []
        try:
            async with self._admitting_op(op):
                await self.store.write(*also.steps, *steps, self.store.w_insert_operation(op))
                also.committed()
                if not op.done:
                    self._start(op)
        except Duplicate as exc:
            return await self._duplicate(exc, request_id, OperationType.DELETE, snap.vm_id, snap.id)
        return op

    async def undefine_vm(
        self, request_id: str, vm_id: str, *, delete_snapshots: bool
    ) -> tuple[bool, list[OperationRecord]]:
        """One pass of UndefineVM: (undefined now, the delete operations it started).

        Level-triggered and idempotent on ``request_id``: each pass starts a delete
        for every snapshot of the VM that is not REMOVED yet (request ids derived
        from ``request_id``, so a retry finds the same operations), and undefines
        the VM on its agent once every one is done. Nothing is deleted when the VM
        is not STOPPED (it could not be undefined after). Once undefined, an
        UNDEFINE_VM operation is recorded done: a later pass answers from it.
        """
        digest = _request_digest({"delete_snapshots": delete_snapshots})
        async with self._admit(vm_id):
            finished = await self._replay(request_id, OperationType.UNDEFINE_VM, vm_id, "", digest)
            if finished is not None:
                return True, await self._operations(finished.params.get("deletes", []))
            snaps = await self._all_snapshots(vm_id)
            if not delete_snapshots and any(
                [
                    await self.store.read(
                        self.store.operation_by_request, _derived(request_id, s.id)
                    )
                    for s in snaps
                ]
            ):
                # An earlier call with this request_id deleted snapshots.
                raise request_id_reused(request_id, f" (UNDEFINE_VM on VM {vm_id})")
            left = [s for s in snaps if s.state is not SnapshotState.REMOVED]
            if not delete_snapshots:
                live = [s for s in left if s.state is not SnapshotState.ERROR]
                if live:
                    shown = ", ".join(f"{s.name} ({s.id}, {s.state.name})" for s in live[:5])
                    raise FailedPrecondition(
                        f"VM {vm_id} has {len(live)} live snapshots: {shown}; delete them "
                        "first, or undefine with delete_snapshots (--delete-snapshots)",
                        reason=Reason.VM_HAS_SNAPSHOTS,
                    )
                left = []  # ERROR snapshots hold nothing: they stay in the catalog
            agent_entry, vm = await self.registry.find_vm(vm_id)
            if vm.state is not VMState.STOPPED:
                raise FailedPrecondition(
                    f"VM {vm_id} is {vm.state.name}; undefining needs it STOPPED: stop it "
                    "first (StopVM); nothing was deleted",
                    reason=Reason.VM_NOT_STOPPED,
                )
            for snap in left:
                try:
                    await self._delete(_derived(request_id, snap.id), snap)
                except Aborted:
                    break  # the VM's queue is full: the next pass starts the rest
            started = {
                s.id: op
                for s in snaps
                if (
                    op := await self.store.read(
                        self.store.operation_by_request, _derived(request_id, s.id)
                    )
                )
            }
            ops = list(started.values())
            failed = [op for op in ops if op.done and op.error is not None]
            if failed:
                cause = failed[0].error
                raise FailedPrecondition(
                    f"deleting snapshot {failed[0].vm_snapshot_id} of VM {vm_id} failed "
                    f"({cause.message if cause else ''}); the VM stays defined: fix that and "
                    "undefine it with a new request_id",
                    reason=Reason.VM_HAS_SNAPSHOTS,
                )
            if any(not op.done for op in ops) or any(s.id not in started for s in left):
                return False, ops
            await self.registry.agent(agent_entry.name).undefine_vm(vm_id)
            project: str | None = await self.store.read(self.store.vm_project, vm_id)
            record = replace(
                self._new_op(
                    OperationType.UNDEFINE_VM,
                    request_id,
                    vm_id,
                    "",
                    {},
                    project=project or "",
                ),
                done=True,
                progress=100,
                step="undefined",
                params={"deletes": [op.id for op in ops], "request": digest},
            )
            await self.store.write(
                self.store.w_insert_operation(record), self.store.w_forget_vm_project(vm_id)
            )
            log.info("VM undefined", extra={"fields": {"vm": vm_id, "deleted": len(ops)}})
            return True, ops

    async def _all_snapshots(self, vm_id: str) -> list[Snapshot]:
        out: list[Snapshot] = []
        after = 0
        while True:
            page = await self.store.read(self.store.list_snapshots, vm_id, after, 500, True)
            out += [s for _, s in page]
            if len(page) < 500:
                return out
            after = page[-1][0]

    async def _operations(self, ids: list[str]) -> list[OperationRecord]:
        return [op for i in ids if (op := await self.store.read(self.store.get_operation, i))]

    async def cancel_operation(self, operation_id: str) -> OperationRecord:
        """Cancel an operation (docs/design.md, "Live events, cancel and traces"): a queued one
        is dropped now; a running take or revert is asked to stop, checked by its work
        at its next step (a compare-and-set in the catalog, any replica)."""
        op = await self.get_operation(operation_id)
        if op.done:
            raise self._finished(op)
        snap = None
        if op.type is OperationType.CREATE:
            snap = await self.store.read(self.store.get_snapshot, op.vm_snapshot_id)
            if snap is not None and snap.state is not SnapshotState.ALLOCATED:
                snap = None  # started: not droppable, the step check below agrees
        error = error_info(cancelled(" before it started; nothing was done"))
        try:
            dropped = await self.store.write(self.store.w_drop_queued(op.id, error, snap))
        except StaleMove:
            dropped = False  # the take moved its snapshot first: it runs
        if dropped:
            log.info("queued operation cancelled", extra={"fields": {"operation": op.id}})
            return await self.get_operation(op.id)
        if op.type not in (OperationType.CREATE, OperationType.REVERT):
            raise FailedPrecondition(
                f"operation {op.id} is a {op.type.name.lower()} that has started; its "
                "objects may be half gone, so it is finished, not cancelled: follow it "
                f"with `vmsnap operations show {op.id}`",
                reason=Reason.OPERATION_NOT_CANCELLABLE,
            )
        if not await self.store.write(self.store.w_request_cancel(op.id)):
            raise self._finished(await self.get_operation(op.id))
        log.info("cancel requested", extra={"fields": {"operation": op.id}})
        return await self.get_operation(op.id)

    @staticmethod
    def _finished(op: OperationRecord) -> FailedPrecondition:
        how = f"failed: {op.error.message}" if op.error is not None else "succeeded"
        return FailedPrecondition(
            f"operation {op.id} is finished already ({how}); there is nothing to cancel",
            reason=Reason.OPERATION_FINISHED,
        )

    async def check_may_start(self, vm_id: str) -> None:
        """StartVM while a revert of the VM is unfinished is refused (ABORTED,
        VM_BUSY): the revert stopped the VM to move its disks, and none is moved
        under a running guest. The revert checks the VM again before its first disk
        moves, for a start that got past this check or went to the agent directly
        (docs/design.md, "No disk is reverted under a running guest")."""
        op = await self.store.read(self.store.open_revert, vm_id)
        if op is not None:
            raise Aborted(
                f"VM {vm_id} is being reverted (operation {op.id}, {op.step or 'queued'}) "
                "and stays stopped until the revert ends; start it once the revert ends "
                f"(vmsnap operations show {op.id})",
                reason=Reason.VM_BUSY,
            )

    # --- freezes for third-party tools (docs/design.md, "Freeze API") ------------

    async def _check_not_frozen(self, vm_id: str) -> None:
        """A take, revert or delete while a caller's freeze holds the VM is refused,
        not queued: the freeze may be renewed for as long as its caller wants."""
        op = await self.store.read(self.store.open_freeze, vm_id)
        if op is not None:
            raise frozen_refusal(vm_id, op)

    async def freeze_vm(
        self,
        request_id: str,
        vm_id: str,
        lease: float,
        policy: QuiescePolicy,
        *,
        project: str = "",
    ) -> FreezeState:
        """FreezeVM: journal a FREEZE operation holding the VM's lease, freeze, and
        start holding it (until ThawVM or the lease lapses)."""
        api = self.executor.freeze_api
        async with self._admit(vm_id):
            existing = await self.store.read(self.store.operation_by_request, request_id)
            if existing is not None:
                return api.replay(existing, vm_id)
            agent_name, method = await api.check_vm(vm_id, policy)
            # The catalog says what is open (admission commits under this lock); a
            # finished operation whose task is still releasing the VM's lease here is
            # no obstacle: the lease goes to the freeze in its commit (the old task's
            # release carries the old fencing token and removes nothing).
            await api.refuse_if_busy(vm_id)
            op = self._new_op(
                OperationType.FREEZE,
                request_id,
                vm_id,
                "",
                {"lease_seconds": lease, "quiesce": policy.name},
                project=project,
            )
            op = replace(op, journal={"token": api.new_token(op.id), "agent": agent_name})
            try:
                async with self._admitting_op(op):
                    # Nothing open on the VM (across replicas: the catalog counts) and
                    # its lease, in the commit that journals the freeze.
                    fence = await self.store.write(
                        self.store.w_admit(vm_id, max_open=1, max_live=None),
                        self.store.w_insert_operation(op),
                        self.store.w_acquire_lease(
                            vm_id, self.owner, op.id, self.settings.lease_seconds
                        ),
                    )
                    if not fence:
                        busy = Aborted(
                            f"another replica runs an operation on VM {vm_id}; retry when it "
                            "is done",
                            reason=Reason.VM_BUSY,
                        )
                        await self.store.write(
                            self.store.w_finish(op.id, error_info(busy), "not frozen")
                        )
                        raise busy
                    try:
                        state = await api.quiesce(op, agent_name, method, lease, policy)
                    finally:
                        # Holding (or, when the freeze failed, releasing) the lease.
                        self._start(op, fence=int(fence))
            except Duplicate:
                existing = await self.store.read(self.store.operation_by_request, request_id)
                if existing is None:
                    raise
                return api.replay(existing, vm_id)
            return state

    # --- adopting array snapshots made elsewhere (docs/design.md, "Adopt") --------

    async def adopt_snapshot(
        self,
        request_id: str,
        vm_id: str,
        set_id: str,
        name: str,
        description: str,
        *,
        project: str = "",
    ) -> Snapshot:
        """AdoptSnapshot: a READY snapshot of a discovered set, recorded with a done
        ADOPT operation in one commit (nothing runs on any array)."""
        async with self._admit(vm_id):
            existing = await self._replay(request_id, OperationType.ADOPT, vm_id, name)
            if existing is not None:
                return await self._snapshot(existing.vm_snapshot_id)
            await self._check_not_frozen(vm_id)
            if await self.store.read(self.store.find_by_name, vm_id, name) is not None:
                raise AlreadyExists(
                    f"VM {vm_id} already has a snapshot named {name!r}; choose another name",
                    reason=Reason.NAME_IN_USE,
                )
            snap, op = await self.adopter.prepare(
                request_id, vm_id, set_id, name, description, self.owner
            )
            # The VM's project (issue 12), as for a snapshot the host took.
            snap, op = replace(snap, project=project), replace(op, project=project)
            try:
                # The live-snapshot bound is checked again by the catalog (replicas).
                await self.store.write(
                    self.store.w_admit(
                        vm_id,
                        max_open=1 + self.settings.queue_bound,
                        max_live=self.settings.max_snapshots_per_vm,
                    ),
                    self.store.w_create(snap, op),
                )
            except Duplicate as exc:
                existing = await self._duplicate(exc, request_id, OperationType.ADOPT, vm_id, name)
                return await self._snapshot(existing.vm_snapshot_id)
            log.info(
                "snapshot adopted",
                extra={"fields": {"vm": vm_id, "snapshot": snap.id, "set": set_id}},
            )
            return await self._snapshot(snap.id)

    async def renew_freeze(self, token: str, lease: float) -> datetime:
        return await self.executor.freeze_api.renew(token, lease)

    async def thaw_vm(self, token: str) -> float:
        frozen = await self.executor.freeze_api.thaw(token)
        # The freeze's task gives the VM's queue back when it ends: wait for that
        # (briefly), so a take sent right after ThawVM answered is not refused.
        task = self._tasks.get(token.partition(".")[0])
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout=2.0)
        return frozen

    # --- reads --------------------------------------------------------------------

    async def _snapshot(self, snapshot_id: str) -> Snapshot:
        snap = await self.store.read(self.store.get_snapshot, snapshot_id)
        if snap is None:
            raise snapshot_not_found(snapshot_id)
        return snap

    async def get_snapshot(self, snapshot_id: str) -> Snapshot:
        return await self._snapshot(snapshot_id)

    async def get_operation(self, operation_id: str) -> OperationRecord:
        op = await self.store.read(self.store.get_operation, operation_id)
        if op is None:
            raise operation_not_found(operation_id)
        return op

    @property
    def stopping(self) -> bool:
        """The host began to stop (:meth:`begin_stop`)."""
        return self._stopping.is_set()

    async def begin_stop(self) -> None:
        """The host begins to stop: every wait answers now with the operation as it
        stands, and every WatchOperations stream ends UNAVAILABLE (watch again with
        ``since``). Calls that only wait would otherwise hold the server's graceful
        stop for its whole grace period, and the supervisor would kill the host
        (docs/design.md, "Stopping: calls that wait end at once"). The operations
        themselves go on until :meth:`close`."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
        self.events.end_all(
            Unavailable(
                "this host is stopping; watch again (another replica, or this one once it "
                "is back) with `since` set to the last update_time received",
                reason=Reason.UNAVAILABLE,
            )
        )
        await self._notify()

    async def wait_operation(self, operation_id: str, timeout: float) -> OperationRecord:
        """Until the operation is done or ``timeout`` passed, whichever replica runs
        it: one that runs here wakes the waiter; any other is polled in the catalog
        (every ``_POLL`` seconds: a bounded load, one indexed read per waiter). When
        the host begins to stop, at once: the operation as it stands."""
        return (await self.wait_finished(operation_id, timeout)).operation

    async def wait_finished(self, operation_id: str, timeout: float) -> Finished:
        """:meth:`wait_operation`, with the operation's snapshot when the work that
        finished it here read both in its last transaction (a take that ended READY:
        no read after it; docs/design.md, "A create's answer from its last write").
        ``snapshot`` None: not known, read it."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while True:
            task = self._tasks.get(operation_id)
            left = give_up - loop.time()
            if task is not None and left > 0 and not self.stopping:
                # Run here: wait for its own end, not for every operation's (no herd
                # of waiters re-reading the catalog at each end), then read it once.
                # Re-read at least every second all the same.
                stopped: asyncio.Future[Any] = self._stop_signal(loop)
                await asyncio.wait(
                    {task, stopped},
                    timeout=min(left, 1.0),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if task.done() and not task.cancelled() and task.exception() is None:
                    finished = task.result()
                    if isinstance(finished, Finished) and finished.operation.done:
                        return finished
            op = await self.get_operation(operation_id)
            left = give_up - loop.time()
            if op.done or left <= 0 or self.stopping:
                return Finished(op, None)
            if operation_id in self._tasks:
                continue
            # Not run here (another replica runs it, or the reconciler finishes it):
            # wake on any change here, or re-read the catalog every _POLL seconds.
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(left, _POLL))

    def _stop_signal(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        stopped = self._stopped
        if stopped is None or stopped.get_loop() is not loop:
            stopped = self._stopped = loop.create_future()
            if self._stopping.is_set():
                stopped.set_result(None)
        return stopped

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- queueing and running -----------------------------------------------------

    @contextlib.asynccontextmanager
    async def _admit(self, vm_id: str) -> AsyncIterator[None]:
        # Checks and insert under one lock per VM: two creates with the same name
        # (or the same request id) cannot both pass the checks.
        # A lock lives while someone holds or waits for it: every VM id a caller
        # names (existing or not) must not stay in memory (issue 12, bounded input).
        lock = self._admission.setdefault(vm_id, asyncio.Lock())
        self._admission_users[vm_id] = self._admission_users.get(vm_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._admission_users[vm_id] -= 1
            if not self._admission_users[vm_id]:
                del self._admission_users[vm_id]
                del self._admission[vm_id]

    async def _replay(
        self,
        request_id: str,
        kind: OperationType,
        vm_id: str,
        target: str,
        digest: str = "",
        *,
        seen: Callable[[OperationRecord], None] | None = None,
    ) -> OperationRecord | None:
        """The operation of an earlier request with this request_id, when it was the
        same request; ALREADY_EXISTS when it was another (another type, target or
        arguments: ``digest`` against the one kept, when the first request kept one).
        ``seen`` is told of that operation first (it may refuse it)."""
        op = await self.store.read(self.store.operation_by_request, request_id)
        if op is None:
            return None
        if seen is not None:
            seen(op)
        same_target = op.vm_snapshot_id == target or op.params.get("name") == target
        kept = op.params.get("request", "")
        if op.type is not kind or op.vm_id != vm_id or not same_target:
            raise request_id_reused(request_id, f" ({op.type.name} on VM {op.vm_id})")
        if kept and digest and kept != digest:
            raise request_id_reused(request_id, f" ({op.type.name} with other arguments)")
        return op

    def _admit_step(self, vm_id: str, max_live: int | None = None) -> Step:
        return self.store.w_admit(vm_id, max_open=1 + self.settings.queue_bound, max_live=max_live)

    async def _duplicate(
        self,
        exc: Duplicate,
        request_id: str,
        kind: OperationType,
        vm_id: str,
        target: str,
        *,
        seen: Callable[[OperationRecord], None] | None = None,
    ) -> OperationRecord:
        """The catalog refused an insert another request (on this replica or another)
        made first: the same request_id is a retry, else the name is taken."""
        existing = await self._replay(request_id, kind, vm_id, target, seen=seen)
        if existing is not None:
            return existing
        if exc.what == "name":
            raise AlreadyExists(
                f"VM {vm_id} already has a snapshot named {target!r}; choose another name "
                "or delete that snapshot",
                reason=Reason.NAME_IN_USE,
            ) from None
        raise exc

    def _check_queue(self, vm_id: str) -> None:
        # A third party's freeze is refused by the admission's transaction
        # (Store.w_admit), across replicas: no read of it here.
        queue = self._queues.get(vm_id)
        if queue is not None and queue.admitted >= 1 + self.settings.queue_bound:
            raise Aborted(
                f"VM {vm_id} already has {queue.admitted} operations running or queued (the "
                f"bound is 1 running + {self.settings.queue_bound} waiting); retry when they "
                "finish",
                reason=Reason.VM_QUEUE_FULL,
            )

    def _new_op(
        self,
        kind: OperationType,
        request_id: str,
        vm_id: str,
        snapshot_id: str,
        params: dict[str, object],
        *,
        project: str = "",
    ) -> OperationRecord:
        return OperationRecord(
            id=uuid.uuid4().hex,
            type=kind,
            vm_id=vm_id,
            vm_snapshot_id=snapshot_id,
            request_id=request_id,
            step="queued",
            params=params,
            owner=self.owner,
            project=project,
        )

    def _start(
        self,
        op: OperationRecord,
        *,
        fence: int = 0,
        resume: bool = False,
        prepared: Prepared | None = None,
    ) -> asyncio.Task[Finished | None]:
        queue = self._queues.setdefault(op.vm_id, _VMQueue(asyncio.Lock()))
        metrics.QUEUE_DEPTH.observe(queue.admitted)
        queue.admitted += 1
        task = asyncio.create_task(self._run(op, queue, fence, resume, prepared))
        self._tasks[op.id] = task
        return task

    def resume(self, op: OperationRecord) -> asyncio.Task[Finished | None] | None:
        """Resolve an unfinished operation found on start or left open (a take is
        rolled back, a revert settled on one side, a delete retried)."""
        if op.id in self._tasks or op.id in self._admitting:
            return None
        return self._start(op, resume=True)

    @contextlib.asynccontextmanager
    async def _admitting_op(self, op: OperationRecord) -> AsyncIterator[None]:
        """Around the commit of a new operation and its start: the record is visible
        to recovery before the task exists (docs/design.md, "Admission")."""
        self._admitting.add(op.id)
        try:
            yield
        finally:
            self._admitting.discard(op.id)

    @property
    def running(self) -> frozenset[str]:
        """Ids of the operations this process is running, has queued, or is admitting."""
        return frozenset(self._tasks) | frozenset(self._admitting)

    async def _run(
        self,
        op: OperationRecord,
        queue: _VMQueue,
        fence: int,
        resume: bool,
        prepared: Prepared | None,
    ) -> Finished | None:
        """The operation's work, behind its VM's queue; what its last write left when
        the work returns it (the task's result: its waiters' answer)."""
        started = time.monotonic()
        finished: Finished | None = None
        try:
            if resume:
                # Not behind this replica's queue: what it resolves may be what the
                # queue waits for (a VM's lease stays with its operation until that is
                # finished, store.w_acquire_lease). The lease keeps it apart from the rest.
                finished = await self._run_owned(op, fence, resume, prepared)
            else:
                async with queue.lock:
                    # Started at once with the lease its admission took (``fence``): no
                    # cancel can have dropped it (were one to, the take's first
                    # compare-and-set from ALLOCATED refuses it).
                    if fence or not await self._dropped(op):
                        finished = await self._run_owned(op, fence, resume, prepared)
                    elif fence:
                        # Cancelled before it started, with the lease its admission
                        # took: give the VM back at once.
                        with contextlib.suppress(Exception):
                            await self.store.write(
                                self.store.w_release_lease(op.vm_id, self.owner, fence)
                            )
            await self._count_end(op, time.monotonic() - started)
        finally:
            queue.admitted -= 1
            self._tasks.pop(op.id, None)
            await self._notify()
        return finished

    async def _count_end(self, op: OperationRecord, seconds: float) -> None:
        """Metrics of an operation that ran to its end (or was left open on purpose);
        a cancelled one (the host stopping) is resumed later and counted then."""
        ended = self.store.ended_here(op.id) or await self.store.read(
            self.store.operation_outcome, op.id
        )
        outcome = "open"
        if ended is not None and ended[0]:
            outcome = "failed" if ended[1] else "succeeded"
        kind = op.type.name.lower()
        child(metrics.OPERATIONS, kind, outcome).inc()
        child(metrics.OPERATION_SECONDS, kind).observe(seconds)

    async def _dropped(self, op: OperationRecord) -> bool:
        """Whether a queued operation was finished before it started (cancelled). An
        unreachable catalog says no: the work's own first write meets it and leaves
        the operation open, as before."""
        try:
            return bool((await self.store.read(self.store.operations_done, [op.id])).get(op.id))
        except VMSnapError:
            return False

    def queue_depths(self) -> list[int]:
        """Operations running or waiting, per VM that has any (for the metrics)."""
        return [q.admitted for q in self._queues.values() if q.admitted]

    async def _run_owned(
        self, op: OperationRecord, fence: int, resume: bool, prepared: Prepared | None = None
    ) -> Finished | None:
        """Run holding the VM's lease (``fence``: taken already at admission;
        ``prepared``: a take's first write, committed with that admission); what the
        work's last write left, when it returns it (Executor.run)."""
        ttl = self.settings.lease_seconds
        while not fence:
            fence = await self.store.write(
                self.store.w_acquire_lease(op.vm_id, self.owner, op.id, ttl)
            )
            if not fence:
                if await self._dropped(op):
                    return None
                # Another operation (here or on another replica) holds the VM: wait
                # until it is finished, or taken over and resolved.
                await asyncio.sleep(min(_LEASE_RETRY, ttl / 3))
        work = asyncio.current_task()
        assert work is not None
        # The write that finishes a take releases the lease too (store.fence): a
        # take does nothing after it. (A revert and a delete drop kept states and
        # owed objects after theirs, under the lease.)
        end = LeaseEnd(op.id if op.type is OperationType.CREATE and not resume else "")
        renew = Renewer(ttl / 3, functools.partial(self._renew_lease, op, fence, ttl, work, end))
        finished: Finished | None = None
        try:
            # Every catalog write of this work (and of the tasks it starts) checks the
            # lease's token first: after a takeover, nothing of it lands.
            with fenced(Fence(op.vm_id, self.owner, fence, end)), operation_span(op, resume=resume):
                finished = await self.executor.run(op, resume=resume, prepared=prepared)
        except VMSnapError as exc:
            # The catalog unreachable (nothing is done without its journal entry), or
            # a peer down while the executor ended the operation: it stays open and is
            # resolved on a later reconcile tick (here, or by another replica).
            log.error(
                "operation left open; resolved on a later tick",
                extra={"fields": {"operation": op.id, "error": exc.message}},
            )
        finally:
            await renew.stop()
            if not end.released:
                with contextlib.suppress(Exception):
                    await self.store.write(self.store.w_release_lease(op.vm_id, self.owner, fence))
        # Waiters need not wait for the lease to be released.
        await self._notify()
        return finished

    async def _renew_lease(
        self,
        op: OperationRecord,
        fence: int,
        ttl: float,
        work: asyncio.Task[object],
        end: LeaseEnd,
    ) -> bool:
        """One renewal of the VM's lease (a :class:`Renewer` calls it every ttl/3);
        whether to go on."""
        if end.released:
            return False  # finished: the lease went with the operation's last write
        try:
            held = await self.store.write(
                self.store.w_renew_lease(op.vm_id, self.owner, fence, ttl)
            )
        except Exception:
            log.exception("lease renewal failed", extra={"fields": {"vm": op.vm_id}})
            return True
        if not held and end.released:
            return False  # the last write released it meanwhile
        if not held:
            # Another owner took the VM (our lease ran out): stop this work. The
            # executor thaws on the way out; the new owner resolves the operation.
            log.error(
                "VM lease lost; stopping the operation",
                extra={"fields": {"vm": op.vm_id, "operation": op.id}},
            )
            work.cancel()
            return False
        return True

    async def idle(self) -> None:
        """Wait until every operation started so far has ended (or left itself open)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def close(self) -> None:
        await self.events.close()
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(BaseException):
                await task
