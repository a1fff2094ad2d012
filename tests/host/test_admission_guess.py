"""Admission on the VM's last description (docs/design.md, "Admission on the last
description"): a take that starts at once plans on the description the host got
last of a RUNNING VM, asks the agent for a fresh one while the admission commits,
and compares the two before it touches anything. A VM that changed since (stopped,
disks added, gone) is planned again, or the take fails, before any freeze or cut.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.driver import Options
from tests.host.conftest import FAST, THREE_DISKS, Rig, count_calls, make_rig
from vmsnap_host.manager import _VMQueue
from vmsnap_host.model import GroupKind, SnapshotState
from vmsnap_sdk import Consistency, VMState, Volume

A = "io.vmsnap.test.a"
B = "io.vmsnap.test.b"


@pytest.fixture
async def counted(tmp_path: Path) -> AsyncIterator[tuple[Rig, Counter[str]]]:
    rig = await make_rig(tmp_path, Options(name=A, scheme="a"), Options(name=B, scheme="b"))
    counts: Counter[str] = Counter()
    rig.agent.describe_vm = count_calls(counts, "describe", rig.agent.describe_vm)  # type: ignore[method-assign]
    rig.agent.quiesce = count_calls(counts, "quiesce", rig.agent.quiesce)  # type: ignore[method-assign]
    for name, driver in rig.drivers.items():
        driver.take_snapshot = count_calls(counts, f"take {name}", driver.take_snapshot)  # type: ignore[method-assign]
        driver.delete_snapshot = count_calls(counts, f"delete {name}", driver.delete_snapshot)  # type: ignore[method-assign]
    await rig.define()
    first = await rig.wait(await rig.create("s1"))
    assert first.error is None, first.error
    counts.clear()
    yield rig, counts
    await rig.close()


async def test_the_next_take_is_admitted_while_its_vm_is_described(
    counted: tuple[Rig, Counter[str]],
) -> None:
    """The DescribeVM runs beside the admission's commit, not before it: with the
    agent's answer held back, the create is admitted (durable, answered) all the
    same, and its take waits for the answer before it freezes anything."""
    rig, counts = counted
    held = asyncio.Event()
    describe = rig.agent.describe_vm

    async def slow_describe(vm_id: str) -> Any:
        await held.wait()
        return await describe(vm_id)

    rig.agent.describe_vm = slow_describe  # type: ignore[method-assign]
    op = await asyncio.wait_for(rig.create("s2"), 2.0)
    assert rig.store.get_snapshot(op.vm_snapshot_id) is not None  # committed
    await asyncio.sleep(0.05)
    assert counts["quiesce"] == 0 and not rig.frozen()  # nothing touched before the answer
    held.set()
    done = await rig.wait(op)
    assert done.error is None, done.error
    assert counts["describe"] == 1 and counts["quiesce"] == 1  # one DescribeVM per take


async def test_a_vm_stopped_since_is_taken_as_stopped_without_a_freeze(
    counted: tuple[Rig, Counter[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """The last description says RUNNING, the VM is STOPPED now: the take is planned
    again on the fresh description (and says so in the host's log), freezes
    nothing, and records a stopped VM's consistency."""
    rig, counts = counted
    await rig.agent.stop_vm("vm1", force=False)  # behind the host's back
    with caplog.at_level(logging.INFO, logger="vmsnap.host.take"):
        done = await rig.wait(await rig.create("s2"))
    planned_again = [r for r in caplog.records if "planned again" in r.getMessage()]
    assert len(planned_again) == 1
    assert planned_again[0].fields["state"] == "RUNNING -> STOPPED"  # type: ignore[attr-defined]
    assert done.error is None, done.error
    snap = rig.store.get_snapshot(done.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.READY
    assert counts["quiesce"] == 0
    assert snap.freeze_seconds is None
    assert snap.consistency is Consistency.APPLICATION  # a clean shutdown's disks


async def test_a_disk_added_since_is_in_the_snapshot(
    counted: tuple[Rig, Counter[str]],
) -> None:
    """A disk added since the last description is planned and cut with the others:
    a snapshot planned on the old disks would leave it out."""
    rig, counts = counted
    await rig.agent.stop_vm("vm1", force=False)
    await rig.agent.undefine_vm("vm1")
    await rig.define(volumes=(*THREE_DISKS, Volume("vdd", "b://pool/4")))
    done = await rig.wait(await rig.create("s2"))
    assert done.error is None, done.error
    snap = rig.store.get_snapshot(done.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.READY
    planned = {d for g in snap.groups for d in g.disks}
    assert planned == {"vda", "vdb", "vdc", "vdd"}
    b_group = next(g for g in snap.groups if g.kind is GroupKind.DRIVER and g.owner == B)
    assert set(b_group.disks) == {"vdb", "vdd"}
    assert b_group.result is not None and {s.disk for s in b_group.result.volume_snapshots} == {
        "vdb",
        "vdd",
    }
    assert counts["quiesce"] == 1


async def test_a_vm_gone_since_fails_the_take_before_anything_is_touched(
    counted: tuple[Rig, Counter[str]],
) -> None:
    """The VM was undefined since its last description: the create is admitted on
    the guess, and its take fails NOT_FOUND with nothing frozen, cut or deleted."""
    rig, counts = counted
    await rig.agent.stop_vm("vm1", force=False)
    await rig.agent.undefine_vm("vm1")
    done = await rig.wait(await rig.create("s2"))
    assert done.error is not None and done.error.reason == "VM_NOT_FOUND", done.error
    snap = rig.store.get_snapshot(done.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.ERROR
    assert "not known to any registered agent" in done.error.message
    assert "rolled back" not in done.error.message and "delete" not in done.error.message
    assert not any(k.startswith(("take ", "delete ")) for k in counts), counts
    assert counts["quiesce"] == 0
    assert rig.store.get_cleanup(snap.id) == []


async def test_a_stopped_vm_is_described_before_its_admission(tmp_path: Path) -> None:
    """Only a RUNNING VM's description is a guess: a STOPPED one could refuse a create
    the VM allows now (a memory snapshot of a VM started since)."""
    rig = await make_rig(
        tmp_path, Options(name=A, scheme="a"), Options(name=B, scheme="b"), settings=FAST
    )
    try:
        await rig.define(running=False)
        await rig.wait(await rig.create("s1"))
        assert rig.registry.last_described("vm1") is None
        await rig.agent.start_vm("vm1")
        await rig.wait(await rig.create("s2"))
        guess = rig.registry.last_described("vm1")
        assert guess is not None and guess[1].state is VMState.RUNNING
    finally:
        await rig.close()


async def test_a_queued_take_is_planned_again_when_the_vm_disks_changed(
    counted: tuple[Rig, Counter[str]],
) -> None:
    """A take that waited behind another operation describes the VM when it runs:
    a disk added meanwhile is planned and cut too (it used to cut the disks
    planned at admission only)."""
    rig, counts = counted
    counts.clear()
    queue = _VMQueue(asyncio.Lock(), admitted=1)  # another operation holds the VM here
    rig.manager._queues["vm1"] = queue
    await queue.lock.acquire()
    op = await rig.create("s2")
    assert rig.store.get_snapshot(op.vm_snapshot_id).state is SnapshotState.ALLOCATED  # type: ignore[union-attr]
    await rig.agent.stop_vm("vm1", force=False)
    await rig.agent.undefine_vm("vm1")
    await rig.define(volumes=(*THREE_DISKS, Volume("vdd", "b://pool/4")))
    queue.admitted -= 1
    queue.lock.release()
    done = await rig.wait(op)
    assert done.error is None, done.error
    snap = rig.store.get_snapshot(done.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.READY
    assert {d for g in snap.groups for d in g.disks} == {"vda", "vdb", "vdc", "vdd"}
    b_group = next(g for g in snap.groups if g.owner == B)
    assert b_group.result is not None and b_group.result.disks == {"vdb", "vdd"}
    assert counts["describe"] == 2  # admission (no guess: not idle) and the take when it ran


async def test_a_create_refused_on_the_last_description_is_planned_on_the_vm_as_it_is(
    counted: tuple[Rig, Counter[str]],
) -> None:
    """The last description has a disk whose driver is gone, and the VM has lost that
    disk since: the plan on the guess is refused (UNAVAILABLE, the owner unreachable),
    so the create plans on the VM as its agent describes it now, and succeeds. It
    must not refuse on a guess, nor keep refusing on it."""
    rig, _ = counted
    await rig.agent.stop_vm("vm1", force=False)
    await rig.agent.undefine_vm("vm1")
    await rig.define(volumes=(THREE_DISKS[0], THREE_DISKS[2]))  # vdb (driver b) detached
    await rig.registry.remove_driver(B)
    done = await rig.wait(await rig.create("s2"))
    assert done.error is None, done.error
    snap = rig.store.get_snapshot(done.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.READY
    assert {d for g in snap.groups for d in g.disks} == {"vda", "vdc"}
    guess = rig.registry.last_described("vm1")
    assert guess is not None and len(guess[1].volumes) == 2


def test_the_registry_keeps_a_bounded_number_of_running_vms_descriptions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Last descriptions are kept for RUNNING VMs only, at most DESCRIPTIONS_KEPT,
    the least recently found dropped first."""
    from vmsnap_host import registry as registry_module
    from vmsnap_host.registry import Registry
    from vmsnap_sdk import VM

    monkeypatch.setattr(registry_module, "DESCRIPTIONS_KEPT", 2)
    reg = Registry()
    for n in (1, 2, 3):
        reg._remember(VM(id=f"vm{n}", state=VMState.RUNNING))
    reg._remember(VM(id="vm2", state=VMState.RUNNING))  # found again: the newest
    reg._remember(VM(id="vm4", state=VMState.RUNNING))
    assert list(reg._described) == ["vm2", "vm4"]
    reg._remember(VM(id="vm2", state=VMState.STOPPED))
    assert list(reg._described) == ["vm4"]
