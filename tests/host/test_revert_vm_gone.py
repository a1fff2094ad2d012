"""A revert whose VM is gone from its hypervisor agent ends, and says where the disks are.

Before, when the agent no longer knew the VM (undefined on the agent behind the
host's back, or the agent lost it), the revert's settle step asked DescribeVM,
got NOT_FOUND, and the operation was retried on every reconcile tick for ever:
the VM's queue stayed blocked and the caller had no answer. A definitive
NOT_FOUND / VM_NOT_FOUND from the snapshot's agent now ends the revert NOT_FOUND
/ VM_NOT_FOUND once the disks on arrays are on a side the message names; a
transient error (UNAVAILABLE, DEADLINE_EXCEEDED) is still retried. The snapshot
stays READY: its data on the arrays is intact. docs/design.md, "Revert", "When
the VM is gone".
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.host.conftest import Rig
from tests.host.e2e import CONFIG, Cluster, cluster, eventually
from tests.host.revert_rig import (
    BOUND,
    A,
    B,
    bounded,
    failed_with,
    one_disk_snapshot,
    ready,
    revert_rig,
)
from vmsnap_host.model import OperationRecord, SnapshotState
from vmsnap_sdk import VM, RevertRequest, RevertResult, Volume
from vmsnap_sdk._errors import from_status
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_sdk._proto.hypervisor.v1 import hypervisor_pb2, hypervisor_pb2_grpc
from vmsnap_sdk.errors import NotFound, Reason, Unavailable


async def _waiting(rig: Rig, op: OperationRecord) -> None:
    """Until the revert is left open to be retried (a transient error)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + BOUND
    while "retried" not in ((now := rig.store.get_operation(op.id)) or op).step:
        assert now is not None and not now.done, now
        assert loop.time() < give_up, f"the revert never waited: step {now.step!r}"
        await asyncio.sleep(0.02)


def _vm_gone(rig: Rig, done: OperationRecord, sid: str, vm_id: str) -> str:
    """The revert failed NOT_FOUND / VM_NOT_FOUND saying what is gone and what to do;
    the snapshot is READY again (its data is intact). Returns the message."""
    error = failed_with(done, grpc.StatusCode.NOT_FOUND, Reason.VM_NOT_FOUND)
    assert f"VM {vm_id} is gone from agent sim-1" in error.message, error
    assert "DefineVM" in error.message and "DeleteVMSnapshot" in error.message, error
    snap = rig.store.get_snapshot(sid)
    assert snap is not None and snap.state is SnapshotState.READY, snap
    assert rig.store.unfinished_operations() == []
    return error.message


async def test_a_revert_whose_vm_was_undefined_before_it_ran_ends_untouched(
    tmp_path: Path, db_url: str
) -> None:
    """Admitted while the VM existed, undefined on the agent before the revert ran.
    Fails on main: it ends ABORTED "the host restarted" (one tick later), which is
    not what happened."""
    async with revert_rig(tmp_path, db_url) as rig:
        await rig.define("vm2", volumes=(Volume("vda", "a://pool/9"),), running=False)
        sid = await ready(rig, "vm2")
        op = await rig.manager.revert_snapshot("rv", sid, stop_vm=True)
        # Before the revert's task runs (the sim undefines without yielding).
        await rig.agent.undefine_vm("vm2")
        message = _vm_gone(rig, await bounded(rig, op), sid, "vm2")
        assert "nothing was reverted" in message
        assert rig.drivers[A].reverted == []
        snap = rig.store.get_snapshot(sid)
        assert snap is not None and snap.current  # as before the revert
        # A new revert is refused at once: the VM is not known to any agent.
        with pytest.raises(NotFound) as refused:
            await rig.manager.revert_snapshot("rv-again", sid, stop_vm=True)
        assert refused.value.reason == Reason.VM_NOT_FOUND


