"""A lease kept alive: a renewal every ``interval`` seconds until stopped.

A take holds two leases, the VM's in the catalog and the guest's freeze at the
agent, and renews each every third of its length. Most takes end long before
the first renewal is due, so a task per lease (created, suspended in a sleep,
cancelled, awaited) was pure overhead on every create. A :class:`Renewer` is a
loop timer between renewals and a task only while one runs: stopping it before
the first is due cancels a timer (docs/design.md, "Renewals are timers").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class Renewer:
    """Run ``renew`` every ``interval`` seconds (first after one interval) until
    :meth:`stop`, or until ``renew`` returns False. ``renew`` handles its own
    errors: one that raises ends the renewals, as the loop it replaces would.

    Made on the event loop; a renewal runs in a task in the context of the code
    that made the renewer (as ``asyncio.create_task`` there would)."""

    def __init__(self, interval: float, renew: Callable[[], Awaitable[bool]]) -> None:
        self._interval = interval
        self._renew = renew
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(interval, self._due)

    def _due(self) -> None:
        self._timer = None
        if not self._stopped:
            self._task = self._loop.create_task(self._run())

    async def _run(self) -> None:
        again = await self._renew()
        self._task = None
        if again and not self._stopped:
            self._timer = self._loop.call_later(self._interval, self._due)

    @property
    def running(self) -> bool:
        """Whether renewals go on (not stopped, and the last renewal asked for more)."""
        return not self._stopped and (self._timer is not None or self._task is not None)

    async def stop(self) -> None:
        """No renewal after this returns: the next one is cancelled, and one that runs
        now is cancelled and waited for."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


__all__ = ["Renewer"]
