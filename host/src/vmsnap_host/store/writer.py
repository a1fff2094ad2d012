"""Group commit: write transactions of many operations share one fsync.

SQLite with ``synchronous=FULL`` pays one fsync per commit (milliseconds on
ordinary disks), and the sync API would run it on the event loop, stalling
every other operation meanwhile. The :class:`GroupCommitter` runs write steps
in one thread instead: each call waits for the steps queued before it to
commit, then commits every step that arrived meanwhile in one transaction.
A caller's ``await`` returns only after its transaction is durable, so the
write-ahead rule (journal before the side effect) holds as before; under load
many operations share one fsync, and the event loop never blocks on one.

When a batch fails (a step raises, e.g. a unique constraint), the batch is
rolled back and every step is retried in a transaction of its own, so one bad
step fails only its own caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine

Step = Callable[[Connection], Any]
_MAX_BATCH = 256
#: SQLSTATEs after which PostgreSQL has rolled the transaction back and asks the
#: client to run it again: serialization_failure, deadlock_detected (replicas
#: locking the same lease and snapshot rows in different orders).
RETRY_SQLSTATES = frozenset({"40001", "40P01"})
#: Tries of one transaction that keeps hitting those (then the error goes up).
RETRY_TRIES = 6


def retryable(exc: BaseException) -> bool:
    """Whether the database rolled ``exc``'s transaction back to be run again."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) in RETRY_SQLSTATES


def apply(conn: Connection, steps: Sequence[Step]) -> Any:
    """Run ``steps`` on ``conn`` in order; the last one's result."""
    result = None
    for step in steps:
        result = step(conn)
    return result


def transaction(engine: Engine, steps: Sequence[Step]) -> Any:
    """Run ``steps`` in one transaction, again (after a short random pause) when the
    database rolled it back for a conflict; the last step's result. Steps are
    transaction bodies: everything they did is rolled back with it."""
    for attempt in range(1, RETRY_TRIES + 1):
        try:
            with engine.begin() as conn:
                return apply(conn, steps)
        except Exception as exc:
            if attempt == RETRY_TRIES or not retryable(exc):
                raise
            time.sleep(random.uniform(0.005, 0.02) * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


class _Job:
    __slots__ = ("future", "loop", "steps")

    def __init__(
        self, steps: Sequence[Step], loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]
    ) -> None:
        self.steps = steps
        self.loop = loop
        self.future = future

    def resolve(self, ok: bool, value: Any) -> None:
        def deliver() -> None:
            if self.future.done():
                return
            if ok:
                self.future.set_result(value)
            else:
                self.future.set_exception(value)

        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(deliver)


class GroupCommitter:
    """One writer thread committing queued write steps in shared transactions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def run(self, *steps: Step) -> Any:
        """Run ``steps`` in one transaction (shared with other callers'); the result
        of the last step once committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._ensure_thread()
        self._queue.put(_Job(steps, loop, future))
        # A cancelled caller cancels only this future: the steps still commit (they
        # are queued), and _Job.resolve skips a future that is done.
        return await future

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="vmsnap-catalog-writer", daemon=True
                )
                self._thread.start()

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Job]) -> None:
        if len(batch) > 1:
            try:
                with self.engine.begin() as conn:
                    results = [apply(conn, job.steps) for job in batch]
            except Exception:  # noqa: BLE001 - retried one by one below, each failing alone
                pass
            else:
                for job, result in zip(batch, results, strict=True):
                    job.resolve(True, result)
                return
        for job in batch:
            try:
                result = transaction(self.engine, job.steps)
            except Exception as exc:  # noqa: BLE001 - handed to the caller to raise
                job.resolve(False, exc)
            else:
                job.resolve(True, result)
