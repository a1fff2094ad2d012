"""Carrying out takes, reverts and deletes on the groups of a plan.

Take: quiesce under a lease (renewed while it runs) → TakeVMSnapshot on every
group at once, each with a deadline inside the lease → thaw as soon as every
group has answered → poll results still post-processing → READY. On any
failure: thaw first, then DeleteVMSnapshot(same id) on every group that was
called, whatever its answer was, then ERROR with the cause. Every side effect
is journaled before it is made, so :mod:`vmsnap_host.recovery` can finish or
undo it after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from vmsnap_host.config import Settings
from vmsnap_host.model import (
    ErrorInfo,
    Group,
    GroupKind,
    OperationRecord,
    QuiescePolicy,
    Snapshot,
    SnapshotState,
)
from vmsnap_host.planner import needs_freeze
from vmsnap_host.registry import Registry
from vmsnap_host.store import Store
from vmsnap_sdk import (
    VM,
    Capability,
    Consistency,
    HypervisorAgent,
    NativeSnapshot,
    QuiesceMethod,
    QuiesceResult,
    RevertRequest,
    SnapshotResult,
    TakeRequest,
    VMState,
    VolumeSnapshot,
)
from vmsnap_sdk.errors import (
    Aborted,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    TransientError,
    VMSnapError,
)

log = logging.getLogger("vmsnap.host.executor")

_T = TypeVar("_T")


class TakeFailed(Exception):
    """A take, revert or delete failed; ``error`` is what the snapshot records."""

    def __init__(self, error: VMSnapError) -> None:
        super().__init__(str(error))
        self.error = error


def error_info(error: VMSnapError) -> ErrorInfo:
    return ErrorInfo(code=error.code.value[0], message=error.message, reason=error.reason)


def native_result(
    snapshot_id: str, native: NativeSnapshot, vm: VM, consistency: Consistency
) -> SnapshotResult:
    """A native snapshot described like a driver's result (handles = the native id)."""
    volumes = []
    for disk in native.disks:
        volume = vm.volume(disk)
        volumes.append(VolumeSnapshot(disk, volume.locator if volume else "", native.snapshot_id))
    return SnapshotResult(
        vm_snapshot_id=snapshot_id,
        volume_snapshots=tuple(volumes),
        ready=True,
        consistency=consistency,
        vm_id=vm.id,
    )


@dataclass
class _Freeze:
    agent: HypervisorAgent
    result: QuiesceResult
    started: datetime
    started_mono: float
    renewals: asyncio.Task[None] | None = None
    thawed: bool = False


async def _with_deadline(call: Awaitable[_T], seconds: float, what: str) -> _T:
    try:
        return await asyncio.wait_for(call, seconds)
    except TimeoutError as exc:
        raise DeadlineExceeded(f"{what}: no answer within {seconds:.1f} s") from exc


