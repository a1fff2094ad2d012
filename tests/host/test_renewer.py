"""The timer-driven lease renewal (vmsnap_host/renewer.py): renewals every
interval until stopped or told to stop, none after stop, and none at all for
work that ends before the first is due (a take's usual case)."""

from __future__ import annotations

import asyncio

from vmsnap_host.renewer import Renewer


async def test_renews_every_interval_until_stopped() -> None:
    calls: list[float] = []
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def renew() -> bool:
        calls.append(loop.time() - start)
        return True

    renewer = Renewer(0.02, renew)
    await asyncio.sleep(0.11)
    await renewer.stop()
    seen = len(calls)
    assert 3 <= seen <= 6, calls
    assert calls[0] >= 0.02  # the first after one interval, not at once
    await asyncio.sleep(0.06)
    assert len(calls) == seen  # none after stop
    assert not renewer.running


async def test_stopped_before_the_first_is_due_never_renews() -> None:
    calls = 0

    async def renew() -> bool:
        nonlocal calls
        calls += 1
        return True

    renewer = Renewer(0.03, renew)
    assert renewer.running
    await renewer.stop()
    await asyncio.sleep(0.08)
    assert calls == 0


async def test_renew_answering_false_ends_the_renewals() -> None:
    calls = 0

    async def renew() -> bool:
        nonlocal calls
        calls += 1
        return calls < 2

    renewer = Renewer(0.01, renew)
    await asyncio.sleep(0.1)
    assert calls == 2
    assert not renewer.running
    await renewer.stop()


async def test_stop_cancels_a_renewal_in_flight_and_waits_for_it() -> None:
    started = asyncio.Event()
    ended: list[str] = []

    async def renew() -> bool:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise
        return True

    renewer = Renewer(0.01, renew)
    await asyncio.wait_for(started.wait(), 2)
    await renewer.stop()
    assert ended == ["cancelled"]  # finished before stop returned


async def test_the_renewal_runs_in_the_makers_context() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="none")
    seen: list[str] = []

    async def renew() -> bool:
        seen.append(var.get())
        return False

    var.set("maker")
    renewer = Renewer(0.01, renew)
    var.set("changed later")
    await asyncio.sleep(0.05)
    await renewer.stop()
    assert seen == ["maker"]
