"""A revert whose StopVM (or first DescribeVM) fails ends untouched: nothing moved.

Before, any error while the revert stopped its VM reached the settle step, which
only knows how to bring disks that may have moved to one side: it sent every
group forward. With the VM still RUNNING (its StopVM refused: frozen by a third
party's freeze), the arrays reverted the disks under the running guest, the
agent refused its own disk ("needs it STOPPED; it is RUNNING"), and the
operation was retried on every reconcile tick for ever (chaos seed 16066).
Nothing has moved before the ``reverting`` phase is journaled: the revert now
ends FAILED with the agent's cause, the snapshot READY, the disks as they were.
docs/design.md, "Revert".
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from tests.host.conftest import Rig
from tests.host.revert_rig import A, B, bounded, failed_with, ready, revert_rig
from vmsnap_host.model import OperationRecord, SnapshotState
from vmsnap_sdk import QuiesceMethod, RevertRequest, RevertResult, Volume
from vmsnap_sdk.errors import Reason

TWO_ARRAYS = (Volume("vda", "a://pool/1"), Volume("vdb", "b://pool/2"))
ARRAY_AND_FILE = (Volume("vda", "a://pool/1"), Volume("vdc", "file:///var/lib/vm/3.img"))


async def _frozen_by_a_third_party(rig: Rig, vm_id: str) -> str:
    result = await rig.agent.quiesce(vm_id, QuiesceMethod.GUEST_FREEZE, 60.0, True, "backup-tool")
    return str(result.token)


async def test_a_revert_whose_stop_is_refused_ends_untouched_across_arrays(
    tmp_path: Path, db_url: str
) -> None:
    """Fails on main: the arrays revert vda and vdb under the running VM, and the
    revert ends 'reverted' with the VM RUNNING (or never ends)."""
    async with revert_rig(tmp_path, db_url) as rig:
        await rig.define("vm2", volumes=TWO_ARRAYS)
        sid = await ready(rig, "vm2")
        token = await _frozen_by_a_third_party(rig, "vm2")
        op = await rig.manager.revert_snapshot("rv", sid, stop_vm=True)
        done = await bounded(rig, op)
        error = failed_with(done, grpc.StatusCode.FAILED_PRECONDITION, Reason.VM_FROZEN)
        assert "nothing was reverted" in error.message, error
        assert "frozen" in error.message, error
        assert rig.drivers[A].reverted == [] and rig.drivers[B].reverted == []
        snap = rig.store.get_snapshot(sid)
        assert snap is not None and snap.state is SnapshotState.READY, snap
        assert (await rig.agent.describe_vm("vm2")).state.name == "RUNNING"
        assert rig.store.unfinished_operations() == []
        # Once the third party thaws, the same revert (a new request) goes through.
        await rig.agent.unquiesce(token)
        again = await bounded(rig, await rig.manager.revert_snapshot("rv2", sid, stop_vm=True))
        assert again.error is None, again.error
        assert rig.drivers[A].reverted == [sid] and rig.drivers[B].reverted == [sid]


async def test_a_revert_whose_stop_is_refused_ends_untouched_on_one_group(
    tmp_path: Path, db_url: str
) -> None:
    """One array, one file disk on the agent: the same, and the agent's disk is
    not touched either. Fails on main: the operation is retried for ever."""
    async with revert_rig(tmp_path, db_url) as rig:
        await rig.define("vm3", volumes=ARRAY_AND_FILE)
        sid = await ready(rig, "vm3")
        await _frozen_by_a_third_party(rig, "vm3")
        op = await rig.manager.revert_snapshot("rv", sid, stop_vm=True)
        done = await bounded(rig, op)
        assert done.error is not None and "nothing was reverted" in done.error.message, done
        assert rig.drivers[A].reverted == []
        snap = rig.store.get_snapshot(sid)
        assert snap is not None and snap.state is SnapshotState.READY, snap
        assert rig.store.unfinished_operations() == []


def _watch_the_vm(rig: Rig, vm_id: str) -> list[str]:
    """The VM's state at each of driver A's reverts (recorded, then the revert runs)."""
    states: list[str] = []
    a = rig.drivers[A]
    revert = a.revert_snapshot

    async def watched(request: RevertRequest) -> RevertResult:
        states.append(rig.agent._vms[vm_id].state)
        return await revert(request)

    a.revert_snapshot = watched  # type: ignore[method-assign]
    return states


async def _until_waiting(rig: Rig, op_id: str) -> str:
    for _ in range(250):
        now = rig.store.get_operation(op_id)
        assert now is not None, op_id
        assert not now.done, (now.step, now.error)
        if "retried" in now.step:
            return str(now.step)
        await asyncio.sleep(0.02)
    raise AssertionError("the revert never waited")


async def _started_while_waiting(
    rig: Rig, *, stop_vm: bool
) -> tuple[str, OperationRecord, list[str]]:
    """VM vm2 (one disk on array a; RUNNING when the revert may stop it, else
    STOPPED) and its READY snapshot; a revert to it that waits, retried, while the
    array is down; the VM started on its agent meanwhile (the revert had it
    STOPPED), then the array back. Returns the snapshot, the revert, and the VM's
    state at each of the array's reverts (_watch_the_vm)."""
    await rig.define("vm2", volumes=(Volume("vda", "a://pool/9"),), running=stop_vm)
    sid = await ready(rig, "vm2")
    states = _watch_the_vm(rig, "vm2")
    a = rig.drivers[A]
    a.o.behaviour, a.o.fail_on = "fail-transient", "revert"
    op = await rig.manager.revert_snapshot("rv", sid, stop_vm=stop_vm)
    await _until_waiting(rig, op.id)
    assert (await rig.agent.describe_vm("vm2")).state.name == "STOPPED"
    await rig.agent.start_vm("vm2")
    a.o.behaviour = "ok"
    return sid, op, states


async def test_a_vm_started_behind_the_hosts_back_is_not_reverted_while_it_runs(
    tmp_path: Path, db_url: str
) -> None:
    """The array is down (the revert waits, retried); meanwhile the VM is started on
    its agent, not through the host. The revert was not asked to stop the VM: it
    waits, saying to stop it, and finishes once it is stopped. Fails on main: the
    array reverts the disk under the running guest once it answers."""
    async with revert_rig(tmp_path, db_url) as rig:
        sid, op, states = await _started_while_waiting(rig, stop_vm=False)
        a = rig.drivers[A]
        await asyncio.sleep(0.5)  # several reconcile ticks
        step = await _until_waiting(rig, op.id)
        assert "vm2 is RUNNING" in step and "vmsnap vm stop vm2" in step, step
        assert "RUNNING" not in states, states
        await rig.agent.stop_vm("vm2", False)
        done = await bounded(rig, op)
        assert done.error is None, done.error
        assert a.reverted[-1] == sid and "RUNNING" not in states, states


async def test_a_revert_asked_to_stop_the_vm_stops_it_again_before_moving_disks(
    tmp_path: Path, db_url: str
) -> None:
    """The same with --stop-vm: the revert stops the VM again itself, then brings
    the disk to the snapshot. Fails on main: reverted while RUNNING."""
    async with revert_rig(tmp_path, db_url) as rig:
        sid, op, states = await _started_while_waiting(rig, stop_vm=True)
        a = rig.drivers[A]
        done = await bounded(rig, op)
        assert done.error is None, done.error
        assert a.reverted[-1] == sid and "RUNNING" not in states, states
        assert (await rig.agent.describe_vm("vm2")).state.name == "STOPPED"
