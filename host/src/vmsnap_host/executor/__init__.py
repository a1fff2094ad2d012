"""Carrying out operations: one module per job.

- :mod:`.take` — quiesce → parallel take → thaw → check → READY, or compensate;
- :mod:`.revert` — all or nothing across groups, across failures and crashes;
- :mod:`.clone` — a new VM from a snapshot, compensated on failure or restart;
- :mod:`.cleanup` — owed deletes, the delete operation, kept revert states;
- :mod:`.freeze` — the freeze lifecycle (lease, renewals, a thaw that is sure);
- :mod:`.freeze_api` — freezes held for third-party tools (FreezeVM, RenewFreeze, ThawVM);
- :mod:`.groups` — calls to one group's owner, every result checked;
- :mod:`.errors` — what an operation records, context that keeps details.

:class:`Executor` is what the manager and recovery use: :meth:`Executor.run`
ends every operation in a defined state whatever is raised inside it
(docs/design.md, "State machine").
"""

from __future__ import annotations

import asyncio
import logging

from vmsnap_host.config import Settings
from vmsnap_host.decisions import DecisionCache
from vmsnap_host.executor.cleanup import Cleanup
from vmsnap_host.executor.clone import CloneVM
from vmsnap_host.executor.errors import OperationFailed, as_error, error_info
from vmsnap_host.executor.freeze import FreezeKeeper
from vmsnap_host.executor.freeze_api import FreezeAPI
from vmsnap_host.executor.groups import GroupCalls, native_result
from vmsnap_host.executor.revert import Revert, Unsettled
from vmsnap_host.executor.take import Prepared, Take
from vmsnap_host.model import OperationRecord, OperationType, SnapshotState
from vmsnap_host.registry import Registry
from vmsnap_host.state import LeaseLost, OperationClosed, StaleMove
from vmsnap_host.store import Store
from vmsnap_host.store.store import Finished
from vmsnap_sdk.errors import Aborted, NotFound, Reason, VMSnapError

log = logging.getLogger("vmsnap.host.executor")


