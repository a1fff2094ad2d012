"""Blocking vendor-SDK calls from asyncio: worker threads, bounded, at the caller's pace.

Vendor SDKs (netapp-ontap, solidfire-sdk-python) block on HTTP. Each call runs
in a worker thread; at most ``max_in_flight`` at once (a busy host must not
open a hundred connections to an array's management address). The caller's
gRPC deadline is passed down:

- a call whose caller has already given up is not started (DEADLINE_EXCEEDED);
- the RPC answers DEADLINE_EXCEEDED when the deadline passes, while the thread
  finishes its HTTP request in the background (a thread cannot be killed) and
  keeps its slot until then, so the bound holds;
- inside the thread, :func:`deadline_remaining` tells the vendor code how long
  it may wait (``asyncio.to_thread`` copies the call's context into the thread),
  e.g. to cap a job poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from vmsnap_sdk._context import current_call
from vmsnap_sdk.errors import DeadlineExceeded

_T = TypeVar("_T")


def deadline_remaining(default: float) -> float:
    """Seconds the current call may still take: the caller's deadline, capped at
    ``default`` (also when the caller set none)."""
    left = current_call().time_remaining()
    return default if left is None else min(default, left)


class BlockingCalls:
    """``await calls.run(fn)``: ``fn()`` in a worker thread, bounded, deadline-aware."""

    def __init__(self, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        # Taken on the loop, given back by the thread when its call really ends
        # (not when the RPC stopped waiting for it): the bound counts threads.
        self._slots = asyncio.Semaphore(max_in_flight)
        self._busy = 0

    @property
    def in_flight(self) -> int:
        """Vendor calls running now (threads still in the vendor's code)."""
        return self._busy

    async def run(
        self,
        fn: Callable[[], _T],
        *,
        what: str = "array call",
        abandoned: Callable[[asyncio.Future[Any]], None] | None = None,
    ) -> _T:
        """``fn()`` in a worker thread. DEADLINE_EXCEEDED (naming ``what``) when the
        caller's deadline passes first. ``abandoned``: told the thread's future when
        the caller stops waiting for it (its deadline, or the call cancelled) while
        the vendor call goes on: a driver that must not start the same change again
        before that one ends (a retry that would make a second object) waits for it."""
        call = current_call()
        left = call.time_remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"{what}: the caller's deadline passed before it started")
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=left)
        except TimeoutError:
            raise DeadlineExceeded(
                f"{what}: every array connection stayed busy until the caller's deadline"
            ) from None
        loop = asyncio.get_running_loop()
        self._busy += 1

        def finished() -> None:
            self._busy -= 1
            self._slots.release()

        def work() -> _T:
            try:
                return fn()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(finished)

        thread = asyncio.ensure_future(asyncio.to_thread(work))
        try:
            return await asyncio.wait_for(asyncio.shield(thread), timeout=call.time_remaining())
        except TimeoutError:
            # The thread goes on to the end of its HTTP request; its outcome is dropped.
            thread.add_done_callback(_drop)
            if abandoned is not None:
                abandoned(thread)
            raise DeadlineExceeded(
                f"{what}: no answer from the array before the caller's deadline"
            ) from None
        except asyncio.CancelledError:
            if not thread.done():
                thread.add_done_callback(_drop)
                if abandoned is not None:
                    abandoned(thread)
            raise


def _drop(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: no "exception never retrieved" noise