async def test_a_revert_left_waiting_ends_when_its_vm_is_gone(tmp_path: Path, db_url: str) -> None:
    """The array is down: the revert waits (retried). Meanwhile the VM is undefined
    on its agent. While the array stays down the revert still waits (never given
    up on UNAVAILABLE); once it answers, the disk is brought to the snapshot (the
    only side a retry can reach without the agent) and the revert ends saying so.
    Fails on main: the settle step's DescribeVM NOT_FOUND escapes on every tick,
    the operation never ends."""
    async with revert_rig(tmp_path, db_url) as rig:
        await rig.define("vm2", volumes=(Volume("vda", "a://pool/9"),), running=False)
        sid = await ready(rig, "vm2")
        a = rig.drivers[A]
        a.o.behaviour, a.o.fail_on = "fail-transient", "revert"
        op = await rig.manager.revert_snapshot("rv", sid, stop_vm=True)
        await _waiting(rig, op)
        await rig.agent.undefine_vm("vm2")
        waited = await rig.manager.wait_operation(op.id, 1.0)
        assert not waited.done, waited  # the array is still down: not given up
        a.o.behaviour = "ok"
        message = _vm_gone(rig, await bounded(rig, op), sid, "vm2")
        assert "disk vda was reverted to the snapshot" in message
        assert a.reverted[-1] == sid
        snap = rig.store.get_snapshot(sid)
        assert snap is not None and snap.current  # every disk is at the snapshot


async def test_a_revert_across_groups_whose_vm_is_gone_puts_the_arrays_back(
    tmp_path: Path, db_url: str
) -> None:
    """Three groups (a, b, the hypervisor): the VM is undefined on the agent just
    before its native revert, after a and b were reverted. a and b are put back to
    the states kept before (a is down for a while: waited for, not given up); the
    agent's disk was not touched. The snapshot can still be deleted.
    Fails on main: the sim's NOT_FOUND is taken for the snapshot's data being gone
    (SNAPSHOT_LOST, the snapshot ERROR); with the agent contract's VM_NOT_FOUND the
    revert was retried for ever."""
    async with revert_rig(tmp_path, db_url) as rig:
        await rig.define(running=False)
        sid = await ready(rig, "vm1")
        agent = rig.agent
        native_revert = agent.revert_native_snapshot

        async def undefined_first(vm_id: str, snapshot_id: str) -> VM:
            if snapshot_id == sid:
                await agent.undefine_vm(vm_id)  # behind the host's back
            return await native_revert(vm_id, snapshot_id)

        agent.revert_native_snapshot = undefined_first  # type: ignore[method-assign]
        a = rig.drivers[A]
        real = a.revert_snapshot
        down = [True]

        async def flaky(request: RevertRequest) -> RevertResult:
            if down[0] and "-keep-" in request.vm_snapshot_id:
                raise Unavailable("array a not reachable (test)")
            return await real(request)

        a.revert_snapshot = flaky  # type: ignore[method-assign]
        op = await rig.manager.revert_snapshot("rv", sid, stop_vm=True)
        await _waiting(rig, op)
        held = rig.store.get_snapshot(sid)
        assert held is not None and held.state is SnapshotState.REVERTING
        down[0] = False
        message = _vm_gone(rig, await bounded(rig, op), sid, "vm1")
        assert "every disk on an array (vda, vdb) was put back" in message
        assert "disk vdc on agent sim-1 was not reverted" in message
        for d in (A, B):
            assert rig.drivers[d].reverted[0] == sid
            assert "-keep-" in rig.drivers[d].reverted[-1]
        await rig.recovery.reconcile_once()
        assert not rig.store.kept_states()
        # What the message tells the operator works: the snapshot can be deleted.
        deleted = await rig.wait(await rig.manager.delete_snapshot("del", sid))
        assert deleted.error is None, deleted.error


async def test_a_memory_revert_across_arrays_whose_vm_is_gone_names_the_moved_disks(
    tmp_path: Path, db_url: str
) -> None:
    """A memory revert keeps no undo: the arrays went to the snapshot first, then
    the agent answered that the VM is gone. The revert says which disks moved and
    that the memory was not loaded (never a silent half revert).
    Fails on main: taken for the snapshot's data being gone (SNAPSHOT_LOST)."""
    async with revert_rig(tmp_path, db_url) as rig:
        await rig.define()
        sid = await ready(rig, "vm1", "m", memory=True)
        later = await ready(rig, "vm1", "s2")  # the current one
        agent = rig.agent
        native_revert = agent.revert_native_snapshot

        async def undefined_first(vm_id: str, snapshot_id: str) -> VM:
            await agent.undefine_vm(vm_id)
            return await native_revert(vm_id, snapshot_id)

        agent.revert_native_snapshot = undefined_first  # type: ignore[method-assign]
        done = await bounded(rig, await rig.manager.revert_snapshot("rv", sid, stop_vm=False))
        message = _vm_gone(rig, done, sid, "vm1")
        assert "disks vda, vdb were reverted to the snapshot" in message
        assert "the memory state was not loaded" in message
        assert rig.drivers[A].reverted == [sid] and rig.drivers[B].reverted == [sid]
        # Not every disk is at the snapshot: the current one stays as it was.
        current = [s.id for _, s in rig.store.list_snapshots("vm1", 0, 10, False) if s.current]
        assert current == [later]


