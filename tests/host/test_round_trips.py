"""Calls on a take's critical path: one DescribeVM per take, CanHandle answers
reused while the driver is the same registration in the same state, and never
after a change (issue 16). Counted on the real manager with in-process peers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.driver import Options
from tests.host.conftest import FAST, Rig, count_calls, make_rig
from vmsnap_host.model import QuiescePolicy
from vmsnap_host.registry import Health, Registry
from vmsnap_host.store.prepared import PreparedStatement
from vmsnap_sdk import Capability, Volume

A = "io.vmsnap.test.a"
B = "io.vmsnap.test.b"


@pytest.fixture
async def counted(tmp_path: Path) -> AsyncIterator[tuple[Rig, Counter[str]]]:
    rig = await make_rig(tmp_path, Options(name=A, scheme="a"), Options(name=B, scheme="b"))
    counts: Counter[str] = Counter()
    rig.agent.describe_vm = count_calls(counts, "describe", rig.agent.describe_vm)  # type: ignore[method-assign]
    for name, driver in rig.drivers.items():
        driver.can_handle = count_calls(counts, name, driver.can_handle)  # type: ignore[method-assign]
    yield rig, counts
    await rig.close()


async def _take(rig: Rig, name: str, **kwargs: Any) -> None:
    op = await rig.wait(await rig.create(name, **kwargs))
    assert op.error is None, op.error


async def test_a_take_that_starts_at_once_describes_the_vm_once(
    counted: tuple[Rig, Counter[str]],
) -> None:
    rig, counts = counted
    await rig.define()
    await _take(rig, "s1")
    assert counts["describe"] == 1


async def test_can_handle_is_asked_once_per_volume_set(counted: tuple[Rig, Counter[str]]) -> None:
    rig, counts = counted
    await rig.define()
    await _take(rig, "s1")
    await _take(rig, "s2")
    await _take(rig, "s3", quiesce=QuiescePolicy.OFF)
    assert counts[A] == counts[B] == 1
    # Another VM, or other options, is another question.
    await rig.define("vm2", volumes=(Volume("vda", "a://pool/9"), Volume("vdb", "b://pool/9")))
    await _take(rig, "t1", vm_id="vm2")
    assert counts[A] == counts[B] == 2


async def test_a_re_registered_driver_is_asked_again(counted: tuple[Rig, Counter[str]]) -> None:
    rig, counts = counted
    await rig.define()
    await _take(rig, "s1")
    await rig.registry.add_driver(f"local:{A}", order=0, driver=rig.drivers[A])
    await _take(rig, "s2")
    assert counts[A] == 2  # the new registration was asked
    assert counts[B] == 1


async def test_a_driver_whose_health_changed_is_asked_again(
    counted: tuple[Rig, Counter[str]],
) -> None:
    rig, counts = counted
    await rig.define()
    await _take(rig, "s1")
    entry = rig.registry.driver_entry(B)
    assert entry is not None
    Registry._mark(entry, Health.NOT_SERVING, "link down (test)")
    await rig.registry.check(entry)  # back: serving again
    assert entry.health is Health.SERVING
    await _take(rig, "s2")
    assert counts[B] == 2
    assert counts[A] == 1


async def test_a_driver_whose_info_changed_is_asked_again(
    counted: tuple[Rig, Counter[str]],
) -> None:
    rig, counts = counted
    await rig.define()
    await _take(rig, "s1")
    driver = rig.drivers[A]
    driver.o = replace(driver.o, capabilities=driver.o.capabilities - {Capability.LIST})
    entry = rig.registry.driver_entry(A)
    assert entry is not None
    await rig.registry.check(entry)  # the health loop sees the upgraded driver
    await _take(rig, "s2")
    assert counts[A] == 2


async def test_a_failed_take_forgets_the_answers_it_was_planned_from(tmp_path: Path) -> None:
    rig = await make_rig(
        tmp_path,
        Options(name=A, scheme="a", behaviour="fail-final"),
        Options(name=B, scheme="b"),
    )
    counts: Counter[str] = Counter()
    for name, driver in rig.drivers.items():
        driver.can_handle = count_calls(counts, name, driver.can_handle)  # type: ignore[method-assign]
    try:
        await rig.define()
        failed = await rig.wait(await rig.create("s1"))
        assert failed.error is not None
        await rig.wait(await rig.create("s2"))
        assert counts[A] == counts[B] == 2
    finally:
        await rig.close()


async def test_cache_off_asks_on_every_take(tmp_path: Path) -> None:
    rig = await make_rig(
        tmp_path,
        Options(name=A, scheme="a"),
        Options(name=B, scheme="b"),
        settings=replace(FAST, can_handle_cache_seconds=0),
    )
    counts: Counter[str] = Counter()
    for name, driver in rig.drivers.items():
        driver.can_handle = count_calls(counts, name, driver.can_handle)  # type: ignore[method-assign]
    try:
        await rig.define()
        await _take(rig, "s1")
        await _take(rig, "s2")
        assert counts[A] == counts[B] == 2
    finally:
        await rig.close()


async def test_a_create_runs_a_bounded_number_of_catalog_statements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog's statements of a create that starts at once and ends READY,
    counted at the DBAPI: each costs CPU in the host's one GIL. 28 before the
    READY move took the VM from the snapshot it writes (it read it again) and the
    metrics took the outcome from the finishing write (they read it again); 26
    before session 12 took out the freeze token's commit (3), checked the fence
    by the lease's release (1), journaled the thaw and checked for a cancel in the
    finishing UPDATE's one read (2), and counted admission's two bounds in one
    statement (1); 19 before session 13 inserted the rows of a take that starts at
    once as its first write leaves them (CREATING, the journal: 3); 16 before the
    READY write unset the VM's current snapshot and read it (the parent) in one
    statement (1)."""
    rig = await make_rig(tmp_path, Options(name=A, scheme="a"), Options(name=B, scheme="b"))
    try:
        await rig.define()
        await _take(rig, "warm")  # the CanHandle answers cached, as in steady state
        sql: list[str] = []
        real = PreparedStatement.execute

        def counting(self: PreparedStatement, conn: Any, params: Any = None) -> Any:
            sql.append(str(self.statement).split("\n", 1)[0])
            return real(self, conn, params)

        monkeypatch.setattr(PreparedStatement, "execute", counting)
        op = await rig.wait(await rig.create("s1"))
        await asyncio.sleep(0.05)  # the run's end (metrics) is after the waiter's wake
        assert op.error is None
        assert not any("FROM vm_snapshots \nWHERE vm_snapshots.id" in s for s in sql), sql
        assert len(sql) <= 15, "\n".join(sql)
    finally:
        await rig.close()
