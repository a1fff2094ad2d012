"""Revert: all or nothing across groups, across failures and crashes.

With several groups (several arrays, or arrays and the hypervisor) a revert
keeps the current state of every group first — the array's undo
(``save_current_state``) where the driver offers REVERT_UNDO, else a safety
snapshot the host takes — so that a partial failure can be undone. Each kept
state is a catalog row (``kept_states``) journaled *before* it exists, and the
operation journals its phase (``keeping`` → ``reverting``) before the side
effects of that phase. After a failure, or after a crash at any point
(:meth:`Revert.resume`), :meth:`Revert.settle` brings every group to the same
side: back to the kept states when it can, else forward to the snapshot; when
neither side can be reached now (an owner is down) the operation stays open and
is settled again on the reconcile interval. Then the kept states are deleted,
retried until their owners confirm. The operation's message says which side,
and it is true.

The contract makes this decidable for the array undo: a driver makes the undo
snapshot before it changes any volume, so "no undo exists" means "not
reverted" (driver.proto, RevertVMSnapshotRequest.save_current_state).

Two definitive answers end a revert that no retry can finish: the snapshot's own
data is gone (:meth:`Revert._lost`, SNAPSHOT_LOST), or the VM is gone from its
agent (:meth:`Revert._vm_gone`, VM_NOT_FOUND). Both first bring the disks on
arrays to a side the message names (docs/design.md, "Revert").
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import NoReturn, TypeVar

from vmsnap_host import checks
from vmsnap_host.config import Settings
from vmsnap_host.executor.cleanup import Cleanup
from vmsnap_host.executor.errors import (
    OperationFailed,
    as_error,
    cancelled,
    error_info,
    label,
    reworded,
)
from vmsnap_host.executor.freeze import with_deadline
from vmsnap_host.executor.groups import GroupCalls
from vmsnap_host.model import (
    Group,
    GroupKind,
    KeptState,
    OperationRecord,
    Snapshot,
    SnapshotState,
)
from vmsnap_host.registry import Registry
from vmsnap_host.state import CancelRequested, LeaseLost, StaleMove
from vmsnap_host.store import Store
from vmsnap_sdk import VM, Capability, Consistency, HypervisorAgent, VMState, Volume
from vmsnap_sdk.errors import (
    Aborted,
    FailedPrecondition,
    NotFound,
    Reason,
    TransientError,
    Unavailable,
    VMSnapError,
)
from vmsnap_sdk.limits import cut

log = logging.getLogger("vmsnap.host.revert")

_T = TypeVar("_T")

_PUT_BACK = "every disk was put back as it was before the revert"
_AS_THEY_WERE = "nothing was reverted, the VM's disks are as they were"


class Outcome(enum.Enum):
    """What is known of one group's revert."""

    REVERTED = 1
    UNTOUCHED = 2  # a final error: the owner did not change anything
    UNKNOWN = 3  # a transient error, a crash: it may have happened


class Unsettled(Exception):
    """Neither side can be reached now; the operation stays open and is retried."""


#: Reasons of a NOT_FOUND that are not about the snapshot's data (the VM or its
#: agent is unknown): no proof that the snapshot is gone.
_NOT_THE_DATA = frozenset({Reason.VM_NOT_FOUND, Reason.AGENT_NOT_FOUND})


def data_gone(error: VMSnapError) -> bool:
    """A definitive answer from a group's owner that the snapshot's own data is gone
    (deleted behind the host's back): NOT_FOUND from the revert to the snapshot
    ("the snapshot (or a volume) is gone", driver.proto), or the agent's
    SNAPSHOT_DATA_MISSING. Never a transient code: UNAVAILABLE or
    DEADLINE_EXCEEDED say nothing about the data, and are retried."""
    if isinstance(error, NotFound):
        return error.reason not in _NOT_THE_DATA
    return error.reason == Reason.SNAPSHOT_DATA_MISSING


def vm_gone(error: VMSnapError) -> bool:
    """The agent's definitive answer that it does not have the VM (any more):
    NOT_FOUND / VM_NOT_FOUND ("the VM is not defined on this agent",
    hypervisor.proto). Only an answer of the snapshot's agent counts (DescribeVM,
    StopVM, the hypervisor group's calls); UNAVAILABLE or DEADLINE_EXCEEDED say
    nothing about the VM, and are retried."""
    return isinstance(error, NotFound) and error.reason == Reason.VM_NOT_FOUND


def _retry_helps(error: VMSnapError) -> bool:
    return not error.final or isinstance(error, Aborted)


def _disks(names: list[str]) -> str:
    """The subject of a side: 'disk vda was' or 'disks vda, vdb were'."""
    return f"disk {names[0]} was" if len(names) == 1 else f"disks {', '.join(names)} were"


