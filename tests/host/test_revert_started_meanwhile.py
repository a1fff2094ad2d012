"""A VM started while its revert runs, before any disk moved, is not reverted under.

A revert stops its VM (or finds it STOPPED), then, on several arrays, keeps each
disk's current state (a take per array: seconds on real arrays) before the first
disk moves. It used to move the disks on the strength of that first look: a
StartVM in between (through the host's own API, or on the agent) and the arrays
reverted the disks under the running guest. Now the revert describes the VM again
right before the first disk moves: started meanwhile, it is stopped again when the
revert may stop it (--stop-vm), else the revert ends untouched, FAILED_PRECONDITION
/ VM_NOT_STOPPED. And the host refuses StartVM while a revert of the VM is open
(ABORTED / VM_BUSY). docs/design.md, "No disk is reverted under a running guest".
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from tests.host.conftest import Rig
from tests.host.revert_rig import A, B, bounded, failed_with, ready, revert_rig
from tests.support.servicer_context import Aborted, ServicerContext
from vmsnap_host.api.servicer import HostServicer
from vmsnap_host.model import SnapshotState
from vmsnap_sdk import VM, RevertRequest, RevertResult, SnapshotResult, TakeRequest, Volume
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_sdk.errors import Reason

TWO_ARRAYS = (Volume("vda", "a://pool/1"), Volume("vdb", "b://pool/2"))


def _states_at_reverts(rig: Rig, vm_id: str) -> list[str]:
    """The VM's state as each array's revert begins (recorded, then the revert runs)."""
    states: list[str] = []
    for name in (A, B):
        driver = rig.drivers[name]
        revert = driver.revert_snapshot

        async def watched(
            request: RevertRequest,
            revert: Callable[[RevertRequest], Awaitable[RevertResult]] = revert,
        ) -> RevertResult:
            states.append(rig.agent._vms[vm_id].state)
            return await revert(request)

        driver.revert_snapshot = watched  # type: ignore[method-assign]
    return states


def _started_while_keeping(rig: Rig, vm_id: str) -> None:
    """Array a's take of the revert's kept state starts the VM on its agent first
    (a StartVM that reached the agent after the revert had stopped the VM)."""
    driver = rig.drivers[A]
    take = driver.take_snapshot

    async def starting(request: TakeRequest) -> SnapshotResult:
        if "-keep-" in request.vm_snapshot_id:
            await rig.agent.start_vm(vm_id)
        return await take(request)

    driver.take_snapshot = starting  # type: ignore[method-assign]


async def test_a_vm_started_while_the_revert_kept_states_ends_it_untouched(
    tmp_path: Path, db_url: str
) -> None:
    """Fails on main: both arrays revert under the running guest, the revert ends
    without error."""
    async with revert_rig(tmp_path, db_url) as rig:
        await rig.define("vm2", volumes=TWO_ARRAYS, running=False)
        sid = await ready(rig, "vm2")
        states = _states_at_reverts(rig, "vm2")
        _started_while_keeping(rig, "vm2")
        op = await rig.manager.revert_snapshot("rv", sid, stop_vm=False)
        done = await bounded(rig, op)
        error = failed_with(done, grpc.StatusCode.FAILED_PRECONDITION, Reason.VM_NOT_STOPPED)
        assert "started while the revert ran" in error.message, error
        assert "vmsnap vm stop vm2" in error.message and "nothing was reverted" in error.message
        assert states == [] and rig.drivers[A].reverted == [] and rig.drivers[B].reverted == []
        snap = rig.store.get_snapshot(sid)
        assert snap is not None and snap.state is SnapshotState.READY, snap
        assert rig.store.kept_states(op.id) == []  # the kept states were deleted
        assert (await rig.agent.describe_vm("vm2")).state.name == "RUNNING"
        assert rig.store.unfinished_operations() == []


async def test_a_revert_asked_to_stop_the_vm_stops_it_again_after_keeping_states(
    tmp_path: Path, db_url: str
) -> None:
    """With --stop-vm the revert stops the VM again and goes on. Fails on main:
    reverted while RUNNING."""
    async with revert_rig(tmp_path, db_url) as rig:
        await rig.define("vm2", volumes=TWO_ARRAYS, running=True)
        sid = await ready(rig, "vm2")
        states = _states_at_reverts(rig, "vm2")
        _started_while_keeping(rig, "vm2")
        done = await bounded(rig, await rig.manager.revert_snapshot("rv", sid, stop_vm=True))
        assert done.error is None, done.error
        assert sorted(states) == ["STOPPED", "STOPPED"], states
        assert rig.drivers[A].reverted == [sid] and rig.drivers[B].reverted == [sid]
        assert (await rig.agent.describe_vm("vm2")).state.name == "STOPPED"


async def test_a_vm_started_after_the_revert_looked_is_not_reverted_on_one_array(
    tmp_path: Path, db_url: str
) -> None:
    """One group: the VM was STOPPED when the revert described it, and started right
    after. Fails on main: the array reverts under the running guest."""
    async with revert_rig(tmp_path, db_url) as rig:
        await rig.define("vm3", volumes=(Volume("vda", "a://pool/7"),), running=False)
        sid = await ready(rig, "vm3")
        states = _states_at_reverts(rig, "vm3")
        describe = rig.agent.describe_vm
        started = False

        async def then_started(vm_id: str) -> VM:
            nonlocal started
            vm = await describe(vm_id)
            if not started and rig.store.unfinished_operations():
                # The revert's first look (admitted: its operation is recorded):
                # STOPPED, then someone starts the VM.
                started = True
                await rig.agent.start_vm(vm_id)
            return vm

        rig.agent.describe_vm = then_started  # type: ignore[method-assign]
        done = await bounded(rig, await rig.manager.revert_snapshot("rv", sid, stop_vm=False))
        assert done.error is not None and done.error.reason == Reason.VM_NOT_STOPPED, done
        assert "started while the revert ran" in done.error.message, done.error
        assert started and states == [] and rig.drivers[A].reverted == []
        snap = rig.store.get_snapshot(sid)
        assert snap is not None and snap.state is SnapshotState.READY, snap


async def test_the_host_refuses_start_vm_while_a_revert_of_the_vm_is_open(
    tmp_path: Path, db_url: str
) -> None:
    """Fails on main: StartVM starts the VM the open revert stopped."""
    async with revert_rig(tmp_path, db_url) as rig:
        await rig.define("vm2", volumes=(Volume("vda", "a://pool/9"),), running=True)
        sid = await ready(rig, "vm2")
        a = rig.drivers[A]
        a.o.behaviour, a.o.fail_on = "fail-transient", "revert"  # the revert waits, retried
        op = await rig.manager.revert_snapshot("rv", sid, stop_vm=True)
        for _ in range(250):
            if "retried" in (rig.store.get_operation(op.id) or op).step:
                break
            await asyncio.sleep(0.02)
        servicer = HostServicer(rig.manager, rig.registry, rig.store)
        context = ServicerContext()
        with pytest.raises(Aborted):
            await servicer.StartVM(pb.StartVMRequest(vm_id="vm2"), context)  # type: ignore[arg-type]
        assert context.aborted is not None
        code, message, _ = context.aborted
        assert code is grpc.StatusCode.ABORTED, message
        assert f"being reverted (operation {op.id}" in message, message
        assert f"vmsnap operations show {op.id}" in message, message
        assert (await rig.agent.describe_vm("vm2")).state.name == "STOPPED"
        a.o.behaviour = "ok"
        assert (await bounded(rig, op)).error is None
        # Once the revert ended, the VM starts.
        reply = await servicer.StartVM(pb.StartVMRequest(vm_id="vm2"), ServicerContext())  # type: ignore[arg-type]
        assert reply.vm.state == common_pb2.VM_STATE_RUNNING
