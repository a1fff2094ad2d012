"""Live operation events: one in-process broadcaster, bounded queues per watcher.

The store tells the broadcaster which operations each committed write changed
(:meth:`Store.on_operation_change`); the broadcaster reads each changed
operation once (and its snapshot) and hands it to every watcher that wants it.
No watcher polls the catalog, and none can slow the work: a watcher whose
queue is full is dropped at once (it ends RESOURCE_EXHAUSTED, WATCH_TOO_SLOW,
and can watch again with ``since``), the executor never waits for it.
docs/design.md, "Live events, cancel and traces".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from vmsnap_host import metrics
from vmsnap_host.model import OperationRecord, Snapshot
from vmsnap_host.store import Store
from vmsnap_sdk.errors import Reason, ResourceExhausted, VMSnapError

log = logging.getLogger("vmsnap.host.events")

#: Changes one watcher may be behind before it is dropped.
QUEUE_BOUND = 256
#: Watchers one host serves at once: each stream holds one of the server's concurrent
#: calls (256), which must stay free for the calls that do the work.
MAX_WATCHERS = 64
#: How often the one catalog poll per replica looks for changes of operations other
#: replicas run (only while someone watches here).
FOREIGN_POLL = 0.25
#: How far back each poll looks again: replicas stamp update_time on their own
#: clocks; a change is sent once all the same (remembered by its state).
FOREIGN_OVERLAP = 2.0


@dataclass(frozen=True)
class Change:
    """An operation as it stands after a committed change, with its snapshot."""

    operation: OperationRecord
    snapshot: Snapshot | None


class Watcher:
    """One subscriber: the changes it wants, in commit order, until dropped or ended."""

    def __init__(self, vm_id: str, operation_id: str, bound: int) -> None:
        self.vm_id = vm_id
        self.operation_id = operation_id
        self.bound = bound
        # None is the "dropped" mark, put after the queue was emptied; an error is
        # the end (the host stopping), raised once the changes before it were read.
        self._queue: asyncio.Queue[Change | VMSnapError | None] = asyncio.Queue(bound + 1)
        self.dropped = False
        self.ended = False

    def wants(self, op: OperationRecord) -> bool:
        if self.operation_id and op.id != self.operation_id:
            return False
        return not self.vm_id or op.vm_id == self.vm_id

    def offer(self, change: Change) -> None:
        """Queue a change without waiting; a full queue drops the watcher."""
        if self.dropped or self.ended:
            return
        if self._queue.qsize() >= self.bound:  # one place is kept for the end
            self.dropped = True
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(None)
            return
        self._queue.put_nowait(change)

    def end(self, error: VMSnapError) -> None:
        """End the watch after the changes queued so far: :meth:`next` raises
        ``error`` then (a dropped watcher ends as dropped)."""
        if self.dropped or self.ended:
            return
        self.ended = True
        self._queue.put_nowait(error)

    async def next(self) -> Change:
        """The next change; raises ResourceExhausted once the watcher was dropped,
        and the end's error once it was ended."""
        change = await self._queue.get()
        if change is None:
            raise ResourceExhausted(
                f"this watcher fell more than {self.bound} changes behind and was "
                "dropped (the host never waits for a watcher); watch again with "
                "`since` set to the last update_time received",
                reason=Reason.WATCH_TOO_SLOW,
            )
        if isinstance(change, VMSnapError):
            raise change
        return change