def _agent_side(names: list[str], agent: str, outcome: Outcome) -> str:
    """Where the disks an agent holds are, once it does not have their VM."""
    one = len(names) == 1
    which = f"disk {names[0]}" if one else f"disks {', '.join(names)}"
    if outcome is Outcome.UNTOUCHED:
        return f"{which} on agent {agent} {'was' if one else 'were'} not reverted"
    if outcome is Outcome.REVERTED:
        return (
            f"{which} on agent {agent} {'was' if one else 'were'} reverted to the snapshot and "
            f"cannot be put back without the VM"
        )
    return (
        f"{which} on agent {agent} may have been reverted to the snapshot (the agent cannot "
        f"tell without the VM): check {'it' if one else 'them'} before using "
        f"{'it' if one else 'them'} again"
    )


def _needs_stopped(snap: Snapshot) -> bool:
    """Whether the revert moves disks only with the VM STOPPED: every revert but a
    memory revert wholly on the agent (which reverts from any state itself)."""
    return not snap.include_memory or any(g.kind is GroupKind.DRIVER for g in snap.groups)


def _may_stop(op: OperationRecord, snap: Snapshot) -> bool:
    """Whether the revert may stop the VM itself: ``--stop-vm``, or a memory revert."""
    return bool(snap.include_memory or op.params.get("stop_vm"))