class Executor:
    """Runs the side effects of operations; the manager decides when."""

    def __init__(self, store: Store, registry: Registry, settings: Settings) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings

    def _journal(self, op: OperationRecord, step: str, progress: int, **entries: Any) -> None:
        self.store.journal(op.id, step, progress, **entries)

    # --- take ---------------------------------------------------------------------

    async def take(self, op: OperationRecord, snap: Snapshot, *, finish: bool = False) -> Snapshot:
        """Take a planned snapshot; returns it READY or raises TakeFailed (then ERROR).
        ``finish``: mark the operation done in the same transaction as READY."""
        agent = self.registry.agent(snap.agent)
        vm = await agent.describe_vm(snap.vm_id)
        if vm.state not in (VMState.RUNNING, VMState.STOPPED):
            raise TakeFailed(
                FailedPrecondition(
                    f"VM {vm.id} is {vm.state.name} now; it must be RUNNING or STOPPED",
                    reason="VM_STATE",
                )
            )
        if snap.include_memory and vm.state is not VMState.RUNNING:
            raise TakeFailed(
                FailedPrecondition(
                    f"VM {vm.id} is {vm.state.name} now; a memory snapshot needs it RUNNING",
                    reason="VM_STATE",
                )
            )
        capabilities = {
            g.owner: self._capabilities(g.owner) for g in snap.groups if g.kind is GroupKind.DRIVER
        }
        freeze_needed = needs_freeze(
            snap.groups, snap.quiesce, vm.state, capabilities, include_memory=snap.include_memory
        )
        warnings = list(snap.warnings)
        snap = replace(snap, state=SnapshotState.CREATING)
        planned = list(snap.groups)

        freeze: _Freeze | None = None
        called: list[Group] = []
        outcomes: list[SnapshotResult | BaseException] = []
        failure: VMSnapError | None = None
        try:
            method = self._quiesce_method(snap) if freeze_needed else None
            # One durable write before any side effect (each a commit, an fsync): the
            # snapshot is CREATING, and every planned group is owed a delete from here
            # on until READY (write-ahead of the takes; recovery deletes every planned
            # group after a crash anyway).
            await self.store.write(
                self.store.w_save_snapshot(snap),
                self.store.w_set_cleanup(snap.id, planned),
                self.store.w_journal(
                    op.id,
                    "quiescing" if method is not None else f"taking {len(planned)} groups",
                    15 if method is not None else 30,
                    freeze_needed=freeze_needed,
                    called=[g.owner for g in planned],
                    **({"quiesce_method": method.name} if method is not None else {}),
                ),
            )
            if method is not None:
                freeze = await self._quiesce(op, snap, agent, vm, warnings, method=method)
            called = planned
            deadline = self._take_deadline(freeze)
            consistency = freeze.result.consistency if freeze else Consistency.CRASH
            # The token is journaled beside the takes rather than before them: it is
            # what recovery thaws with, and the freeze happened before it could be
            # written either way; the agent's lease thaws the VM if even that is lost.
            # Overlapping the two keeps one fsync out of the freeze window.
            token_saved = (
                asyncio.ensure_future(
                    self.store.write(
                        self.store.w_journal(
                            op.id,
                            f"taking {len(called)} groups",
                            30,
                            quiesce_token=freeze.result.token,
                        )
                    )
                )
                if freeze is not None
                else None
            )
            outcomes = list(
                await asyncio.gather(
                    *(
                        self._take_group(
                            g,
                            snap,
                            vm,
                            quiesced=freeze is not None,
                            consistency=consistency,
                            deadline=deadline,
                        )
                        for g in called
                    ),
                    return_exceptions=True,
                )
            )
            if token_saved is not None:
                await token_saved
        except VMSnapError as exc:
            failure = exc
        finally:
            # Thaw first, whatever happened: the VM is never left frozen.
            thaw_error = await self._thaw(op, freeze) if freeze else None
        thawed = freeze is not None and freeze.thawed
        if freeze is not None:
            frozen_for = time.monotonic() - freeze.started_mono
            snap = replace(snap, freeze_start=freeze.started, freeze_seconds=frozen_for)
        for group, outcome in zip(called, outcomes, strict=False):
            if isinstance(outcome, BaseException) and failure is None:
                failure = _as_error(outcome, _label(group))
        if failure is None and thaw_error is not None:
            failure = thaw_error
        results = {
            g.owner: o
            for g, o in zip(called, outcomes, strict=False)
            if isinstance(o, SnapshotResult)
        }
        called = [g.with_result(results.get(g.owner)) for g in called]
        thaw_steps = [self.store.w_journal(op.id, "thawed", 60, quiesce_token="")] if thawed else []
        if failure is not None:
            if thaw_steps:
                await self.store.write(*thaw_steps)
            await self._fail_take(op, snap, called, failure, warnings)

        snap = replace(snap, groups=tuple(called))
        if not all(g.ready for g in snap.groups):
            # Post-processing goes on: keep the results before polling.
            await self.store.write(*thaw_steps, self.store.w_save_snapshot(snap))
            thaw_steps = []
            try:
                snap = await self._await_ready(op, snap)
            except VMSnapError as exc:
                await self._fail_take(op, snap, list(snap.groups), exc, warnings)

        # A result's consistency is what the driver achieved *on its own* (the
        # contract: CRASH for a consistent group). Every group was cut inside the
        # freeze, so a frozen VM's snapshot has the freeze's level, whatever each
        # driver could have promised without it.
        group_levels = [g.result.consistency for g in snap.groups if g.result is not None]
        if freeze is not None:
            achieved = freeze.result.consistency
        else:
            achieved = min(group_levels) if group_levels else Consistency.CRASH
        if (
            snap.quiesce is not QuiescePolicy.OFF
            and vm.state is VMState.RUNNING
            and achieved < Consistency.FILESYSTEM
        ):
            warnings.append(
                f"guest quiesce was asked ({snap.quiesce.name}) but the snapshot is only "
                f"{achieved.name}-consistent"
            )
        current = self.store.current_snapshot(snap.vm_id)
        snap = replace(
            snap,
            state=SnapshotState.READY,
            consistency=achieved,
            warnings=tuple(dict.fromkeys(warnings)),
            parent_id=current.id if current else "",
            current=True,
        )
        # READY, current, the owed deletes cleared (and the operation finished when
        # asked): one transaction, so a crash leaves all of it or none.
        await self.store.write(
            *thaw_steps,
            self.store.w_commit_ready(snap),
            *([self.store.w_finish_operation(op.id, None, "done")] if finish else []),
        )
        return snap

    def _capabilities(self, driver_name: str) -> frozenset[Capability]:
        entry = self.registry.driver_entry(driver_name)
        return entry.info.capabilities if entry and entry.info else frozenset()

    def _quiesce_method(self, snap: Snapshot) -> QuiesceMethod:
        info = self.registry.agent_entry(snap.agent)
        offered = (info.info.quiesce_methods if info and info.info else frozenset()) or frozenset(
            QuiesceMethod
        ) - {QuiesceMethod.UNSPECIFIED}
        return _choose_method(snap.quiesce, offered, snap.agent)

    async def _quiesce(
        self,
        op: OperationRecord,
        snap: Snapshot,
        agent: HypervisorAgent,
        vm: VM,
        warnings: list[str],
        *,
        method: QuiesceMethod,
    ) -> _Freeze:
        best_effort = snap.quiesce is not QuiescePolicy.REQUIRED
        lease = self.settings.quiesce_lease_seconds
        started, started_mono = datetime.now(UTC), time.monotonic()
        try:
            result = await _with_deadline(
                agent.quiesce(vm.id, method, lease, best_effort, op.id), lease, "Quiesce"
            )
        except FailedPrecondition as exc:
            if snap.quiesce is QuiescePolicy.REQUIRED:
                raise FailedPrecondition(
                    f"quiesce is REQUIRED but the guest could not be frozen: {exc.message}; "
                    "fix the guest agent, or take the snapshot with quiesce BEST_EFFORT to "
                    "accept a lower consistency (it is recorded)",
                    reason=exc.reason or "QUIESCE_FAILED",
                ) from exc
            raise
        if result.warning:
            warnings.append(f"quiesce: {result.warning} (achieved {result.consistency.name})")
        freeze = _Freeze(agent, result, started, started_mono)
        freeze.renewals = asyncio.create_task(self._renew(agent, result.token, lease))
        return freeze

    async def _renew(self, agent: HypervisorAgent, token: str, lease: float) -> None:
        while True:
            await asyncio.sleep(lease / 3)
            try:
                await agent.renew_quiesce(token, lease)
            except VMSnapError as exc:
                log.warning("lease renewal failed", extra={"fields": {"error": str(exc)}})

    def _take_deadline(self, freeze: _Freeze | None) -> float:
        if freeze is None:
            return self.settings.take_timeout_seconds
        # Inside the lease: a take still running when the agent would thaw by itself
        # could not be consistent anyway.
        left = (freeze.result.expire_time - datetime.now(UTC)).total_seconds()
        return max(0.1, min(self.settings.take_timeout_seconds, left * 0.8))

    async def _take_group(
        self,
        group: Group,
        snap: Snapshot,
        vm: VM,
        *,
        quiesced: bool,
        consistency: Consistency,
        deadline: float,
    ) -> SnapshotResult:
        if group.kind is GroupKind.HYPERVISOR:
            agent = self.registry.agent(group.owner)
            native = await _with_deadline(
                agent.take_native_snapshot(vm.id, snap.id, group.disks, snap.include_memory),
                deadline,
                f"native snapshot on agent {group.owner}",
            )
            level = Consistency.APPLICATION if snap.include_memory else consistency
            return native_result(snap.id, native, vm, level)
        driver = self.registry.driver(group.owner)
        volumes = tuple(v for d in group.disks if (v := vm.volume(d)) is not None)
        request = TakeRequest(
            vm_snapshot_id=snap.id,
            vm=vm,
            volumes=volumes,
            quiesced=quiesced,
            consistency=consistency,
            parameters=snap.parameters,
            vm_snapshot_name=snap.name,
        )
        return await _with_deadline(
            driver.take_snapshot(request), deadline, f"TakeVMSnapshot on driver {group.owner}"
        )

    async def _thaw(self, op: OperationRecord, freeze: _Freeze) -> VMSnapError | None:
        if freeze.renewals is not None:
            freeze.renewals.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await freeze.renewals
        token = freeze.result.token
        last: VMSnapError | None = None
        for attempt in range(5):
            try:
                result = await freeze.agent.unquiesce(token)
            except VMSnapError as exc:
                last = exc
                await asyncio.sleep(0.1 * 2**attempt)
                continue
            freeze.thawed = True  # the caller journals it with its next write
            if not result.thawed_now:
                return Aborted(
                    "the freeze lease ran out before every group had cut: the agent thawed the "
                    "VM by itself, so the groups may not share one point in time; retry, or "
                    "raise quiesce_lease_seconds",
                    reason="FREEZE_LEASE_EXPIRED",
                )
            return None
        # The agent's lease thaws the VM anyway; recovery retries with the journaled token.
        return last

    async def _await_ready(self, op: OperationRecord, snap: Snapshot) -> Snapshot:
        """Poll results with ready=false (post-processing continues after the thaw)."""
        if all(g.ready for g in snap.groups):
            return snap
        self._journal(op, "post-processing", 70)
        give_up = time.monotonic() + self.settings.post_processing_timeout_seconds
        delay = 0.05
        groups = list(snap.groups)
        while True:
            for i, g in enumerate(groups):
                if not g.ready and g.kind is GroupKind.DRIVER:
                    result = await self.registry.driver(g.owner).get_snapshot(snap.id)
                    groups[i] = g.with_result(result)
            snap = replace(snap, groups=tuple(groups))
            if all(g.ready for g in groups):
                self.store.save_snapshot(snap)
                return snap
            if time.monotonic() > give_up:
                pending = ", ".join(g.owner for g in groups if not g.ready)
                raise DeadlineExceeded(
                    f"post-processing on {pending} did not finish within "
                    f"{self.settings.post_processing_timeout_seconds:g} s",
                    reason="POST_PROCESSING_TIMEOUT",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _fail_take(
        self,
        op: OperationRecord,
        snap: Snapshot,
        called: Sequence[Group],
        cause: VMSnapError,
        warnings: list[str],
    ) -> None:
        """Compensate (the VM is already thawed) and record ERROR; always raises."""
        self._journal(op, "rolling back", 80)
        self.store.set_cleanup(snap.id, called)
        left = await self.cleanup(snap.id, snap.vm_id, snap.agent)
        message = f"take failed: {cause.message}"
        if called:
            message += f"; rolled back on {len(called)} groups"
        if left:
            message += f"; delete still owed on {', '.join(left)} (retried in the background)"
        error = type(cause)(message, reason=cause.reason)
        self.store.save_snapshot(
            replace(
                snap,
                state=SnapshotState.ERROR,
                groups=tuple(called) or snap.groups,
                error=error_info(error),
                warnings=tuple(dict.fromkeys(warnings)),
                current=False,
            )
        )
        raise TakeFailed(error)

    # --- delete (also the compensation of a failed take) ----------------------------

    async def cleanup(self, snapshot_id: str, vm_id: str, agent_name: str) -> list[str]:
        """Delete the snapshot on every group still owed a delete; returns those left."""
        owed = [Group.from_json(g) for g in self.store.get_cleanup(snapshot_id)]
        if not owed:
            return []
        outcomes = await asyncio.gather(
            *(self._delete_group(g, snapshot_id, vm_id) for g in owed), return_exceptions=True
        )
        left = [g for g, o in zip(owed, outcomes, strict=True) if isinstance(o, BaseException)]
        for g, o in zip(owed, outcomes, strict=True):
            if isinstance(o, BaseException):
                log.warning(
                    "delete owed",
                    extra={
                        "fields": {"snapshot": snapshot_id, "group": _label(g), "error": str(o)}
                    },
                )
        await self.store.write(self.store.w_set_cleanup(snapshot_id, left))
        return [_label(g) for g in left]

    async def _delete_group(self, group: Group, snapshot_id: str, vm_id: str) -> None:
        timeout = self.settings.call_timeout_seconds
        for attempt in range(3):
            try:
                if group.kind is GroupKind.HYPERVISOR:
                    agent = self.registry.agent(group.owner)
                    await _with_deadline(
                        agent.delete_native_snapshot(vm_id, snapshot_id), timeout, "delete"
                    )
                else:
                    driver = self.registry.driver(group.owner)
                    await _with_deadline(
                        driver.delete_snapshot(snapshot_id, group.result), timeout, "delete"
                    )
                return
            except (TransientError, Aborted):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.1 * 2**attempt)

    async def delete(self, op: OperationRecord, snap: Snapshot) -> bool:
        """Expunge a snapshot; True when every group confirmed (then REMOVED)."""
        if snap.state is not SnapshotState.EXPUNGING:
            # Out of the tree first: children → parent, current → parent.
            self.store.detach(snap)
            self.store.set_cleanup(snap.id, snap.groups)
            self.store.set_state(snap.id, SnapshotState.EXPUNGING)
        self._journal(op, "deleting", 30)
        left = await self.cleanup(snap.id, snap.vm_id, snap.agent)
        if left:
            self._journal(op, f"waiting for {', '.join(left)}", 50)
            return False
        self.store.set_state(snap.id, SnapshotState.REMOVED)
        return True

    # --- revert -------------------------------------------------------------------

    async def revert(self, op: OperationRecord, snap: Snapshot, stop_vm: bool) -> None:
        """Bring the VM back to ``snap``: fully, or not at all (raises TakeFailed)."""
        agent = self.registry.agent(snap.agent)
        vm = await agent.describe_vm(snap.vm_id)
        self.store.set_state(snap.id, SnapshotState.REVERTING)
        try:
            if not snap.include_memory and vm.state is not VMState.STOPPED:
                if not stop_vm:
                    raise FailedPrecondition(
                        f"VM {vm.id} is {vm.state.name}; a disk-only revert needs it STOPPED: "
                        "stop it first or pass stop_vm=true",
                        reason="VM_NOT_STOPPED",
                    )
                self._journal(op, "stopping the VM", 10)
                vm = await agent.stop_vm(vm.id, False)
            if snap.include_memory or len(snap.groups) == 1:
                await self._revert_group(snap.groups[0], snap, vm, snap.id, snap.groups[0].result)
            else:
                await self._revert_many(op, snap, vm)
        except VMSnapError as exc:
            self.store.set_state(snap.id, SnapshotState.READY)
            raise TakeFailed(exc) from exc
        self.store.set_state(snap.id, SnapshotState.READY)
        self.store.make_current(snap.vm_id, snap.id)

    async def _revert_group(
        self,
        group: Group,
        snap: Snapshot,
        vm: VM,
        target_id: str,
        result: SnapshotResult | None,
        *,
        undo_id: str = "",
    ) -> SnapshotResult | None:
        timeout = self.settings.take_timeout_seconds
        if group.kind is GroupKind.HYPERVISOR:
            agent = self.registry.agent(group.owner)
            await _with_deadline(agent.revert_native_snapshot(vm.id, target_id), timeout, "revert")
            return None
        if result is None:
            raise Internal(f"group {group.owner} of {snap.id} has no stored result to revert to")
        driver = self.registry.driver(group.owner)
        outcome = await _with_deadline(
            driver.revert_snapshot(
                RevertRequest(
                    vm_snapshot_id=target_id,
                    snapshot=result,
                    vm=vm,
                    save_current_state=bool(undo_id),
                    undo_vm_snapshot_id=undo_id,
                )
            ),
            timeout,
            f"RevertVMSnapshot on driver {group.owner}",
        )
        return outcome.undo

    async def _revert_many(self, op: OperationRecord, snap: Snapshot, vm: VM) -> None:
        """Several groups: keep the current state of each, revert all, undo on failure."""
        safety_id = f"{snap.id}-keep-{op.id[:8]}"
        undo_capable = {
            g.owner
            for g in snap.groups
            if g.kind is GroupKind.DRIVER and Capability.REVERT_UNDO in self._capabilities(g.owner)
        }
        self._journal(op, "keeping the current state", 20, safety_id=safety_id)
        kept: dict[str, SnapshotResult | None] = {}
        try:
            for g in snap.groups:
                if g.owner in undo_capable:
                    continue  # the array keeps it during the revert (save_current_state)
                kept[g.owner] = await self._take_group(
                    g,
                    replace(snap, id=safety_id, include_memory=False),
                    vm,
                    quiesced=False,
                    consistency=Consistency.CRASH,
                    deadline=self.settings.take_timeout_seconds,
                )
            self._journal(op, "reverting", 50)
            outcomes = await asyncio.gather(
                *(
                    self._revert_group(
                        g,
                        snap,
                        vm,
                        snap.id,
                        g.result,
                        undo_id=safety_id if g.owner in undo_capable else "",
                    )
                    for g in snap.groups
                ),
                return_exceptions=True,
            )
            for g, o in zip(snap.groups, outcomes, strict=True):
                if g.owner in undo_capable and isinstance(o, SnapshotResult):
                    kept[g.owner] = o
            failed = [
                (g, o)
                for g, o in zip(snap.groups, outcomes, strict=True)
                if isinstance(o, BaseException)
            ]
            if failed:
                group, exc = failed[0]
                self._journal(op, "rolling back the revert", 70)
                # Groups that reverted, and those whose outcome is unknown (a
                # non-final error: the revert may have happened), go back.
                touched = {
                    g.owner
                    for g, o in zip(snap.groups, outcomes, strict=True)
                    if not isinstance(o, BaseException)
                    or not (isinstance(o, VMSnapError) and o.final)
                }
                cause = _as_error(exc, _label(group))
                try:
                    await self._roll_back(
                        snap, vm, safety_id, {k: v for k, v in kept.items() if k in touched}
                    )
                except VMSnapError as undo_exc:
                    raise type(cause)(
                        f"revert failed on {_label(group)}: {cause.message}; putting the VM back "
                        f"failed too ({undo_exc}): its disks may be partly reverted, revert "
                        "again to a snapshot",
                        reason="REVERT_PARTIAL",
                    ) from undo_exc
                raise type(cause)(
                    f"revert failed on {_label(group)}: {cause.message}; the VM was put back as "
                    "it was before the revert",
                    reason=cause.reason,
                )
        finally:
            await self._drop_kept(snap, vm, safety_id, kept)

    async def _roll_back(
        self, snap: Snapshot, vm: VM, safety_id: str, kept: dict[str, SnapshotResult | None]
    ) -> None:
        for g in snap.groups:
            if g.owner not in kept:
                continue
            await self._revert_group(g, snap, vm, safety_id, kept[g.owner])

    async def _drop_kept(
        self, snap: Snapshot, vm: VM, safety_id: str, kept: dict[str, SnapshotResult | None]
    ) -> None:
        for g in snap.groups:
            if g.owner not in kept:
                continue
            try:
                await self._delete_group(g.with_result(kept[g.owner]), safety_id, vm.id)
            except VMSnapError as exc:
                log.warning(
                    "could not delete the kept state",
                    extra={"fields": {"id": safety_id, "group": _label(g), "error": str(exc)}},
                )


