"""When the host begins to stop, calls that only wait end at once.

A WaitOperation (or a create's ``wait``) and a WatchOperations stream would
otherwise hold the server's graceful stop for its whole grace period, and the
stack would kill the host (tests/security/test_up_stop.py shows it with real
processes). docs/design.md, "Stopping: calls that wait end at once".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.driver import Options
from tests.host.conftest import Rig, make_rig
from vmsnap_sdk import SnapshotResult, TakeRequest
from vmsnap_sdk.errors import Unavailable

A, B = "io.vmsnap.test.a", "io.vmsnap.test.b"


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = await make_rig(tmp_path, Options(name=A, scheme="a"), Options(name=B, scheme="b"))
    yield r
    await r.close()


async def test_a_wait_answers_the_operation_as_it_stands_when_the_host_begins_to_stop(
    rig: Rig,
) -> None:
    await rig.define()
    driver = rig.drivers[A]
    real = driver.take_snapshot
    reached, release = asyncio.Event(), asyncio.Event()

    async def held(request: TakeRequest) -> SnapshotResult:
        reached.set()
        await release.wait()
        return await real(request)

    driver.take_snapshot = held  # type: ignore[method-assign]
    op = await rig.create()
    await asyncio.wait_for(reached.wait(), 10)
    waiting = asyncio.create_task(rig.manager.wait_operation(op.id, 60))
    await rig.manager.begin_stop()
    answered = await asyncio.wait_for(waiting, 10)  # a guard: it answers at once
    assert answered.id == op.id and not answered.done
    # The operation itself goes on (it is cancelled only when the host closes).
    release.set()
    await rig.manager.idle()
    finished = rig.store.get_operation(op.id)
    assert finished is not None and finished.done and finished.error is None, finished


async def test_watches_end_unavailable_after_what_they_had_and_new_ones_are_refused(
    rig: Rig,
) -> None:
    await rig.define()
    with rig.manager.events.watch(vm_id="vm1") as watcher:
        op = await rig.wait(await rig.create())
        await rig.manager.begin_stop()
        seen = []
        with pytest.raises(Unavailable, match="stopping") as ended:
            while True:
                seen.append((await asyncio.wait_for(watcher.next(), 5)).operation)
    assert seen and seen[-1].id == op.id and seen[-1].done  # nothing queued is lost
    assert "since" in ended.value.message
    with pytest.raises(Unavailable, match="stopping"), rig.manager.events.watch():
        pass