class Revert:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        settings: Settings,
        calls: GroupCalls,
        cleanup: Cleanup,
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.calls = calls
        self.cleanup = cleanup

    def _undo_capable(self, group: Group) -> bool:
        return (
            group.kind is GroupKind.DRIVER
            and Capability.REVERT_UNDO in self.registry.capabilities(group.owner)
        )

    # --- the operation ------------------------------------------------------------

    async def run(self, op: OperationRecord, snap: Snapshot, stop_vm: bool) -> None:
        """Bring the VM back to ``snap``: fully, or not at all (raises OperationFailed)."""
        try:
            # Compare-and-set when the work runs, not at admission: a delete queued
            # before this revert makes it stale.
            await self.store.write(
                self.store.w_move(snap.id, SnapshotState.REVERTING),
                self.store.w_journal(op.id, "starting", 5, phase="starting"),
            )
        except StaleMove:
            now = await self.store.read(self.store.get_snapshot, snap.id)
            error = FailedPrecondition(
                f"snapshot {snap.id} is {now.state.name if now else 'gone'} now; only a READY "
                "snapshot can be reverted to",
                reason=Reason.SNAPSHOT_STATE,
            )
            await self.store.write(self.store.w_finish(op.id, error_info(error), "failed"))
            raise OperationFailed(error) from None
        snap = replace(snap, state=SnapshotState.REVERTING)
        try:
            await self._run(op, snap, stop_vm)
        except (OperationFailed, asyncio.CancelledError, Unsettled, LeaseLost):
            raise  # LeaseLost: the replica that took the VM over settles it
        except Exception as exc:  # noqa: BLE001 - any failure ends on one side, with its cause
            await self.settle(op, snap, as_error(exc, "revert"), {})

    async def _run(self, op: OperationRecord, snap: Snapshot, stop_vm: bool) -> None:
        try:
            vm = await self._stopped(op, snap, stop_vm)
        except NotFound as exc:
            if vm_gone(exc):
                # Nothing moved yet: the VM went before the revert began.
                await self._vm_gone(op, snap, exc.message, _AS_THEY_WERE)
            await self._untouched(op, snap, exc)
        except VMSnapError as exc:
            # Nothing moved before the ``reverting`` phase: the VM could not be
            # described or stopped (frozen by someone else, its agent down), and
            # settle, which sends every group to one side, must not run with it
            # still RUNNING: the arrays would revert disks under the guest.
            await self._untouched(op, snap, exc)
        if snap.include_memory or len(snap.groups) == 1:
            # One atomic revert: cancelled before it starts, or finished (forward).
            vm = await self._still_stopped(op, snap, vm)
            await self._start_reverting(op, snap)
            untouched = dict.fromkeys((g.owner for g in snap.groups), Outcome.UNTOUCHED)
            await self.settle(op, snap, None, untouched, vm=vm)
            return
        await self._run_many(op, snap, vm)

    async def _stopped(self, op: OperationRecord, snap: Snapshot, stop_vm: bool) -> VM:
        """The VM as its agent describes it, stopped when the revert needs it so."""
        agent = self.registry.agent(snap.agent)
        vm = await with_deadline(
            agent.describe_vm(snap.vm_id), self.settings.call_timeout_seconds, "DescribeVM"
        )
        if not snap.include_memory and vm.state is not VMState.STOPPED:
            if not stop_vm:
                await self._untouched(
                    op,
                    snap,
                    FailedPrecondition(
                        f"VM {vm.id} is {vm.state.name}; a disk-only revert needs it STOPPED: "
                        f"stop it first (vmsnap vm stop {vm.id}) or pass --stop-vm",
                        reason=Reason.VM_NOT_STOPPED,
                    ),
                )
            await self._unless_cancelled(op, snap)
            await self.store.write(
                self.store.w_journal(op.id, "stopping the VM", 10, phase="stopping")
            )
            vm = await with_deadline(
                agent.stop_vm(vm.id, False), self.settings.call_timeout_seconds, "StopVM"
            )
        arrays = any(g.kind is GroupKind.DRIVER for g in snap.groups)
        if snap.include_memory and arrays and vm.state is not VMState.STOPPED:
            # The arrays replace the disks' bytes: QEMU must not have them open. A
            # memory revert discards the running state anyway (the VM comes back
            # RUNNING from the saved RAM), so no --stop-vm is asked for.
            await self.store.write(
                self.store.w_journal(op.id, "stopping the VM", 10, phase="stopping")
            )
            vm = await with_deadline(
                agent.stop_vm(vm.id, True), self.settings.call_timeout_seconds, "StopVM"
            )
        return vm

    async def _still_stopped(
        self, op: OperationRecord, snap: Snapshot, vm: VM, *, drop: list[KeptState] | None = None
    ) -> VM:
        """Right before the first disk moves: the VM described again, since the
        revert described or stopped it a while ago (and kept the current state since,
        on every array). A VM started meanwhile (a StartVM on its agent, not through
        the host, which refuses one while a revert is open) is stopped again when the
        revert may stop it (``--stop-vm``, or a memory revert); otherwise the revert
        ends untouched, nothing moved: no disk is reverted under a running guest
        (docs/design.md, "No disk is reverted under a running guest")."""
        if not _needs_stopped(snap):
            return vm
        agent = self.registry.agent(snap.agent)
        try:
            now = await with_deadline(
                agent.describe_vm(snap.vm_id), self.settings.call_timeout_seconds, "DescribeVM"
            )
            if now.state is VMState.STOPPED:
                return now
            if not _may_stop(op, snap):
                raise FailedPrecondition(
                    f"VM {now.id} is {now.state.name}: it was started while the revert "
                    "ran, before any disk moved, and no disk is reverted under a running "
                    f"guest; stop it (vmsnap vm stop {now.id}) and revert again",
                    reason=Reason.VM_NOT_STOPPED,
                )
            await self.store.write(self.store.w_journal(op.id, "stopping the VM again", 30))
            return await self._stop_again(agent, snap, now)
        except NotFound as exc:
            if vm_gone(exc):
                await self._vm_gone(op, snap, exc.message, _AS_THEY_WERE)
            await self._untouched(op, snap, exc, drop=drop)
        except VMSnapError as exc:
            await self._untouched(op, snap, exc, drop=drop)

    async def _stopped_again(self, op: OperationRecord, snap: Snapshot, vm: VM) -> VM:
        """Before settle moves a disk: the VM stopped as the revert left it. One
        started since behind the host's back (on its agent) is stopped again when
        the revert may stop it (``--stop-vm``, or a memory revert); else the revert
        waits (Unsettled) and says so: no disk is reverted under a running guest."""
        if vm.state is VMState.STOPPED or not _needs_stopped(snap):
            return vm
        if not _may_stop(op, snap):
            reason = (
                f"VM {vm.id} is {vm.state.name}: it was started while the revert ran, "
                "and no disk is reverted under a running guest; stop it "
                f"(vmsnap vm stop {vm.id}) and the revert finishes"
            )
            await self.store.write(self.store.w_journal(op.id, f"waiting: {reason}; retried", 75))
            raise Unsettled(reason)
        await self.store.write(self.store.w_journal(op.id, "stopping the VM again", 72))
        try:
            return await self._stop_again(self.registry.agent(snap.agent), snap, vm)
        except VMSnapError as exc:
            reason = f"VM {vm.id} is {vm.state.name} and could not be stopped ({exc.message})"
            await self.store.write(self.store.w_journal(op.id, f"waiting: {reason}; retried", 75))
            raise Unsettled(reason) from None

    async def _stop_again(self, agent: HypervisorAgent, snap: Snapshot, vm: VM) -> VM:
        """StopVM for a VM found running after the revert had it stopped."""
        return await with_deadline(
            agent.stop_vm(vm.id, snap.include_memory),
            self.settings.call_timeout_seconds,
            "StopVM",
        )

    async def _run_many(self, op: OperationRecord, snap: Snapshot, vm: VM) -> None:
        kept_id = f"{snap.id}-keep-{op.id[:8]}"
        kept = [KeptState(kept_id, g.owner, g.kind, op.id, vm.id, snap.id) for g in snap.groups]
        undo = {g.owner for g in snap.groups if self._undo_capable(g)}
        await self._unless_cancelled(op, snap)
        # Journal every kept state before any exists.
        await self.store.write(
            *(self.store.w_keep(k) for k in kept),
            self.store.w_journal(
                op.id, "keeping the current state", 20, phase="keeping", undo=sorted(undo)
            ),
        )
        safety = [(g, k) for g, k in zip(snap.groups, kept, strict=True) if g.owner not in undo]
        outcomes = await asyncio.gather(
            *(
                self.calls.take(
                    g,
                    k.id,
                    vm,
                    name=f"{snap.name} (kept by a revert)",
                    parameters={},
                    include_memory=False,
                    quiesced=False,
                    consistency=Consistency.CRASH,
                    deadline=self.settings.take_timeout_seconds,
                )
                for g, k in safety
            ),
            return_exceptions=True,
        )
        made = [
            replace(k, result=o)
            for (_, k), o in zip(safety, outcomes, strict=True)
            if not isinstance(o, BaseException)
        ]
        if made:
            await self.store.write(*(self.store.w_kept_result(k) for k in made))
        failed = [
            (g, o)
            for (g, _), o in zip(safety, outcomes, strict=True)
            if isinstance(o, BaseException)
        ]
        if failed:
            causes = [
                (g, as_error(exc, f"keeping the current state on {label(g)}")) for g, exc in failed
            ]
            for g, cause in causes:
                if g.kind is not GroupKind.DRIVER and vm_gone(cause):
                    await self._vm_gone(op, snap, cause.message, _AS_THEY_WERE)
            await self._untouched(op, snap, causes[0][1], drop=kept)
        # The kept states took a while: the VM may have been started meanwhile.
        vm = await self._still_stopped(op, snap, vm, drop=kept)
        # From here on a crash leaves the disks on an unknown side: settle decides.
        await self._start_reverting(op, snap, drop=kept)
        reverts = await asyncio.gather(
            *(
                self.calls.revert(g, snap.id, vm, undo_id=kept_id if g.owner in undo else "")
                for g in snap.groups
            ),
            return_exceptions=True,
        )
        known: dict[str, Outcome] = {}
        gone: dict[str, str] = {}
        vm_answer = ""
        undos: list[KeptState] = []
        first: VMSnapError | None = None
        for g, k, o in zip(snap.groups, kept, reverts, strict=True):
            if isinstance(o, BaseException):
                error = as_error(o, f"revert on {label(g)}")
                if data_gone(error):
                    gone[g.owner] = error.message
                if g.kind is not GroupKind.DRIVER and vm_gone(error):
                    vm_answer = error.message
                # A final code means the owner changed nothing (a host-side bug is
                # INTERNAL: the call never reached the owner intact).
                # A contract violation is an answer: the call did happen on the owner.
                known[g.owner] = (
                    Outcome.UNTOUCHED
                    if error.final and not isinstance(error, Aborted | checks.ContractViolation)
                    else Outcome.UNKNOWN
                )
                first = first or error
                continue
            known[g.owner] = Outcome.REVERTED
            if g.owner in undo and o is not None:
                undos.append(replace(k, result=o))
        if undos:
            await self.store.write(*(self.store.w_kept_result(k) for k in undos))
        if first is None and (await self.store.read(self.store.cancel_requested, op.id)):
            # Cancelled while the disks moved: finished on one side, back to the
            # kept states when they all can be (settle decides, as after a failure).
            first = cancelled()
        if first is None:
            await self._done(op, snap, "reverted")
            return
        await self.settle(op, snap, first, known, vm=vm, gone=gone, vm_answer=vm_answer)

    # --- cancel (docs/design.md, "Live events, cancel and traces") ------------------------

    async def _unless_cancelled(self, op: OperationRecord, snap: Snapshot) -> None:
        """Nothing moved yet: a recorded cancel ends the revert untouched."""
        if await self.store.read(self.store.cancel_requested, op.id):
            await self._untouched(
                op, snap, cancelled(), drop=await self.store.read(self.store.kept_states, op.id)
            )

    async def _start_reverting(
        self, op: OperationRecord, snap: Snapshot, *, drop: list[KeptState] | None = None
    ) -> None:
        """Journal the ``reverting`` phase, refused (compare-and-set, whichever replica
        recorded it) once a cancel was recorded: then nothing was reverted."""
        try:
            await self.store.write(
                self.store.w_refuse_cancelled(op.id),
                self.store.w_journal(op.id, "reverting", 50, phase="reverting"),
            )
        except CancelRequested:
            await self._untouched(op, snap, cancelled(), drop=drop)

    # --- ends ---------------------------------------------------------------------

    async def _untouched(
        self,
        op: OperationRecord,
        snap: Snapshot,
        cause: VMSnapError,
        *,
        drop: list[KeptState] | None = None,
    ) -> NoReturn:
        """Nothing was reverted: READY again, the operation failed; always raises."""
        message = f"{cause.message}; nothing was reverted, the VM's disks are as they were"
        error = reworded(cause, message)
        await self.store.write(
            self.store.w_move(snap.id, SnapshotState.READY),
            self.store.w_finish(op.id, error_info(error), "failed"),
        )
        if drop:
            await self._drop(op.id)
        raise OperationFailed(error)

    async def _done(self, op: OperationRecord, snap: Snapshot, step: str) -> None:
        await self.store.write(
            self.store.w_move(snap.id, SnapshotState.READY, current=True),
            self.store.w_journal(op.id, step, 95, phase="reverted"),
            self.store.w_finish(op.id, None, step),
        )
        await self._drop(op.id)

    async def _drop(self, operation_id: str) -> None:
        kept = await self.store.read(self.store.kept_states, operation_id)
        if kept:
            await self.cleanup.drop_kept(kept)

    # --- one side -----------------------------------------------------------------

    async def settle(
        self,
        op: OperationRecord,
        snap: Snapshot,
        cause: VMSnapError | None,
        known: Mapping[str, Outcome],
        *,
        vm: VM | None = None,
        gone: Mapping[str, str] | None = None,
        vm_answer: str = "",
    ) -> None:
        """Bring every group to one side and record which; raises OperationFailed
        when the VM is not at the snapshot, Unsettled when no side is reachable now.
        ``gone``: owners that answered that the snapshot's data is gone (what each
        said); then forward can never land (see :meth:`_lost`). ``vm_answer``: the
        agent answered that it does not have the VM (what it said); then neither side
        can be reached through the agent (see :meth:`_without_vm`)."""
        if vm is None and not vm_answer:
            try:
                vm = await with_deadline(
                    self.registry.agent(snap.agent).describe_vm(snap.vm_id),
                    self.settings.call_timeout_seconds,
                    "DescribeVM",
                )
            except NotFound as exc:
                if not vm_gone(exc):
                    raise
                vm_answer = exc.message
        if vm_answer:
            await self._without_vm(op, snap, vm_answer, known, vm)
        assert vm is not None
        vm = await self._stopped_again(op, snap, vm)
        # Journaled: a later settle (a crash, a tick after Unsettled) knows it too.
        lost: dict[str, str] = {**dict(op.journal.get("gone") or {}), **(gone or {})}
        await self.store.write(
            self.store.w_journal(
                op.id, "bringing every disk to one side", 70, **({"gone": lost} if lost else {})
            )
        )
        kept = {k.owner: k for k in await self.store.read(self.store.kept_states, op.id)}
        # Once forward was tried, a group may be at the snapshot with no record of it
        # (a forward revert keeps no undo): "no undo" no longer means "unchanged".
        forward_tried = op.journal.get("phase") == "forward"
        back_error: VMSnapError | None = None
        if (cause is not None or lost) and kept:
            try:
                await self._back(snap, vm, kept, known, forward_tried=forward_tried)
            except VMSnapError as exc:
                back_error = exc
            else:
                if lost:
                    await self._lost(op, snap, lost, _PUT_BACK)
                assert cause is not None
                message = f"revert failed ({cause.message}); every disk was put back as it was before the revert"
                error = reworded(cause, message)
                await self.store.write(
                    self.store.w_move(snap.id, SnapshotState.READY),
                    self.store.w_journal(op.id, "put back", 95, phase="back"),
                    self.store.w_finish(op.id, error_info(error), "failed; put back"),
                )
                await self._drop(op.id)
                raise OperationFailed(error)
        if lost and back_error is not None:
            # Forward can never land: only the way back is left.
            await self._back_later_or_lost(op, snap, lost, back_error)
        # The side is journaled before any group moves towards it.
        await self.store.write(
            self.store.w_journal(op.id, "bringing every disk to the snapshot", 80, phase="forward")
        )
        # A failed attempt to go back may have put some groups back already: then
        # what was known reverted is not any more, and every group goes forward.
        before = known if back_error is None else {}
        errors, moved = await self._forward(snap, vm, before)
        if not errors:
            await self._done(op, snap, "reverted" if cause is None else "reverted after a retry")
            return
        on_agent = {g.owner for g in snap.groups if g.kind is not GroupKind.DRIVER}
        answer = next((e.message for o, e in errors.items() if o in on_agent and vm_gone(e)), "")
        if answer:
            # The agent's own groups did not move in this attempt; what an earlier
            # one did is what ``before`` knows.
            await self._without_vm(
                op, snap, answer, {**before, **dict.fromkeys(moved, Outcome.REVERTED)}, vm
            )
        found = {o: e.message for o, e in errors.items() if data_gone(e)}
        if found:
            lost.update(found)
            await self.store.write(
                self.store.w_journal(op.id, "the snapshot's data is gone", 85, gone=lost)
            )
            if kept:
                # Some groups may have gone forward before one answered that its data
                # is gone: back again, counting only kept states that are known.
                after = {
                    **before,
                    **dict.fromkeys(moved, Outcome.REVERTED),
                    **dict.fromkeys(found, Outcome.UNTOUCHED),
                }
                try:
                    await self._back(snap, vm, kept, after, forward_tried=True)
                except VMSnapError as exc:
                    await self._back_later_or_lost(op, snap, lost, exc)
                await self._lost(op, snap, lost, _PUT_BACK)
            # No kept states (one group, or a memory revert): nothing to go back to.
            # Once every other group has answered, the disks' side is known.
            if not any(_retry_helps(e) for o, e in errors.items() if o not in lost):
                await self._lost(op, snap, lost, self._where(snap, before, moved, vm))
        parts = [f"revert: {next(iter(errors.values())).message}"]
        if back_error is not None:
            parts.append(f"putting the disks back failed too ({back_error.message})")
        reason = "; ".join(parts)
        await self.store.write(
            self.store.w_journal(
                op.id, f"waiting to bring every disk to one side ({reason}); retried", 75
            )
        )
        raise Unsettled(reason)

    async def _back_later_or_lost(
        self, op: OperationRecord, snap: Snapshot, lost: Mapping[str, str], back_error: VMSnapError
    ) -> NoReturn:
        """The snapshot's data is gone and putting the disks back failed: wait for
        the way back while a retry can help (Unsettled), else give up and say so."""
        if _retry_helps(back_error):
            reason = (
                f"the snapshot's data is gone on {', '.join(sorted(lost))}; putting the disks "
                f"back failed ({back_error.message})"
            )
            await self.store.write(
                self.store.w_journal(
                    op.id, f"waiting to put every disk back ({reason}); retried", 75
                )
            )
            raise Unsettled(reason)
        await self._lost(
            op,
            snap,
            lost,
            f"the disks could not be put back either ({back_error.message}): they may not all "
            "be on one side, check them before starting the VM",
        )

    async def _without_vm(
        self,
        op: OperationRecord,
        snap: Snapshot,
        answer: str,
        known: Mapping[str, Outcome],
        vm: VM | None,
    ) -> NoReturn:
        """The agent answered that it does not have the VM: no retry can move the
        disks it holds, nor start the VM. The disks on arrays are brought to one side
        without it — back to their kept states when the revert kept them, else
        forward to the snapshot (the only side a retry reaches: an atomic revert
        keeps no undo) — waiting while a retry can help (Unsettled); then the revert
        ends NOT_FOUND / VM_NOT_FOUND naming where every disk is (:meth:`_vm_gone`)."""
        arrays = [g for g in snap.groups if g.kind is GroupKind.DRIVER]
        on_agent = [g for g in snap.groups if g.kind is not GroupKind.DRIVER]
        # What the agent's groups did is journaled by the settle that knew it: a
        # later one (a tick after Unsettled, a restart) starts knowing nothing.
        outcome = Outcome[str(dict(op.journal.get("vm_gone") or {}).get("agent") or "UNKNOWN")]
        for g in on_agent:
            outcome = known.get(g.owner, outcome)
        await self.store.write(
            self.store.w_journal(
                op.id,
                "the VM is gone from its agent",
                80,
                vm_gone={"answer": cut(answer, 600), "agent": outcome.name},
            )
        )
        # The drivers' calls take the VM; the agent cannot describe it any more, and
        # it runs nowhere through that agent.
        vm = vm or self._vm_of(snap)
        sides: list[str] = []
        at_snapshot = False
        kept = {k.owner: k for k in await self.store.read(self.store.kept_states, op.id)}
        if arrays and kept:
            try:
                await self._back(
                    snap,
                    vm,
                    kept,
                    known,
                    forward_tried=op.journal.get("phase") == "forward",
                    only=arrays,
                )
            except VMSnapError as exc:
                await self._unless_final(op, snap, exc)
                sides.append(
                    f"the disks on arrays could not all be put back ({exc.message}): they may "
                    "not all be on one side, check them before using them again"
                )
            else:
                disks = ", ".join(d for g in arrays for d in g.disks)
                sides.append(
                    f"every disk on an array ({disks}) was put back as it was before the revert"
                )
        elif arrays:
            errors, moved = await self._forward(snap, vm, known, only=arrays)
            for error in errors.values():
                await self._unless_final(op, snap, error)
            at = [
                d
                for g in arrays
                if g.owner in moved or known.get(g.owner) is Outcome.REVERTED
                for d in g.disks
            ]
            if at:
                sides.append(f"{_disks(at)} reverted to the snapshot")
            if errors:
                first = next(iter(errors.values()))
                sides.append(
                    f"the other disks on arrays could not be reverted ({first.message}): they "
                    "are not all on one side, check them before using them again"
                )
            at_snapshot = not on_agent and not errors
        agent_disks = [d for g in on_agent for d in g.disks]
        if agent_disks:
            sides.append(_agent_side(agent_disks, snap.agent, outcome))
        if snap.include_memory:
            sides.append("the memory state was not loaded")
        await self._vm_gone(op, snap, answer, "; ".join(sides), current=at_snapshot)

    async def _unless_final(self, op: OperationRecord, snap: Snapshot, error: VMSnapError) -> None:
        """Settling without the VM failed: wait while a retry can help (Unsettled)."""
        if not _retry_helps(error):
            return
        reason = (
            f"VM {snap.vm_id} is gone from agent {snap.agent}; bringing the disks on arrays "
            f"to one side failed ({error.message})"
        )
        await self.store.write(self.store.w_journal(op.id, f"waiting: {reason}; retried", 75))
        raise Unsettled(reason)

    @staticmethod
    def _vm_of(snap: Snapshot) -> VM:
        """The VM as the catalog knows it, for the drivers' calls: its disks on arrays
        (from the snapshot's stored results) and STOPPED (its agent does not have it)."""
        volumes = tuple(
            Volume(v.disk, v.locator)
            for g in snap.groups
            if g.result is not None
            for v in g.result.volume_snapshots
        )
        return VM(
            id=snap.vm_id, name=snap.vm_id, state=VMState.STOPPED, volumes=volumes, agent=snap.agent
        )

    async def _vm_gone(
        self, op: OperationRecord, snap: Snapshot, answer: str, side: str, *, current: bool = False
    ) -> NoReturn:
        """Give up: the VM is gone from its agent. The revert fails NOT_FOUND /
        VM_NOT_FOUND saying what is gone, where the disks are (``side``) and what to
        do; the snapshot is READY again (its data is not known to be gone), current
        when every disk is at it. Always raises OperationFailed."""
        todo = (
            f"define the VM again on agent {snap.agent} with the same disks (DefineVM) and "
            "revert again, or delete the snapshot (DeleteVMSnapshot)"
        )
        if any(g.kind is not GroupKind.DRIVER for g in snap.groups):
            todo += f"; its part on agent {snap.agent} may have gone with the VM"
        error = NotFound(
            f"VM {snap.vm_id} is gone from agent {snap.agent} (it answered: {cut(answer, 300)}); "
            f"{side or _AS_THEY_WERE}; snapshot {snap.id} is READY: {todo}",
            reason=Reason.VM_NOT_FOUND,
        )
        await self.store.write(
            self.store.w_move(snap.id, SnapshotState.READY, current=True if current else None),
            self.store.w_journal(op.id, "the VM is gone from its agent", 95, phase="vm_gone"),
            self.store.w_finish(op.id, error_info(error), "failed; the VM is gone from its agent"),
        )
        log.warning(
            "revert gave up: the VM is gone from its agent",
            extra={"fields": {"operation": op.id, "snapshot": snap.id, "vm": snap.vm_id}},
        )
        await self._drop(op.id)
        raise OperationFailed(error)

    @staticmethod
    def _where(snap: Snapshot, known: Mapping[str, Outcome], moved: set[str], vm: VM) -> str:
        """Where the disks are after a revert without kept states gave up."""
        at = [g for g in snap.groups if g.owner in moved or known.get(g.owner) is Outcome.REVERTED]
        if not at:
            return "nothing was reverted, the VM's disks are as they were"
        disks = [d for g in at for d in g.disks]
        moved_disks = (
            f"disk {disks[0]} was" if len(disks) == 1 else f"disks {', '.join(disks)} were"
        )
        return (
            f"{moved_disks} reverted to the snapshot and cannot be put back (a memory "
            f"revert keeps no undo), the others are as they were; VM {vm.id} was left "
            "stopped: check its disks before starting it"
        )

    async def _lost(
        self, op: OperationRecord, snap: Snapshot, gone: Mapping[str, str], side: str
    ) -> NoReturn:
        """Give up: the snapshot's own data is gone on an owner, so no retry can
        bring the VM to it. The revert fails saying what is gone and where the disks
        are (``side``); the snapshot is ERROR and out of the tree (its children and
        the current pointer go to its parent, as a delete does), so that a later
        revert is refused at once. Always raises OperationFailed."""
        what = cut("; ".join(gone[o] for o in sorted(gone)), 600)
        todo = "delete it (DeleteVMSnapshot) and take a new one (CreateVMSnapshot)"
        error = FailedPrecondition(
            f"snapshot {snap.id} can no longer be reverted to: its data is gone ({what}); "
            f"{side}; the snapshot is ERROR now: {todo}",
            reason=Reason.SNAPSHOT_LOST,
        )
        # What the snapshot says of itself (shown by GetVMSnapshot, and when a later
        # revert is refused).
        itself = reworded(
            error, f"its data is gone ({what}): it can no longer be reverted to; {todo}"
        )
        now = (await self.store.read(self.store.get_snapshot, snap.id)) or snap
        await self.store.write(
            self.store.w_detach(now),
            self.store.w_move(
                snap.id,
                SnapshotState.ERROR,
                only=frozenset({SnapshotState.REVERTING}),
                snapshot=replace(
                    now, state=SnapshotState.ERROR, error=error_info(itself), current=False
                ),
            ),
            self.store.w_journal(op.id, "the snapshot's data is gone", 95, phase="lost"),
            self.store.w_finish(op.id, error_info(error), "failed; the snapshot's data is gone"),
        )
        log.warning(
            "revert gave up: the snapshot's data is gone",
            extra={"fields": {"operation": op.id, "snapshot": snap.id, "gone": sorted(gone)}},
        )
        await self._drop(op.id)
        raise OperationFailed(error)

    async def _back(
        self,
        snap: Snapshot,
        vm: VM,
        kept: Mapping[str, KeptState],
        known: Mapping[str, Outcome],
        *,
        forward_tried: bool,
        only: Sequence[Group] | None = None,
    ) -> None:
        """Every group (of ``only``, default all) that may have changed goes back to
        its kept state (decided for every group before any moves)."""
        back: list[tuple[Group, KeptState]] = []
        for g in snap.groups if only is None else only:
            outcome = known.get(g.owner, Outcome.UNKNOWN)
            if outcome is Outcome.UNTOUCHED:
                continue
            k = kept.get(g.owner)
            if k is None:
                raise FailedPrecondition(
                    f"no kept state for {label(g)}", reason=Reason.NO_KEPT_STATE
                )
            if k.result is None and g.kind is GroupKind.DRIVER:
                if forward_tried:
                    raise FailedPrecondition(
                        f"{label(g)} may have gone forward without an undo",
                        reason=Reason.NO_KEPT_STATE,
                    )
                # An array undo whose answer was lost: the driver made it before it
                # changed anything, so none means nothing changed.
                found = await self._retrying(partial(self.calls.find, g, k.id))
                if found is None:
                    if outcome is Outcome.REVERTED:
                        raise FailedPrecondition(
                            f"{label(g)} reverted without keeping its undo",
                            reason=Reason.NO_KEPT_STATE,
                        )
                    continue
                k = replace(k, result=found)
                await self.store.write(self.store.w_kept_result(k))
            back.append((g, k))
        outcomes = await asyncio.gather(
            *(self._retrying(partial(self.calls.revert, k.group, k.id, vm)) for _, k in back),
            return_exceptions=True,
        )
        for (g, _), o in zip(back, outcomes, strict=True):
            if isinstance(o, BaseException):
                raise as_error(o, f"putting back {label(g)}")

    async def _forward(
        self,
        snap: Snapshot,
        vm: VM,
        known: Mapping[str, Outcome],
        *,
        only: Sequence[Group] | None = None,
    ) -> tuple[dict[str, VMSnapError], set[str]]:
        """Every group (of ``only``, default all) not known reverted goes (again) to
        the snapshot: idempotent. Returns the errors of the groups that did not get
        there (none: every group is at the snapshot) and the owners that did in this
        attempt."""
        todo = [
            g
            for g in (snap.groups if only is None else only)
            if known.get(g.owner) is not Outcome.REVERTED
        ]
        # A memory snapshot's hypervisor group starts the VM from the saved RAM: every
        # array disk must be back first (the drivers in parallel, then the agent).
        waves = (
            [
                [g for g in todo if g.kind is GroupKind.DRIVER],
                [g for g in todo if g.kind is not GroupKind.DRIVER],
            ]
            if snap.include_memory
            else [todo]
        )
        errors: dict[str, VMSnapError] = {}
        moved: set[str] = set()
        for wave in waves:
            if errors:
                break  # the next wave only once every group of this one is there
            outcomes = await asyncio.gather(
                *(self._retrying(partial(self.calls.revert, g, snap.id, vm)) for g in wave),
                return_exceptions=True,
            )
            for g, o in zip(wave, outcomes, strict=True):
                if isinstance(o, BaseException):
                    errors[g.owner] = as_error(o, label(g))
                else:
                    moved.add(g.owner)
        return errors, moved

    async def _retrying(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """Retry what a retry can help, for up to the take timeout."""
        give_up = time.monotonic() + self.settings.take_timeout_seconds
        delay = 0.1
        while True:
            try:
                return await call()
            except (TransientError, Aborted):
                if time.monotonic() + delay > give_up:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    # --- after a crash ------------------------------------------------------------

    async def resume(self, op: OperationRecord, snap: Snapshot) -> None:
        """Finish an interrupted revert on one side (recovery, or a retry after
        Unsettled)."""
        phase = str(op.journal.get("phase") or "")
        if snap.state is not SnapshotState.REVERTING:
            # Crashed before the compare-and-set: nothing was touched.
            error = Aborted(
                "the host restarted before this revert began; nothing was reverted; revert "
                "again with a new request_id",
                reason=Reason.HOST_RESTARTED,
            )
            await self.store.write(self.store.w_finish(op.id, error_info(error), "failed"))
            raise OperationFailed(error)
        if phase in ("", "starting", "stopping", "keeping"):
            await self._untouched(
                op,
                snap,
                Aborted(
                    f"the host restarted while the revert was {phase or 'starting'}",
                    reason=Reason.HOST_RESTARTED,
                ),
                drop=await self.store.read(self.store.kept_states, op.id),
            )
        if len(snap.groups) == 1 or snap.include_memory:
            await self.settle(op, snap, None, {})
            return
        cause = Unavailable(
            "the host restarted during the revert; it was finished on one side",
            reason=Reason.HOST_RESTARTED,
        )
        await self.settle(op, snap, cause, {})


__all__ = ["Outcome", "Revert", "Unsettled", "data_gone", "vm_gone"]