async def test_a_kept_native_state_of_a_vm_gone_counts_as_deleted(
    tmp_path: Path, db_url: str
) -> None:
    """An agent that answers NOT_FOUND / VM_NOT_FOUND to DeleteNativeSnapshot (the
    QEMU agent does, for a VM it no longer has) holds nothing to delete: the
    snapshot's delete finishes instead of waiting for ever.
    Fails on main: the delete waits for the agent on every tick."""
    async with revert_rig(tmp_path, db_url) as rig:
        await rig.define(running=False)
        sid = await ready(rig, "vm1")
        await rig.agent.undefine_vm("vm1")

        async def unknown_vm(vm_id: str, snapshot_id: str) -> None:
            raise NotFound(f"no VM {vm_id!r}", reason=Reason.VM_NOT_FOUND)

        rig.agent.delete_native_snapshot = unknown_vm  # type: ignore[method-assign]
        op = await rig.manager.delete_snapshot("del", sid)
        done = await rig.manager.wait_operation(op.id, BOUND)
        assert done.done and done.error is None, done
        snap = rig.store.get_snapshot(sid)
        assert snap is not None and snap.state is SnapshotState.REMOVED


# --- real processes over unix sockets ---------------------------------------------------

#: Revert retries give up after a second, so the revert is left waiting quickly.
SHORT = CONFIG.replace("take_timeout_seconds = 5", "take_timeout_seconds = 1")


@pytest.fixture
def flaky_a(sockdir: Path, tmp_path: Path) -> Iterator[Cluster]:
    yield from cluster(
        sockdir,
        tmp_path,
        {"a": ["--behaviour", "fail-transient", "--fail-on", "revert"]},
        config=SHORT,
    )


def test_revert_vm_snapshot_whose_vm_was_undefined_on_its_agent_answers(
    flaky_a: Cluster,
) -> None:
    """The host, the sim agent and the fake drivers as processes. The revert waits
    for driver a (UNAVAILABLE); the VM is undefined on the agent directly; driver
    a comes back. The operation ends NOT_FOUND / VM_NOT_FOUND within seconds.
    Fails on main: the operation never ends."""
    c = flaky_a
    sid = one_disk_snapshot(c)
    revert = c.host.RevertVMSnapshot(
        pb.RevertVMSnapshotRequest(request_id="rv1", id=sid, stop_vm=True), timeout=10
    ).operation

    def step() -> str:
        now = c.host.GetOperation(pb.GetOperationRequest(id=revert.id), timeout=5).operation
        assert not now.done, now
        return str(now.step) if "retried" in now.step else ""

    eventually(step, 15, "the revert to wait for driver a")
    with grpc.insecure_channel(f"unix://{c.sock}/agent.sock") as channel:
        hypervisor_pb2_grpc.HypervisorAgentStub(channel).UndefineVM(
            hypervisor_pb2.UndefineVMRequest(vm_id="vm1"), timeout=10
        )
    c.start_driver("a")  # back, answering
    request = pb.WaitOperationRequest(id=revert.id)
    request.timeout.FromSeconds(8)
    done = c.host.WaitOperation(request, timeout=15).operation
    assert done.done, f"the revert did not end within 8 s: step {done.step!r}"
    assert done.error.code == grpc.StatusCode.NOT_FOUND.value[0], done.error
    assert "VM vm1 is gone from agent" in done.error.message, done.error
    cause = from_status(grpc.StatusCode.NOT_FOUND, "", done.error.SerializeToString())
    assert cause.reason == Reason.VM_NOT_FOUND, cause
    snap = c.host.GetVMSnapshot(pb.GetVMSnapshotRequest(id=sid), timeout=5)
    assert snap.vm_snapshot.state == pb.VM_SNAPSHOT_STATE_READY
    assert c.driver_state("a")["reverted"][-1] == sid
