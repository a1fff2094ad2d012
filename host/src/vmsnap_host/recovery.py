"""After a crash: nothing stays CREATING, REVERTING or EXPUNGING forever.

On start every unfinished operation whose VM lease is not held by another live
replica is resolved: a take is rolled back (thaw with the journaled token,
DeleteVMSnapshot(same id) on every planned group and the native snapshot,
ERROR); a revert or a delete is resumed. In the background, deletes still owed
(drivers that were down) are retried until every group confirmed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from vmsnap_host.executor import error_info
from vmsnap_host.manager import Manager
from vmsnap_host.model import OperationRecord, OperationType, SnapshotState
from vmsnap_sdk.errors import Aborted, VMSnapError

log = logging.getLogger("vmsnap.host.recovery")

_PARALLEL_ROLLBACKS = 64


class Recovery:
    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.store = manager.store
        self.registry = manager.registry
        self.executor = manager.executor

    async def resolve_on_start(self) -> None:
        # Interrupted takes are rolled back concurrently (bounded): each waits on
        # RPCs and on catalog commits, which the store's writer groups together.
        limit = asyncio.Semaphore(_PARALLEL_ROLLBACKS)

        async def roll_back(op: OperationRecord) -> None:
            async with limit:
                await self._roll_back_take(op)

        rollbacks = []
        for op in self.store.unfinished_operations():
            lease = self.store.lease_owner(op.vm_id)
            if lease is not None and lease[0] != self.manager.owner and lease[1] > time.time():
                continue  # a live replica owns that VM; it finishes its own work
            log.info(
                "resolving an unfinished operation",
                extra={"fields": {"operation": op.id, "type": op.type.name, "step": op.step}},
            )
            if op.type is OperationType.CREATE:
                rollbacks.append(roll_back(op))
            else:
                self.manager.resume(op)
        outcomes = await asyncio.gather(*rollbacks, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _roll_back_take(self, op: OperationRecord) -> None:
        snap = self.store.get_snapshot(op.vm_snapshot_id)
        if snap is None:
            await self.store.write(self.store.w_finish_operation(op.id, None, "snapshot gone"))
            return
        if snap.state is SnapshotState.READY:
            # Committed just before the crash.
            await self.store.write(self.store.w_finish_operation(op.id, None, "done"))
            return
        token = str(op.journal.get("quiesce_token") or "")
        thawed = "the VM was not frozen"
        if token:
            try:
                await self.registry.agent(snap.agent).unquiesce(token)
                thawed = "the VM was thawed"
            except VMSnapError as exc:
                # The agent's lease thaws it anyway: a freeze never outlives its lease.
                thawed = f"the VM thaws when its freeze lease runs out ({exc.message})"
        # Every planned group: the crash may have come after any of the calls, and a
        # delete of an id the array never saw is fine.
        await self.store.write(self.store.w_set_cleanup(snap.id, snap.groups))
        left = await self.executor.cleanup(snap.id, snap.vm_id, snap.agent)
        message = (
            f"the host restarted while taking this snapshot (step {op.step or 'queued'}); "
            f"it was rolled back: {thawed}"
        )
        if left:
            message += f"; delete still owed on {', '.join(left)} (retried in the background)"
        else:
            message += "; nothing is left on any array"
        error = Aborted(message + "; take it again with a new request_id", reason="HOST_RESTARTED")
        await self.store.write(
            self.store.w_save_snapshot(
                replace(snap, state=SnapshotState.ERROR, error=error_info(error), current=False)
            ),
            self.store.w_finish_operation(op.id, error_info(error), "rolled back after a restart"),
        )

    async def reconcile_once(self) -> None:
        """Retry every owed delete; finish deletes whose last group confirmed."""
        for snap in self.store.snapshots_with_cleanup():
            if snap.state not in (
                SnapshotState.ERROR,
                SnapshotState.EXPUNGING,
                SnapshotState.REMOVED,
            ):
                continue  # an operation in flight owns it
            left = await self.executor.cleanup(snap.id, snap.vm_id, snap.agent)
            if left or snap.state is not SnapshotState.EXPUNGING:
                continue
            self.store.set_state(snap.id, SnapshotState.REMOVED)
            for op in self.store.unfinished_operations():
                if op.type is OperationType.DELETE and op.vm_snapshot_id == snap.id:
                    self.store.finish_operation(op.id, None, "done")

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile_once()
            except Exception:
                log.exception("reconcile round failed")
