"""CancelOperation and live events, in process (docs/design.md, "Live events, cancel and traces")."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.fakes.driver import FakeDriver, Options
from tests.host.conftest import Rig, make_rig
from vmsnap_host import metrics
from vmsnap_host.events import MAX_WATCHERS, Broadcaster
from vmsnap_host.model import OperationRecord, SnapshotState
from vmsnap_host.store import Store
from vmsnap_sdk.errors import FailedPrecondition, Reason, ResourceExhausted

A = "io.vmsnap.test.a"
B = "io.vmsnap.test.b"
CANCELLED = grpc.StatusCode.CANCELLED.value[0]


class Gate:
    """Holds one fake driver's calls of a kind after they did their work (the cut
    is made, the answer held back) until opened."""

    def __init__(self, driver: FakeDriver, method: str) -> None:
        self.reached = asyncio.Event()
        self.open = asyncio.Event()
        original: Callable[..., Awaitable[Any]] = getattr(driver, method)

        async def held(*args: Any, **kwargs: Any) -> Any:
            result = await original(*args, **kwargs)
            self.reached.set()
            await self.open.wait()
            return result

        setattr(driver, method, held)

    async def wait_reached(self) -> None:
        await asyncio.wait_for(self.reached.wait(), 10)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = await make_rig(tmp_path, Options(name=A, scheme="a"), Options(name=B, scheme="b"))
    yield r
    await r.close()


async def test_cancel_rolls_a_running_take_back(rig: Rig) -> None:
    await rig.define()
    gate = Gate(rig.drivers[A], "take_snapshot")
    op = await rig.create()
    await gate.wait_reached()
    assert rig.frozen()  # three groups: the take runs inside a freeze

    asked = await rig.manager.cancel_operation(op.id)
    assert not asked.done and asked.cancel_requested
    gate.open.set()
    done = await rig.wait(op)

    assert done.error is not None and done.error.code == CANCELLED
    assert done.error.reason == Reason.OPERATION_CANCELLED
    assert "cancelled on request" in done.error.message and "rolled back" in done.error.message
    snap = rig.store.get_snapshot(op.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.ERROR and not snap.current
    # Compensated like a failed take: nothing left on any array, the VM thawed.
    assert rig.drivers[A].snapshots == {} and rig.drivers[B].snapshots == {}
    assert rig.store.get_cleanup(snap.id) == []
    assert not rig.frozen()


async def test_cancel_drops_a_queued_operation_at_once(rig: Rig) -> None:
    await rig.define()
    gate = Gate(rig.drivers[A], "take_snapshot")
    first = await rig.create("s1")
    await gate.wait_reached()
    queued = await rig.create("s2")

    dropped = await rig.manager.cancel_operation(queued.id)
    assert dropped.done and dropped.step == "cancelled"
    assert dropped.error is not None and dropped.error.reason == Reason.OPERATION_CANCELLED
    assert dropped.error.message.endswith("before it started; nothing was done")
    snap = rig.store.get_snapshot(queued.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.ERROR

    gate.open.set()
    ok = await rig.wait(first)
    assert ok.error is None, ok.error
    await rig.manager.idle()
    # The dropped take never reached a driver.
    assert all(c[1] != queued.vm_snapshot_id for c in rig.drivers[A].calls)
    # Its name is free again (an ERROR snapshot gives its name back).
    again = await rig.wait(await rig.create("s2", request_id="again"))
    assert again.error is None, again.error


async def test_cancel_of_a_finished_operation_names_its_state(rig: Rig) -> None:
    await rig.define()
    done = await rig.wait(await rig.create())
    with pytest.raises(FailedPrecondition) as refused:
        await rig.manager.cancel_operation(done.id)
    assert refused.value.reason == Reason.OPERATION_FINISHED
    assert "finished already (succeeded)" in refused.value.message


async def test_cancel_of_a_running_revert_puts_every_disk_back(rig: Rig) -> None:
    await rig.define()
    ready = await rig.wait(await rig.create())
    sid = ready.vm_snapshot_id
    gate = Gate(rig.drivers[A], "revert_snapshot")
    op = await rig.manager.revert_snapshot("rv", sid, stop_vm=True)
    await gate.wait_reached()  # a's disk is at the snapshot now

    asked = await rig.manager.cancel_operation(op.id)
    assert asked.cancel_requested
    gate.open.set()
    done = await rig.wait(op)

    assert done.error is not None and done.error.reason == Reason.OPERATION_CANCELLED
    assert "put back as it was before the revert" in done.error.message
    a = rig.drivers[A]
    assert a.reverted[0] == sid and "-keep-" in a.reverted[-1]  # back to its kept state
    snap = rig.store.get_snapshot(sid)
    assert snap is not None and snap.state is SnapshotState.READY


async def test_a_watcher_sees_a_takes_steps_in_order(rig: Rig) -> None:
    await rig.define()
    seen: list[OperationRecord] = []
    with rig.manager.events.watch(vm_id="vm1") as watcher:
        op = await rig.wait(await rig.create())
        while not seen or not seen[-1].done:
            seen.append((await asyncio.wait_for(watcher.next(), 5)).operation)
    assert {o.id for o in seen} == {op.id}
    steps = [o.step for o in seen]
    # Started at once on an idle VM, the take's first write (CREATING, the freeze
    # and the cut) commits with its admission: it never was queued. Each committed
    # step, as it commits (the thaw is journaled with READY: one change).
    assert steps == ["quiescing and taking 3 groups", "done"], steps
    progress = [o.progress for o in seen]
    assert progress == sorted(progress) and progress[-1] == 100


async def test_a_slow_watcher_is_dropped_and_never_blocks_the_work(rig: Rig) -> None:
    await rig.define()
    before = metrics.WATCHERS_DROPPED._value.get()
    small = Broadcaster(rig.store, bound=1)
    with small.watch() as slow:
        # Never read while a whole take commits its steps: the take is not held up.
        done = await rig.wait(await rig.create())
        assert done.error is None
        with pytest.raises(ResourceExhausted) as dropped:
            await asyncio.wait_for(slow.next(), 5)
    assert dropped.value.reason == Reason.WATCH_TOO_SLOW
    assert "since" in dropped.value.message
    assert metrics.WATCHERS_DROPPED._value.get() == before + 1


async def test_a_watcher_sees_operations_another_replica_runs(rig: Rig) -> None:
    """Replicas share the catalog: a replica's watchers see the operations another
    runs through one poll of the catalog per replica (not per watcher)."""
    await rig.define()
    other = Store.open(f"sqlite:///{rig.path / 'host.db'}")
    try:
        replica_b = Broadcaster(other, owner="replica-b")
        with replica_b.watch(vm_id="vm1") as watcher:
            op = await rig.wait(await rig.create())  # run by this rig's replica ("test")
            seen = [(await asyncio.wait_for(watcher.next(), 5)).operation]
            while not seen[-1].done:
                seen.append((await asyncio.wait_for(watcher.next(), 5)).operation)
        assert {o.id for o in seen} == {op.id} and seen[-1].step == "done"
        await replica_b.close()
    finally:
        other.close()


async def test_watchers_are_bounded(rig: Rig) -> None:
    """Each stream holds one of the server's concurrent calls: past the bound a new
    watcher is refused, the calls that do the work keep their slots."""
    with contextlib.ExitStack() as stack:
        for _ in range(MAX_WATCHERS):
            stack.enter_context(rig.manager.events.watch())
        with pytest.raises(ResourceExhausted, match="watchers already"):
            stack.enter_context(rig.manager.events.watch())
    with rig.manager.events.watch():
        pass  # a slot is free again once one ends