class Broadcaster:
    """Fans committed operation changes out to the watchers of this process."""

    def __init__(self, store: Store, bound: int = QUEUE_BOUND, owner: str = "") -> None:
        self.store = store
        self.bound = bound
        #: This replica's name: operations owned by another are polled (see _poll).
        self.owner = owner
        self._watchers: set[Watcher] = set()
        self._poller: asyncio.Task[None] | None = None
        #: Last state sent of each open foreign operation (id → state key).
        self._foreign: dict[str, tuple[object, ...]] = {}
        #: Why every watch ends now (the host is stopping); None while it serves.
        self._ending: VMSnapError | None = None
        store.on_operation_change(self.changed)

    @contextlib.contextmanager
    def watch(self, vm_id: str = "", operation_id: str = "") -> Iterator[Watcher]:
        """Subscribe for the block's duration (subscribe before reading what is
        there already, so that no change falls in between)."""
        if self._ending is not None:
            raise self._ending
        if len(self._watchers) >= MAX_WATCHERS:
            raise ResourceExhausted(
                f"this host serves {MAX_WATCHERS} watchers already (each holds one of its "
                "concurrent calls); stop one, or watch another replica",
                reason=Reason.RESOURCE_EXHAUSTED,
            )
        watcher = Watcher(vm_id, operation_id, self.bound)
        self._watchers.add(watcher)
        if self.owner and (self._poller is None or self._poller.done()):
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def end_all(self, error: VMSnapError) -> None:
        """End every watch, and refuse new ones, with ``error`` (the host is
        stopping: a stream that runs until its client cancels it would otherwise
        hold the server's graceful stop for the whole grace period)."""
        self._ending = error
        for watcher in list(self._watchers):
            watcher.end(error)

    async def close(self) -> None:
        """Stop the foreign poll (the host is stopping)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def changed(self, operation_ids: list[str]) -> None:
        """Awaited by the store right after a commit, in the task that wrote: the
        operation is read before that task can write it again, so each committed
        state is seen, in order (read later, a fast take would skip ``queued``).
        Only while someone watches; a failed read costs the watchers this change,
        never the writer. The read is the store's (Store.read: off the event loop
        on PostgreSQL)."""
        if not self._watchers:
            return  # nobody watches: no read at all
        try:
            changes = await self.store.read(self._changes, operation_ids)
        except Exception:  # e.g. the catalog unreachable: the watchers miss this change
            log.exception("operation events not sent")
            return
        for change in changes:
            self._deliver(change)

    async def _poll(self) -> None:
        """While anyone watches: one read every FOREIGN_POLL seconds for operations
        other replicas run (their commits are not seen here), for every watcher at
        once — never a poll per watcher."""
        last = time.time()
        while self._watchers:
            await asyncio.sleep(FOREIGN_POLL)
            now = time.time()
            try:
                changed = await self.store.read(
                    self.store.operations_changed_since, "", last - FOREIGN_OVERLAP, 1000
                )
            except Exception:  # the catalog unreachable: try again on the next tick
                log.exception("foreign operation poll failed")
                continue
            last = now
            for op in changed:
                if op.owner == self.owner:
                    continue  # this replica's own: sent as committed
                key = (op.step, op.progress, op.done, op.cancel_requested)
                if self._foreign.get(op.id) == key:
                    continue
                self._foreign[op.id] = key
                if any(w.wants(op) for w in self._watchers):
                    self._deliver(await self.store.read(self._change, op))
            # Forget finished ones that fell out of the overlap window.
            seen = {op.id for op in changed}
            for op_id in [i for i in self._foreign if i not in seen]:
                del self._foreign[op_id]

    def _change(self, op: OperationRecord) -> Change:
        """The change as sent: the operation with its snapshot (a catalog read)."""
        return Change(op, self.store.get_snapshot(op.vm_snapshot_id))

    def _changes(self, operation_ids: list[str]) -> list[Change]:
        """The operations as they stand now, with their snapshots (catalog reads)."""
        changes = []
        for operation_id in dict.fromkeys(operation_ids):
            op = self.store.get_operation(operation_id)
            if op is not None:
                changes.append(self._change(op))
        return changes

    def _deliver(self, change: Change) -> None:
        """Offer a change to each watcher that wants it (on the event loop)."""
        op = change.operation
        for watcher in [w for w in self._watchers if w.wants(op)]:
            was_dropped = watcher.dropped
            watcher.offer(change)
            if watcher.dropped and not was_dropped:
                metrics.WATCHERS_DROPPED.inc()
                log.warning(
                    "slow watcher dropped",
                    extra={"fields": {"vm": watcher.vm_id, "operation": op.id}},
                )


__all__ = ["FOREIGN_POLL", "MAX_WATCHERS", "QUEUE_BOUND", "Broadcaster", "Change", "Watcher"]
