"""Take: quiesce → every group at once → thaw → check → READY, or compensate.

The steps (docs/design.md, "Take"): one durable write moves the snapshot
ALLOCATED → CREATING, records every planned group as owed a delete and the
volumes' owners, and journals the freeze method — all before any side effect.
Then quiesce under a lease (renewed), TakeVMSnapshot on every group in
parallel with deadlines inside the lease, thaw as soon as every group answered
(retried until confirmed or the lease surely ended), check every result
against the contract, poll results still post-processing (transient errors
retried until the post-processing timeout), and commit READY, current, no
owed deletes and the operation's end in one transaction. On any failure: thaw
first, then DeleteVMSnapshot(same id) on every planned group whatever it
answered, then ERROR with the cause — the operation finished in the same
transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NoReturn

from vmsnap_host import metrics
from vmsnap_host.config import Settings
from vmsnap_host.decisions import DecisionCache
from vmsnap_host.executor.cleanup import Cleanup
from vmsnap_host.executor.errors import (
    OperationFailed,
    as_error,
    cancelled,
    error_info,
    label,
    reworded,
)
from vmsnap_host.executor.freeze import Freeze, FreezeKeeper, choose_method, with_deadline
from vmsnap_host.executor.groups import GroupCalls
from vmsnap_host.model import GroupKind, OperationRecord, QuiescePolicy, Snapshot, SnapshotState
from vmsnap_host.planner import Plan, needs_freeze, plan_take
from vmsnap_host.registry import AgentEntry, Registry
from vmsnap_host.state import CancelRequested
from vmsnap_host.store import Store
from vmsnap_host.store.store import Finished, Started
from vmsnap_host.store.writer import Step
from vmsnap_sdk import (
    VM,
    Consistency,
    NativeSnapshotAtFreeze,
    QuiesceMethod,
    SnapshotResult,
    VMState,
)
from vmsnap_sdk.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Reason,
    TransientError,
    VMSnapError,
)

log = logging.getLogger("vmsnap.host.take")


@dataclass(frozen=True)
class Prepared:
    """A take's checks done and its first durable write built (Take.prepare). A take
    that starts at once has its admission insert its rows as ``started`` leaves them,
    with the VM's lease (one commit less on its path, and three statements;
    docs/design.md, "Take"); another writes ``started`` when it runs (Take.first_write)."""

    vm: VM
    #: The snapshot as CREATING, as the first write leaves it.
    snap: Snapshot
    method: QuiesceMethod | None
    started: Started
    #: When ``vm`` is the VM's last known description (a guess): its agent's fresh
    #: one, asked for while the admission committed. The take compares them before
    #: any side effect (Take._check_guess).
    fresh: asyncio.Future[tuple[AgentEntry, VM]] | None = None


class Take:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        settings: Settings,
        calls: GroupCalls,
        cleanup: Cleanup,
        freezes: FreezeKeeper,
        decisions: DecisionCache | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.calls = calls
        self.cleanup = cleanup
        self.freezes = freezes
        self.decisions = decisions

    def _quiesce_method(self, snap: Snapshot) -> QuiesceMethod:
        entry = self.registry.agent_entry(snap.agent)
        if snap.include_memory:
            # Memory with array disks: the only "freeze" is the pause with the RAM
            # saved (the planner checked that the agent offers it).
            offered_memory = bool(entry and entry.info and entry.info.memory_with_array_disks)
            if not offered_memory:
                raise FailedPrecondition(
                    f"agent {snap.agent} cannot pause the VM and save its memory while "
                    "storage drivers cut its disks; take a disk-only snapshot",
                    reason=Reason.MEMORY_NEEDS_HYPERVISOR,
                )
            return QuiesceMethod.PAUSE_AND_SAVE_MEMORY
        offered = (entry.info.quiesce_methods if entry and entry.info else frozenset()) or (
            frozenset(QuiesceMethod) - {QuiesceMethod.UNSPECIFIED}
        )
        native_only = all(g.kind is GroupKind.HYPERVISOR for g in snap.groups)
        return choose_method(snap.quiesce, offered, snap.agent, native_only=native_only)

    async def run(
        self, op: OperationRecord, snap: Snapshot, prepared: Prepared | None = None
    ) -> Finished | None:
        """Take a planned snapshot: READY in the catalog (the operation and snapshot
        as the READY write left them returned), or ERROR and OperationFailed raised.
        ``prepared``: the first write, committed with the admission (``snap`` is its
        CREATING snapshot); without it the VM is described and it is written now."""
        try:
            return await self._run(op, snap, prepared)
        except VMSnapError as exc:
            # Failed before any side effect (the VM's state, no quiesce method).
            await self.fail(op, snap, exc, list(snap.warnings))

    def prepare(
        self,
        op: OperationRecord,
        snap: Snapshot,
        vm: VM,
        *,
        fresh: asyncio.Future[tuple[AgentEntry, VM]] | None = None,
    ) -> Prepared:
        """The checks and the first durable write of a take of ``snap`` on ``vm`` (as
        just described, or last described: ``fresh``, see Prepared): CREATING
        (compare-and-set from ALLOCATED), every planned group owed a delete until
        READY, the volumes' owners, the freeze method (recovery thaws by operation
        id). Raises what makes the take fail before any side effect."""
        if vm.state not in (VMState.RUNNING, VMState.STOPPED):
            raise FailedPrecondition(
                f"VM {vm.id} is {vm.state.name} now; it must be RUNNING or STOPPED",
                reason=Reason.VM_STATE,
            )
        if snap.include_memory and vm.state is not VMState.RUNNING:
            raise FailedPrecondition(
                f"VM {vm.id} is {vm.state.name} now; a memory snapshot needs it RUNNING",
                reason=Reason.VM_STATE,
            )
        capabilities = {
            g.owner: self.registry.capabilities(g.owner)
            for g in snap.groups
            if g.kind is GroupKind.DRIVER
        }
        freeze_needed = needs_freeze(
            snap.groups, snap.quiesce, vm.state, capabilities, include_memory=snap.include_memory
        )
        method = self._quiesce_method(snap) if freeze_needed else None
        planned = list(snap.groups)
        owners = {
            volume.locator: g.owner
            for g in planned
            if g.kind is GroupKind.DRIVER
            for d in g.disks
            if (volume := vm.volume(d)) is not None
        }
        creating = replace(snap, state=SnapshotState.CREATING)
        return Prepared(
            vm=vm,
            snap=creating,
            method=method,
            fresh=fresh,
            started=Started(
                snapshot=creating,
                cleanup=tuple(planned),
                owners=owners,
                # One step for the freeze and the cut: the freeze token is not
                # journaled (recovery thaws by operation id; "Take", step 2).
                step=f"quiescing and taking {len(planned)} groups"
                if method is not None
                else f"taking {len(planned)} groups",
                progress=15 if method is not None else 30,
                journal={
                    "freeze_needed": freeze_needed,
                    "called": [g.owner for g in planned],
                    **({"quiesce_method": method.name} if method is not None else {}),
                },
            ),
        )

    def first_write(
        self, op: OperationRecord, prepared: Prepared, *, replanned: bool = False
    ) -> list[Step]:
        """``prepared.started`` as write steps on the existing rows: CREATING by a
        compare-and-set from ALLOCATED (from CREATING when ``replanned``: a new plan
        replaces the one written)."""
        started = prepared.started
        creating, planned = started.snapshot, list(started.cleanup)
        first = (
            [self.store.w_save(creating), self.store.w_set_cleanup(creating.id, planned)]
            if replanned
            else [
                self.store.w_move(
                    creating.id, SnapshotState.CREATING, snapshot=creating, cleanup=planned
                )
            ]
        )
        return [
            *first,
            self.store.w_set_owners(dict(started.owners)),
            self.store.w_journal(op.id, started.step, started.progress, **started.journal),
        ]

    async def _run(
        self, op: OperationRecord, snap: Snapshot, prepared: Prepared | None
    ) -> Finished | None:
        if prepared is None:
            vm = await with_deadline(
                self.registry.agent(snap.agent).describe_vm(snap.vm_id),
                self.settings.call_timeout_seconds,
                "DescribeVM",
            )
            entry = self.registry.agent_entry(snap.agent)
            if entry is not None and _disks(vm) != _planned_disks(snap):
                # Planned at admission on another set of disks (the VM changed since).
                snap = await self._replanned(snap, entry, vm)
            prepared = self.prepare(op, snap, vm)
            # One durable write before any side effect (see prepare).
            await self.store.write(*self.first_write(op, prepared))
        elif prepared.fresh is not None:
            try:
                prepared = await self._check_guess(op, prepared)
            except VMSnapError as exc:
                await self.fail(op, prepared.snap, exc, list(prepared.snap.warnings), called=False)
        vm, snap, method = prepared.vm, prepared.snap, prepared.method
        agent = self.registry.agent(snap.agent)
        warnings = list(snap.warnings)
        planned = list(snap.groups)

        # The agent's native snapshot is asked for in the Quiesce itself (one call,
        # as libvirt's quiesced snapshot): an agent that takes it inside the freeze
        # answers it there, and it is not asked for again (docs/design.md, "Freeze").
        native_group = next((g for g in planned if g.kind is GroupKind.HYPERVISOR), None)
        at_freeze = (
            NativeSnapshotAtFreeze(snap.id, tuple(native_group.disks))
            if native_group is not None
            and native_group.owner == snap.agent
            and not snap.include_memory
            and method not in (None, QuiesceMethod.PAUSE_AND_SAVE_MEMORY)
            else None
        )
        freeze: Freeze | None = None
        outcomes: list[SnapshotResult | BaseException] = []
        failure: VMSnapError | None = None
        thaw_error: VMSnapError | None = None
        try:
            if method is not None:
                freeze = await self.freezes.freeze(
                    agent,
                    snap.agent,
                    vm.id,
                    op.id,
                    snap.quiesce,
                    method,
                    native_snapshot=native_group is not None,
                    at_freeze=at_freeze,
                )
                if freeze.result.warning:
                    warnings.append(
                        f"quiesce: {freeze.result.warning} "
                        f"(achieved {freeze.result.consistency.name})"
                    )
                if freeze.problem is not None:
                    raise freeze.problem  # thawed below; its snapshot is owed a delete
            deadline = self.freezes.take_deadline(freeze)
            consistency = freeze.result.consistency if freeze else Consistency.CRASH
            taken = freeze.result.native_snapshot if freeze is not None else None
            outcomes = list(
                await asyncio.gather(
                    *(
                        self.calls.take(
                            g,
                            snap.id,
                            vm,
                            name=snap.name,
                            parameters=dict(snap.parameters),
                            include_memory=snap.include_memory,
                            quiesced=freeze is not None,
                            consistency=consistency,
                            deadline=deadline,
                            taken=taken if g is native_group else None,
                        )
                        for g in planned
                    ),
                    return_exceptions=True,
                )
            )
        except VMSnapError as exc:
            failure = exc
        finally:
            # Thaw first, whatever happened (even a cancellation): never frozen past
            # the take.
            if freeze is not None:
                thaw_error = await self.freezes.thaw(freeze)
        if freeze is not None:
            snap = replace(snap, freeze_start=freeze.started, freeze_seconds=freeze.frozen_seconds)
            if freeze.frozen_seconds is not None:
                metrics.FREEZE_SECONDS.observe(freeze.frozen_seconds)
        for group, outcome in zip(planned, outcomes, strict=False):
            if isinstance(outcome, BaseException) and failure is None:
                failure = as_error(outcome, label(group))
        if failure is None and thaw_error is not None:
            failure = thaw_error
        # A CancelOperation recorded while the groups were cut is not read here: the
        # READY write below refuses it when it commits (w_refuse_cancelled, whichever
        # replica recorded it) and the take is rolled back like a failure; the calls
        # in flight were let answer, so every object is known to the compensation.
        results = {
            g.owner: o
            for g, o in zip(planned, outcomes, strict=False)
            if isinstance(o, SnapshotResult)
        }
        groups = [g.with_result(results.get(g.owner)) for g in planned]
        snap = replace(snap, groups=tuple(groups))
        # How the freeze ended, journaled with the next write (None once written).
        thawed = {"thaw": freeze.ended} if freeze is not None else None
        if failure is not None:
            await self.fail(op, snap, failure, warnings, extra=self._thaw_steps(op, thawed))

        if not all(g.ready for g in snap.groups):
            # Post-processing goes on after the thaw: keep the results before polling.
            await self.store.write(*self._thaw_steps(op, thawed), self.store.w_save(snap))
            thawed = None
            try:
                snap = await self._await_ready(op, snap)
            except VMSnapError as exc:
                await self.fail(op, snap, exc, warnings)

        achieved = self._achieved(snap, freeze, vm.state, warnings)
        ready = replace(
            snap,
            state=SnapshotState.READY,
            consistency=achieved,
            warnings=tuple(dict.fromkeys(warnings)),
            current=True,
        )
        # READY and current, no owed deletes, the operation finished: one
        # transaction, a compare-and-set from CREATING, refused once a cancel was
        # recorded (checked when it commits, whichever replica recorded it). The
        # thaw is journaled by the finishing UPDATE itself (w_finish's journal).
        try:
            finished: Finished | None = await self.store.write(
                self.store.w_finish(op.id, None, "done", journal=thawed, refuse_cancelled=True),
                # The parent: the VM's current snapshot, read in this transaction.
                self.store.w_move(
                    snap.id,
                    SnapshotState.READY,
                    snapshot=ready,
                    cleanup=[],
                    current=True,
                    parent_from_current=True,
                ),
                # Both as committed, for the waiters' answer (no read after it).
                self.store.w_read_finished(op.id, ready),
            )
        except CancelRequested:
            await self.fail(op, snap, cancelled(), warnings, extra=self._thaw_steps(op, thawed))
        return finished

    async def _check_guess(self, op: OperationRecord, prepared: Prepared) -> Prepared:
        """Admission planned on the VM's last known description; its fresh one, asked
        for while the admission committed, decides before any side effect: the same,
        and the take goes on as prepared; changed (state, disks, agent), and the take
        is planned again on it and that plan written first (docs/design.md,
        "Admission on the last description")."""
        assert prepared.fresh is not None
        entry, vm = await with_deadline(
            prepared.fresh, self.settings.call_timeout_seconds, "DescribeVM"
        )
        if entry.name == prepared.snap.agent and _same_vm(vm, prepared.vm):
            return replace(prepared, fresh=None)
        log.info(
            "VM changed since its last description: the take is planned again",
            extra={
                "fields": {
                    "operation": op.id,
                    "vm_id": vm.id,
                    "agent": f"{prepared.snap.agent} -> {entry.name}",
                    "state": f"{prepared.vm.state.name} -> {vm.state.name}",
                    "disks": f"{len(prepared.vm.volumes)} -> {len(vm.volumes)}",
                }
            },
        )
        snap = await self._replanned(prepared.snap, entry, vm)
        redone = self.prepare(op, snap, vm)
        await self.store.write(*self.first_write(op, redone, replanned=True))
        return redone

    async def plan(
        self, entry: AgentEntry, vm: VM, *, include_memory: bool, options: Mapping[str, str]
    ) -> Plan:
        """The groups of a take of ``vm`` as ``entry`` describes it (``plan_take`` on
        the registered drivers, the volumes' recorded owners and the cached CanHandle
        answers): admission's plan, and a take's plan made again."""
        return await plan_take(
            vm,
            self.registry.drivers(),
            entry,
            (await self.store.read(self.store.volume_owners, [v.locator for v in vm.volumes])),
            include_memory=include_memory,
            options=options,
            can_handle_timeout=self.settings.can_handle_timeout_seconds,
            cache=self.decisions,
        )

    async def _replanned(self, snap: Snapshot, entry: AgentEntry, vm: VM) -> Snapshot:
        """``snap`` planned again on ``vm`` as ``entry`` describes it now."""
        plan = await self.plan(
            entry, vm, include_memory=snap.include_memory, options=snap.parameters
        )
        return replace(snap, agent=entry.name, groups=plan.groups, warnings=plan.warnings)

    def _thaw_steps(self, op: OperationRecord, thawed: dict[str, str] | None) -> list[Step]:
        """The thaw journaled as a step of its own (a write other than READY's)."""
        return [self.store.w_journal(op.id, "thawed", 60, **thawed)] if thawed else []

    def _achieved(
        self, snap: Snapshot, freeze: Freeze | None, vm_state: VMState, warnings: list[str]
    ) -> Consistency:
        # A result's consistency is what the driver achieved on its own; every group
        # cut inside the freeze shares the freeze's consistency at least. A stopped
        # VM's disks are consistent as they are.
        if vm_state is VMState.STOPPED:
            achieved = Consistency.APPLICATION
        elif freeze is not None:
            achieved = freeze.result.consistency
        else:
            achieved = min(
                (g.result.consistency for g in snap.groups if g.result is not None),
                default=Consistency.CRASH,
            )
        if (
            snap.quiesce is not QuiescePolicy.OFF
            and vm_state is VMState.RUNNING
            and achieved < Consistency.FILESYSTEM
            and not snap.include_memory
        ):
            warnings.append(
                f"guest quiesce was asked ({snap.quiesce.name}) but the snapshot is only "
                f"{achieved.name}-consistent"
            )
        return achieved

    async def _await_ready(self, op: OperationRecord, snap: Snapshot) -> Snapshot:
        """Poll results with ready=false. A transient error is retried until the
        post-processing timeout: the snapshot was cut, one blip must not undo it."""
        await self.store.write(self.store.w_journal(op.id, "post-processing", 70))
        give_up = time.monotonic() + self.settings.post_processing_timeout_seconds
        delay = 0.05
        groups = list(snap.groups)
        last: VMSnapError | None = None
        while True:
            for i, g in enumerate(groups):
                if g.ready or g.kind is not GroupKind.DRIVER:
                    continue
                try:
                    groups[i] = g.with_result(await self.calls.poll(g, snap.id))
                except TransientError as exc:
                    last = exc
            snap = replace(snap, groups=tuple(groups))
            if all(g.ready for g in groups):
                return snap
            if await self.store.read(self.store.cancel_requested, op.id):
                raise cancelled()
            if time.monotonic() > give_up:
                pending = ", ".join(g.owner for g in groups if not g.ready)
                detail = f" (last error: {last.message})" if last else ""
                raise DeadlineExceeded(
                    f"post-processing on {pending} did not finish within "
                    f"{self.settings.post_processing_timeout_seconds:g} s{detail}",
                    reason=Reason.POST_PROCESSING_TIMEOUT,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def fail(
        self,
        op: OperationRecord,
        snap: Snapshot,
        cause: VMSnapError,
        warnings: list[str],
        *,
        extra: Sequence[Step] = (),
        called: bool = True,
    ) -> NoReturn:
        """Compensate (the VM is thawed already) and record ERROR; always raises
        OperationFailed. Every planned group is owed a delete, whatever it answered
        (none when ``called`` is False: the take failed before calling any)."""
        if self.decisions is not None:
            # The plan came from cached answers, maybe stale ones: ask again next time.
            self.decisions.forget_vm(snap.vm_id)
        self.registry.forget_description(snap.vm_id)
        # Nothing was called before CREATING was committed.
        owed = list(snap.groups) if called and snap.state is SnapshotState.CREATING else []
        await self.store.write(
            *extra,
            self.store.w_set_cleanup(snap.id, owed),
            self.store.w_journal(op.id, "rolling back", 80),
        )
        left = await self.cleanup.owed(snap.id, snap.vm_id)
        message = f"take failed: {cause.message}"
        if owed and snap.state is SnapshotState.CREATING:
            message += f"; rolled back on {len(owed)} groups"
        if left:
            message += f"; delete still owed on {', '.join(left)} (retried in the background)"
        error = reworded(cause, message)
        await self.store.write(
            self.store.w_move(
                snap.id,
                SnapshotState.ERROR,
                snapshot=replace(
                    snap,
                    state=SnapshotState.ERROR,
                    error=error_info(error),
                    warnings=tuple(dict.fromkeys(warnings)),
                    current=False,
                ),
            ),
            self.store.w_finish(op.id, error_info(error), "failed"),
        )
        raise OperationFailed(error)


def _disks(vm: VM) -> frozenset[str]:
    return frozenset(v.disk for v in vm.volumes)


def _planned_disks(snap: Snapshot) -> frozenset[str]:
    return frozenset(d for g in snap.groups for d in g.disks)


def _same_vm(a: VM, b: VM) -> bool:
    """The same VM for a take's plan (``native_snapshot`` included: it decides
    whether the hypervisor may take a disk)."""
    return a == b and [v.native_snapshot for v in a.volumes] == [
        v.native_snapshot for v in b.volumes
    ]


__all__ = ["Take"]