class Executor:
    """Runs the side effects of operations; the manager decides when."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        settings: Settings,
        *,
        decisions: DecisionCache | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.calls = GroupCalls(registry, settings)
        self.freezes = FreezeKeeper(settings)
        self.cleanup = Cleanup(store, self.calls)
        self.take = Take(
            store, registry, settings, self.calls, self.cleanup, self.freezes, decisions
        )
        self.revert = Revert(store, registry, settings, self.calls, self.cleanup)
        self.clone = CloneVM(store, registry, settings)
        self.freeze_api = FreezeAPI(store, registry, settings.call_timeout_seconds)

    async def run(
        self, op: OperationRecord, *, resume: bool = False, prepared: Prepared | None = None
    ) -> Finished | None:
        """Run (or, after a crash, resume) one operation to a defined end. Returns
        when the operation is finished, or left open on purpose (a delete waiting for
        an owner, a revert that cannot reach either side now): those are picked up
        again on the reconcile interval. ``prepared``: a take's first write as its
        admission built (and, when it started at once, committed) it. A take that
        ends READY returns what its last write left (Finished: its waiters are
        answered with it); anything else None (they read the catalog)."""
        if op.type is OperationType.FREEZE:
            # A third party's freeze: held until thawed or lapsed (no snapshot).
            try:
                await self.freeze_api.hold(op, resume=resume)
            except (StaleMove, OperationClosed, LeaseLost) as exc:
                log.warning(
                    "stale freeze work stopped",
                    extra={"fields": {"operation": op.id, "why": str(exc)}},
                )
            return None
        # A take started at once: admission just committed its snapshot (CREATING,
        # under this lease) and handed it over; no read.
        snap = (
            prepared.snap
            if prepared is not None
            else (await self.store.read(self.store.get_snapshot, op.vm_snapshot_id))
        )
        try:
            if snap is None:
                error = NotFound(f"VM snapshot {op.vm_snapshot_id} does not exist any more")
                await self.store.write(self.store.w_finish(op.id, error_info(error), "failed"))
                return None
            if op.type is OperationType.CLONE:
                if resume:
                    await self.clone.roll_back(op)
                else:
                    await self.clone.run(op, snap)
            elif op.type is OperationType.CREATE:
                if resume:
                    await self.roll_back_take(op)
                else:
                    return await self.take.run(op, snap, prepared)
            elif op.type is OperationType.REVERT:
                if resume:
                    await self.revert.resume(op, snap)
                else:
                    await self.revert.run(op, snap, bool(op.params.get("stop_vm")))
            else:
                await self.cleanup.delete(op, snap)
        except OperationFailed:
            return None  # its failure is on the operation already (one commit with its end)
        except Unsettled as exc:
            log.warning(
                "revert not settled yet; retried",
                extra={"fields": {"operation": op.id, "why": str(exc)}},
            )
        except (StaleMove, OperationClosed, LeaseLost) as exc:
            # Another worker (or recovery, or the replica that took the VM over)
            # moved this operation's snapshot first: this work is out of date.
            # Refused, logged, nothing applied.
            log.warning(
                "stale work stopped", extra={"fields": {"operation": op.id, "why": str(exc)}}
            )
        except asyncio.CancelledError:
            raise
        except VMSnapError as exc:
            if op.type is not OperationType.CLONE:
                await self._end_unexpected(op, as_error(exc, f"{op.type.name.lower()} operation"))
                return None
            # A clone's compensation could not finish (a driver or the agent down):
            # left open, so that the next reconcile tick resumes it (roll_back) until
            # nothing of it is left.
            log.warning(
                "clone compensation unfinished; retried",
                extra={"fields": {"operation": op.id, "why": exc.message}},
            )
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the operation open
            await self._end_unexpected(op, as_error(exc, f"{op.type.name.lower()} operation"))
        return None

    async def _end_unexpected(self, op: OperationRecord, error: VMSnapError) -> None:
        snap = await self.store.read(self.store.get_snapshot, op.vm_snapshot_id)
        try:
            if snap is not None and op.type is OperationType.CREATE:
                if snap.state in (SnapshotState.ALLOCATED, SnapshotState.CREATING):
                    await self.take.fail(op, snap, error, list(snap.warnings))
            elif (
                snap is not None
                and op.type is OperationType.REVERT
                and snap.state is SnapshotState.REVERTING
            ):
                await self.revert.settle(op, snap, error, {})
            await self.store.write(self.store.w_finish(op.id, error_info(error), "failed"))
        except (OperationFailed, Unsettled, StaleMove, OperationClosed, LeaseLost):
            pass

    async def roll_back_take(self, op: OperationRecord) -> None:
        """A take interrupted by a crash: thaw what it may hold (by token, else by
        operation id), delete every planned group, ERROR — or finish it when READY
        was committed just before the crash."""
        snap = await self.store.read(self.store.get_snapshot, op.vm_snapshot_id)
        if snap is None:
            await self.store.write(self.store.w_finish(op.id, None, "snapshot gone"))
            return
        if snap.state is SnapshotState.READY:
            await self.store.write(self.store.w_finish(op.id, None, "done"))
            return
        thawed = "the VM was not frozen"
        if op.journal.get("quiesce_method") or op.journal.get("quiesce_token"):
            entry = self.registry.agent_entry(snap.agent)
            agent = self.registry.agent(snap.agent) if entry is not None else None
            thawed = await self.freezes.thaw_recorded(
                agent, str(op.journal.get("quiesce_token") or ""), op.id
            )
        cause = Aborted(
            f"the host restarted while taking this snapshot (step {op.step or 'queued'}); "
            f"it was rolled back: {thawed}; take it again with a new request_id",
            reason=Reason.HOST_RESTARTED,
        )
        await self.take.fail(op, snap, cause, list(snap.warnings))


__all__ = ["Executor", "OperationFailed", "error_info", "native_result"]
