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
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace

from vmsnap_host import metrics
from vmsnap_host.config import Settings
from vmsnap_host.decisions import DecisionCache
from vmsnap_host.executor import Executor
from vmsnap_host.model import (
    GroupKind,
    OperationRecord,
    OperationType,
    QuiescePolicy,
    Snapshot,
    SnapshotState,
)
from vmsnap_host.planner import plan_take
from vmsnap_host.registry import Registry
from vmsnap_host.store import Store
from vmsnap_host.store.fence import Fence, fenced
from vmsnap_host.store.store import Duplicate
from vmsnap_host.store.writer import Step
from vmsnap_sdk import VM, Capability, VMState
from vmsnap_sdk.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    Reason,
    ResourceExhausted,
    VMSnapError,
)

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
        self._queues: dict[str, _VMQueue] = {}
        self._admission: dict[str, asyncio.Lock] = {}
        #: The task of every operation this process runs or has queued, by id.
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Operations whose record is being committed and whose task is not started
        #: yet: recovery must not take them for abandoned ones in that window.
        self._admitting: set[str] = set()
        self._changed = asyncio.Condition()

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
        policy_id: str = "",
        policy_name: str = "",
    ) -> OperationRecord:
        """``policy_id``/``policy_name``: the snapshot policy making it (its retention
        deletes only snapshots recorded with its id)."""
        async with self._admit(vm_id):
            existing = self._replay(request_id, OperationType.CREATE, vm_id, name)
            if existing is not None:
                return existing
            self._check_queue(vm_id)
            agent_entry, vm = await self.registry.find_vm(vm_id)
            if vm.state not in (VMState.RUNNING, VMState.STOPPED):
                raise FailedPrecondition(
                    f"VM {vm_id} is {vm.state.name}; snapshots need it RUNNING or STOPPED: "
                    "start or stop it first",
                    reason=Reason.VM_STATE,
                )
            if include_memory and vm.state is not VMState.RUNNING:
                raise FailedPrecondition(
                    f"VM {vm_id} is {vm.state.name}; a memory snapshot needs it RUNNING: start "
                    "it, or take a disk-only snapshot (include_memory=false)",
                    reason=Reason.VM_STATE,
                )
            if self.store.find_by_name(vm_id, name) is not None:
                raise AlreadyExists(
                    f"VM {vm_id} already has a snapshot named {name!r}; choose another name "
                    "or delete that snapshot",
                    reason=Reason.NAME_IN_USE,
                )
            live = self.store.count_live(vm_id)
            if live >= self.settings.max_snapshots_per_vm:
                raise ResourceExhausted(
                    f"VM {vm_id} has {live} snapshots, the maximum is "
                    f"{self.settings.max_snapshots_per_vm}; delete old ones first (or raise "
                    "host.max_snapshots_per_vm)",
                    reason=Reason.TOO_MANY_SNAPSHOTS,
                )
            plan = await plan_take(
                vm,
                self.registry.drivers(),
                agent_entry,
                self.store.volume_owners([v.locator for v in vm.volumes]),
                include_memory=include_memory,
                options=parameters,
                can_handle_timeout=self.settings.can_handle_timeout_seconds,
                cache=self.decisions,
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
                policy_id=policy_id,
                policy_name=policy_name,
            )
            op = self._new_op(OperationType.CREATE, request_id, vm_id, snap.id, {"name": name})
            # Journal before any side effect: the snapshot and its operation are durable
            # before the VM is touched. The bounds and the uniqueness rules are checked
            # again in that transaction, by the catalog: other replicas admit too.
            steps = [
                self._admit_step(vm_id, max_live=self.settings.max_snapshots_per_vm),
                self.store.w_create(snap, op),
            ]
            queue = self._queues.get(vm_id)
            idle = queue is None or queue.admitted == 0
            if idle:
                # Nothing runs or waits on this VM here: take its lease in the same
                # commit (one fsync less on the path of every create).
                steps.append(
                    self.store.w_acquire_lease(
                        vm_id, self.owner, op.id, self.settings.lease_seconds
                    )
                )
            try:
                async with self._admitting_op(op):
                    fence = await self.store.write(*steps)
                    # Started at once, the take reuses this description of the VM (one
                    # DescribeVM per take); a take that waits behind another operation
                    # describes the VM again when it runs (that operation may change it).
                    self._start(op, fence=int(fence or 0) if idle else 0, vm=vm if idle else None)
            except Duplicate as exc:
                return self._duplicate(exc, request_id, OperationType.CREATE, vm_id, name)
            return op

    async def revert_snapshot(
        self, request_id: str, snapshot_id: str, stop_vm: bool
    ) -> OperationRecord:
        snap = self._snapshot(snapshot_id)
        async with self._admit(snap.vm_id):
            existing = self._replay(request_id, OperationType.REVERT, snap.vm_id, snapshot_id)
            if existing is not None:
                return existing
            if snap.state is not SnapshotState.READY:
                raise FailedPrecondition(
                    f"snapshot {snapshot_id} is {snap.state.name}; only a READY snapshot can "
                    "be reverted to",
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
                OperationType.REVERT, request_id, snap.vm_id, snapshot_id, {"stop_vm": stop_vm}
            )
            try:
                async with self._admitting_op(op):
                    await self.store.write(
                        self._admit_step(snap.vm_id), self.store.w_insert_operation(op)
                    )
                    self._start(op)
            except Duplicate as exc:
                return self._duplicate(exc, request_id, OperationType.REVERT, snap.vm_id, snapshot_id)
            return op

    async def delete_snapshot(self, request_id: str, snapshot_id: str) -> OperationRecord:
        snap = self._snapshot(snapshot_id)
        async with self._admit(snap.vm_id):
            return await self._delete(request_id, snap)

    async def _delete(self, request_id: str, snap: Snapshot) -> OperationRecord:
        """Start a delete (or replay it); the caller holds the VM's admission lock."""
        existing = self._replay(request_id, OperationType.DELETE, snap.vm_id, snap.id)
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
        op = self._new_op(OperationType.DELETE, request_id, snap.vm_id, snap.id, {})
        steps = [self._admit_step(snap.vm_id)]
        if snap.state is SnapshotState.REMOVED:
            # Idempotent: deleting a deleted snapshot succeeds at once.
            op = replace(op, done=True, progress=100, step="already removed")
            steps = []
        try:
            async with self._admitting_op(op):
                await self.store.write(*steps, self.store.w_insert_operation(op))
                if not op.done:
                    self._start(op)
        except Duplicate as exc:
            return self._duplicate(exc, request_id, OperationType.DELETE, snap.vm_id, snap.id)
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
        async with self._admit(vm_id):
            finished = self._replay(request_id, OperationType.UNDEFINE_VM, vm_id, "")
            if finished is not None:
                return True, self._operations(finished.params.get("deletes", []))
            snaps = self._all_snapshots(vm_id)
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
                if (op := self.store.operation_by_request(_derived(request_id, s.id)))
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
            record = replace(
                self._new_op(OperationType.UNDEFINE_VM, request_id, vm_id, "", {}),
                done=True,
                progress=100,
                step="undefined",
                params={"deletes": [op.id for op in ops]},
            )
            await self.store.write(self.store.w_insert_operation(record))
            log.info("VM undefined", extra={"fields": {"vm": vm_id, "deleted": len(ops)}})
            return True, ops

    def _all_snapshots(self, vm_id: str) -> list[Snapshot]:
        out: list[Snapshot] = []
        after = 0
        while True:
            page = self.store.list_snapshots(vm_id, after, 500, True)
            out += [s for _, s in page]
            if len(page) < 500:
                return out
            after = page[-1][0]

    def _operations(self, ids: list[str]) -> list[OperationRecord]:
        return [op for i in ids if (op := self.store.get_operation(i)) is not None]

    # --- reads --------------------------------------------------------------------

    def _snapshot(self, snapshot_id: str) -> Snapshot:
        snap = self.store.get_snapshot(snapshot_id)
        if snap is None:
            raise NotFound(
                f"VM snapshot {snapshot_id} does not exist; list them with ListVMSnapshots",
                reason=Reason.SNAPSHOT_NOT_FOUND,
            )
        return snap

    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        return self._snapshot(snapshot_id)

    def get_operation(self, operation_id: str) -> OperationRecord:
        op = self.store.get_operation(operation_id)
        if op is None:
            raise NotFound(
                f"operation {operation_id} does not exist; list them with ListOperations",
                reason=Reason.OPERATION_NOT_FOUND,
            )
        return op

    async def wait_operation(self, operation_id: str, timeout: float) -> OperationRecord:
        """Until the operation is done or ``timeout`` passed, whichever replica runs
        it: one that runs here wakes the waiter; any other is polled in the catalog
        (every ``_POLL`` seconds: a bounded load, one indexed read per waiter)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while True:
            task = self._tasks.get(operation_id)
            left = give_up - loop.time()
            if task is not None and left > 0:
                # Run here: wait for its own end, not for every operation's (no herd
                # of waiters re-reading the catalog at each end), then read it once.
                # Re-read at least every second all the same.
                await asyncio.wait({task}, timeout=min(left, 1.0))
            op = self.get_operation(operation_id)
            left = give_up - loop.time()
            if op.done or left <= 0:
                return op
            if operation_id in self._tasks:
                continue
            # Not run here (another replica runs it, or the reconciler finishes it):
            # wake on any change here, or re-read the catalog every _POLL seconds.
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(left, _POLL))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- queueing and running -----------------------------------------------------

    @contextlib.asynccontextmanager
    async def _admit(self, vm_id: str) -> AsyncIterator[None]:
        # Checks and insert under one lock per VM: two creates with the same name
        # (or the same request id) cannot both pass the checks.
        lock = self._admission.setdefault(vm_id, asyncio.Lock())
        async with lock:
            yield

    def _replay(
        self, request_id: str, kind: OperationType, vm_id: str, target: str
    ) -> OperationRecord | None:
        op = self.store.operation_by_request(request_id)
        if op is None:
            return None
        same_target = op.vm_snapshot_id == target or op.params.get("name") == target
        if op.type is not kind or op.vm_id != vm_id or not same_target:
            raise AlreadyExists(
                f"request_id {request_id} was already used for another request "
                f"({op.type.name} on VM {op.vm_id}); use a new request_id",
                reason=Reason.REQUEST_ID_REUSED,
            )
        return op

    def _admit_step(self, vm_id: str, max_live: int | None = None) -> Step:
        return self.store.w_admit(vm_id, max_open=1 + self.settings.queue_bound, max_live=max_live)

    def _duplicate(
        self, exc: Duplicate, request_id: str, kind: OperationType, vm_id: str, target: str
    ) -> OperationRecord:
        """The catalog refused an insert another request (on this replica or another)
        made first: the same request_id is a retry, else the name is taken."""
        existing = self._replay(request_id, kind, vm_id, target)
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
        )

    def _start(
        self,
        op: OperationRecord,
        *,
        fence: int = 0,
        resume: bool = False,
        vm: VM | None = None,
    ) -> asyncio.Task[None]:
        queue = self._queues.setdefault(op.vm_id, _VMQueue(asyncio.Lock()))
        metrics.QUEUE_DEPTH.observe(queue.admitted)
        queue.admitted += 1
        task = asyncio.create_task(self._run(op, queue, fence, resume, vm))
        self._tasks[op.id] = task
        return task

    def resume(self, op: OperationRecord) -> asyncio.Task[None] | None:
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
        self, op: OperationRecord, queue: _VMQueue, fence: int, resume: bool, vm: VM | None
    ) -> None:
        started = time.monotonic()
        try:
            if resume:
                # Not behind this replica's queue: what it resolves may be what the
                # queue waits for (a VM's lease stays with its operation until that is
                # finished, store.w_acquire_lease). The lease keeps it apart from the rest.
                await self._run_owned(op, fence, resume, vm)
            else:
                async with queue.lock:
                    await self._run_owned(op, fence, resume, vm)
            self._count_end(op, time.monotonic() - started)
        finally:
            queue.admitted -= 1
            self._tasks.pop(op.id, None)
            await self._notify()

    def _count_end(self, op: OperationRecord, seconds: float) -> None:
        """Metrics of an operation that ran to its end (or was left open on purpose);
        a cancelled one (the host stopping) is resumed later and counted then."""
        record = self.store.get_operation(op.id)
        if record is None or not record.done:
            outcome = "open"
        else:
            outcome = "failed" if record.error is not None else "succeeded"
        kind = op.type.name.lower()
        metrics.OPERATIONS.labels(type=kind, outcome=outcome).inc()
        metrics.OPERATION_SECONDS.labels(type=kind).observe(seconds)

    def queue_depths(self) -> list[int]:
        """Operations running or waiting, per VM that has any (for the metrics)."""
        return [q.admitted for q in self._queues.values() if q.admitted]

    async def _run_owned(
        self, op: OperationRecord, fence: int, resume: bool, vm: VM | None = None
    ) -> None:
        """Run holding the VM's lease (``fence``: taken already at admission; ``vm``:
        the VM as admission described it, when the operation started at once)."""
        ttl = self.settings.lease_seconds
        while not fence:
            fence = await self.store.write(
                self.store.w_acquire_lease(op.vm_id, self.owner, op.id, ttl)
            )
            if not fence:
                # Another operation (here or on another replica) holds the VM: wait
                # until it is finished, or taken over and resolved.
                await asyncio.sleep(min(_LEASE_RETRY, ttl / 3))
        work = asyncio.current_task()
        assert work is not None
        renew = asyncio.create_task(self._renew_lease(op, fence, ttl, work))
        try:
            # Every catalog write of this work (and of the tasks it starts) checks the
            # lease's token first: after a takeover, nothing of it lands.
            with fenced(Fence(op.vm_id, self.owner, fence)):
                await self.executor.run(op, resume=resume, vm=vm)
        except VMSnapError as exc:
            # The catalog unreachable (nothing is done without its journal entry), or
            # a peer down while the executor ended the operation: it stays open and is
            # resolved on a later reconcile tick (here, or by another replica).
            log.error(
                "operation left open; resolved on a later tick",
                extra={"fields": {"operation": op.id, "error": exc.message}},
            )
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            with contextlib.suppress(Exception):
                await self.store.write(self.store.w_release_lease(op.vm_id, self.owner, fence))
        # Waiters need not wait for the lease to be released.
        await self._notify()

    async def _renew_lease(
        self, op: OperationRecord, fence: int, ttl: float, work: asyncio.Task[object]
    ) -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                held = await self.store.write(
                    self.store.w_renew_lease(op.vm_id, self.owner, fence, ttl)
                )
            except Exception:
                log.exception("lease renewal failed", extra={"fields": {"vm": op.vm_id}})
                continue
            if not held:
                # Another owner took the VM (our lease ran out): stop this work. The
                # executor thaws on the way out; the new owner resolves the operation.
                log.error(
                    "VM lease lost; stopping the operation",
                    extra={"fields": {"vm": op.vm_id, "operation": op.id}},
                )
                work.cancel()
                return

    async def idle(self) -> None:
        """Wait until every operation started so far has ended (or left itself open)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(BaseException):
                await task
