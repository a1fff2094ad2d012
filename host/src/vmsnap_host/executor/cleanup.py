"""Nothing left behind: owed deletes, the delete operation, and kept revert states.

A group is *owed a delete* from the moment a take may have made something on
it until its owner confirmed the delete (``cleanup_json`` on the snapshot). A
kept revert state is owed a delete from its journal row until its owner
confirmed. Both are retried by :meth:`Cleanup.retry_owed` on the reconcile
interval until they are gone; a failure is never only logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from vmsnap_host.executor.errors import label
from vmsnap_host.executor.groups import GroupCalls
from vmsnap_host.model import Group, KeptState, OperationRecord, Snapshot, SnapshotState
from vmsnap_host.state import OperationClosed, StaleMove
from vmsnap_host.store import Store

log = logging.getLogger("vmsnap.host.cleanup")


class Cleanup:
    def __init__(self, store: Store, calls: GroupCalls) -> None:
        self.store = store
        self.calls = calls

    async def owed(self, snapshot_id: str, vm_id: str) -> list[str]:
        """Delete the snapshot on every group still owed a delete; returns the labels
        of those left (recorded, retried later)."""
        owed = await self.store.read(self.store.get_cleanup, snapshot_id)
        if not owed:
            return []
        outcomes = await asyncio.gather(
            *(self.calls.delete(g, snapshot_id, vm_id) for g in owed), return_exceptions=True
        )
        left: list[Group] = []
        for g, o in zip(owed, outcomes, strict=True):
            if isinstance(o, BaseException):
                left.append(g)
                log.warning(
                    "delete owed",
                    extra={"fields": {"snapshot": snapshot_id, "group": label(g), "error": str(o)}},
                )
        await self.store.write(self.store.w_set_cleanup(snapshot_id, left))
        return [label(g) for g in left]

    async def delete(self, op: OperationRecord, snap: Snapshot) -> bool:
        """Expunge a snapshot; True when every group confirmed (then REMOVED and the
        operation finished in the same transaction)."""
        if snap.state is SnapshotState.REMOVED:
            # Another delete of the same snapshot, admitted before this one ran,
            # finished it: deleting is idempotent.
            await self.store.write(self.store.w_finish(op.id, None, "already removed"))
            return True
        if snap.state is not SnapshotState.EXPUNGING:
            # Out of the tree, EXPUNGING and every group owed a delete: one commit, a
            # compare-and-set from READY or ERROR (a revert that got there first makes
            # this one stale; a second delete, this one's work).
            try:
                await self.store.write(
                    self.store.w_move(snap.id, SnapshotState.EXPUNGING, cleanup=snap.groups),
                    self.store.w_detach(snap),
                    self.store.w_journal(op.id, "deleting", 30),
                )
            except StaleMove:
                now = await self.store.read(self.store.get_snapshot, snap.id)
                if now is None or now.state not in (
                    SnapshotState.EXPUNGING,
                    SnapshotState.REMOVED,
                ):
                    raise
                return await self.delete(op, now)
        left = await self.owed(snap.id, snap.vm_id)
        if left:
            await self.store.write(
                self.store.w_journal(op.id, f"waiting for {', '.join(left)} (retried)", 50)
            )
            return False
        await self.store.write(
            self.store.w_move(snap.id, SnapshotState.REMOVED),
            self.store.w_finish(op.id, None, "done"),
        )
        return True

    async def drop_kept(self, kept: Sequence[KeptState]) -> list[KeptState]:
        """Delete kept revert states on their owners and forget each one confirmed;
        returns those left (retried by :meth:`retry_owed`)."""
        outcomes = await asyncio.gather(
            *(self.calls.delete(k.group, k.id, k.vm_id) for k in kept), return_exceptions=True
        )
        gone = [k for k, o in zip(kept, outcomes, strict=True) if not isinstance(o, BaseException)]
        if gone:
            await self.store.write(*(self.store.w_forget_kept(k.id, k.owner) for k in gone))
        left = [k for k in kept if k not in gone]
        for k in left:
            log.warning(
                "kept state not deleted yet", extra={"fields": {"id": k.id, "owner": k.owner}}
            )
        return left

    async def retry_owed(self, running: frozenset[str]) -> None:
        """Retry every owed delete and every kept state of a finished operation;
        finish deletes whose last group confirmed. ``running``: ids of operations in
        flight (on any replica), whose objects are theirs to handle."""
        for snap in await self.store.read(self.store.snapshots_with_cleanup):
            if snap.state not in (
                SnapshotState.ERROR,
                SnapshotState.EXPUNGING,
                SnapshotState.REMOVED,
            ):
                continue  # an operation in flight owns it
            left = await self.owed(snap.id, snap.vm_id)
            if left or snap.state is not SnapshotState.EXPUNGING:
                continue
            ops = [
                op
                for op in await self.store.read(self.store.unfinished_operations)
                if op.vm_snapshot_id == snap.id
            ]
            if any(op.id in running for op in ops):
                continue
            try:
                await self.store.write(
                    self.store.w_move(snap.id, SnapshotState.REMOVED),
                    *(self.store.w_finish(op.id, None, "done") for op in ops),
                )
            except (StaleMove, OperationClosed):
                continue  # its delete (on another replica) got there first
        kept = await self.store.read(self.store.kept_states)
        done = await self.store.read(self.store.operations_done, [k.operation_id for k in kept])
        finished = [
            k for k in kept if k.operation_id not in running and done.get(k.operation_id, True)
        ]
        if finished:
            await self.drop_kept(finished)


__all__ = ["Cleanup"]