def _choose_method(
    policy: QuiescePolicy, offered: frozenset[QuiesceMethod], agent: str
) -> QuiesceMethod:
    if policy is QuiescePolicy.OFF:
        if QuiesceMethod.OVERLAY in offered:
            return QuiesceMethod.OVERLAY
        raise FailedPrecondition(
            f"the plan needs a freeze but agent {agent} offers no overlay freeze; ask for "
            "quiesce BEST_EFFORT or REQUIRED",
            reason="NO_QUIESCE_METHOD",
        )
    for method in (QuiesceMethod.GUEST_FREEZE_AND_OVERLAY, QuiesceMethod.GUEST_FREEZE):
        if method in offered:
            return method
    if policy is QuiescePolicy.BEST_EFFORT and QuiesceMethod.OVERLAY in offered:
        return QuiesceMethod.OVERLAY
    raise FailedPrecondition(
        f"agent {agent} offers no guest freeze; take the snapshot with quiesce OFF or BEST_EFFORT",
        reason="NO_QUIESCE_METHOD",
    )


def _label(group: Group) -> str:
    kind = "driver" if group.kind is GroupKind.DRIVER else "agent"
    return f"{kind} {group.owner}"


def _as_error(exc: BaseException, where: str) -> VMSnapError:
    if isinstance(exc, VMSnapError):
        return type(exc)(f"{where}: {exc.message}", reason=exc.reason)
    log.error(
        "unexpected exception", extra={"fields": {"where": where, "type": type(exc).__name__}}
    )
    return Internal(f"{where}: unexpected {type(exc).__name__} in the host; see its log")


__all__ = ["Executor", "TakeFailed", "error_info"]
