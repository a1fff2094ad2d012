"""Live operation events: one in-process broadcaster, bounded queues per watcher.

The store tells the broadcaster which operations each committed write changed
(:meth:`Store.on_operation_change`); the broadcaster reads each changed
operation once (and its snapshot) and hands it to every watcher that wants it.
No watcher polls the catalog, and none can slow the work: a watcher whose
queue is full is dropped at once (it ends RESOURCE_EXHAUSTED, WATCH_TOO_SLOW,
and can watch again with ``since``), the executor never waits for it.
docs/design.md, "Live events and cancel".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from vmsnap_host.model import OperationRecord, Snapshot
from vmsnap_host.store import Store
from vmsnap_sdk.errors import Reason, ResourceExhausted

log = logging.getLogger("vmsnap.host.events")

#: Changes one watcher may be behind before it is dropped.
QUEUE_BOUND = 256


@dataclass(frozen=True)
class Change:
    """An operation as it stands after a committed change, with its snapshot."""

    operation: OperationRecord
    snapshot: Snapshot | None


class Watcher:
    """One subscriber: the changes it wants, in commit order, until dropped."""

    def __init__(self, vm_id: str, operation_id: str, bound: int) -> None:
        self.vm_id = vm_id
        self.operation_id = operation_id
        self.bound = bound
        # None is the "dropped" mark, put after the queue was emptied.
        self._queue: asyncio.Queue[Change | None] = asyncio.Queue(bound)
        self.dropped = False

    def wants(self, op: OperationRecord) -> bool:
        if self.operation_id and op.id != self.operation_id:
            return False
        return not self.vm_id or op.vm_id == self.vm_id

    def offer(self, change: Change) -> None:
        """Queue a change without waiting; a full queue drops the watcher."""
        if self.dropped:
            return
        try:
            self._queue.put_nowait(change)
        except asyncio.QueueFull:
            self.dropped = True
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(None)

    async def next(self) -> Change:
        """The next change; raises ResourceExhausted once the watcher was dropped."""
        change = await self._queue.get()
        if change is None:
            raise ResourceExhausted(
                f"this watcher fell more than {self.bound} changes behind and was "
                "dropped (the host never waits for a watcher); watch again with "
                "`since` set to the last update_time received",
                reason=Reason.WATCH_TOO_SLOW,
            )
        return change


class Broadcaster:
    """Fans committed operation changes out to the watchers of this process."""

    def __init__(self, store: Store, bound: int = QUEUE_BOUND) -> None:
        self.store = store
        self.bound = bound
        self._watchers: set[Watcher] = set()
        store.on_operation_change(self.changed)

    @contextlib.contextmanager
    def watch(self, vm_id: str = "", operation_id: str = "") -> Iterator[Watcher]:
        """Subscribe for the block's duration (subscribe before reading what is
        there already, so that no change falls in between)."""
        watcher = Watcher(vm_id, operation_id, self.bound)
        self._watchers.add(watcher)
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def changed(self, operation_ids: list[str]) -> None:
        """Called by the store right after a commit, in the task that wrote: the
        operation is read before that task can write it again, so each committed
        state is seen, in order (read later, a fast take would skip ``queued``).
        Only while someone watches; a failed read costs the watchers this change,
        never the writer."""
        if not self._watchers:
            return  # nobody watches: no read at all
        try:
            self._offer_all(operation_ids)
        except Exception:  # e.g. the catalog unreachable: the watchers miss this change
            log.exception("operation events not sent")

    def _offer_all(self, operation_ids: list[str]) -> None:
        for operation_id in dict.fromkeys(operation_ids):
            op = self.store.get_operation(operation_id)
            if op is None:
                continue
            interested = [w for w in self._watchers if w.wants(op)]
            if not interested:
                continue
            change = Change(op, self.store.get_snapshot(op.vm_snapshot_id))
            for watcher in interested:
                watcher.offer(change)
                if watcher.dropped:
                    log.warning(
                        "slow watcher dropped",
                        extra={"fields": {"vm": watcher.vm_id, "operation": op.id}},
                    )


__all__ = ["QUEUE_BOUND", "Broadcaster", "Change", "Watcher"]
