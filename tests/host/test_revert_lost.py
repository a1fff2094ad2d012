"""A revert to a snapshot whose data was deleted behind the host's back ends.

Before, the revert of a snapshot whose array snapshot (or native snapshot) was
gone retried "bringing every disk to one side" on every reconcile tick for
ever: the operation never ended, the VM's queue stayed blocked behind it and
the caller had no answer. A definitive NOT_FOUND from the owner of the
snapshot's own data means the snapshot can no longer restore: the revert ends
FAILED (SNAPSHOT_LOST) on one side, and the snapshot is ERROR, so a later
revert is refused at once. A transient error is still retried until it settles.
docs/design.md, "Revert".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.host.conftest import Rig
from tests.host.e2e import Cluster, cluster
from tests.host.revert_rig import (
    A,
    B,
    bounded,
    one_disk_snapshot,
    ready,
    revert_rig,
)
from vmsnap_host.model import OperationRecord, SnapshotState
from vmsnap_sdk import RevertRequest, RevertResult, VMState, Volume
from vmsnap_sdk._errors import from_rpc_error, from_status
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_sdk.errors import FailedPrecondition, Reason, Unavailable


def _lost(rig: Rig, done: OperationRecord, sid: str, owner: str) -> None:
    """The revert failed saying what is gone and what to do; the snapshot is ERROR."""
    assert done.error is not None
    assert done.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0], done.error
    assert done.error.reason == Reason.SNAPSHOT_LOST, done.error
    assert owner in done.error.message and "gone" in done.error.message, done.error
    assert "DeleteVMSnapshot" in done.error.message, done.error
    snap = rig.store.get_snapshot(sid)
    assert snap is not None and snap.state is SnapshotState.ERROR
    assert snap.error is not None and snap.error.reason == Reason.SNAPSHOT_LOST
    assert not snap.current
    assert rig.store.unfinished_operations() == []


async def _refused_at_once(rig: Rig, sid: str) -> None:
    with pytest.raises(FailedPrecondition, match="gone") as refused:
        await rig.manager.revert_snapshot("rv-again", sid, stop_vm=True)
    assert refused.value.reason == Reason.SNAPSHOT_STATE


async def test_a_revert_to_a_snapshot_whose_array_snapshot_is_gone_ends(
    tmp_path: Path, db_url: str
) -> None:
    """One group (every disk on array a): its snapshot was deleted on the array.
    Fails on main: the operation never ends."""
    async with revert_rig(tmp_path, db_url) as rig:
        await rig.define("vm2", volumes=(Volume("vda", "a://pool/9"),), running=False)
        sid = await ready(rig, "vm2")
        del rig.drivers[A].snapshots[sid]  # deleted behind the host's back
        done = await bounded(rig, await rig.manager.revert_snapshot("rv", sid, stop_vm=True))
        _lost(rig, done, sid, A)
        assert "nothing was reverted" in done.error.message  # type: ignore[union-attr]
        await _refused_at_once(rig, sid)
        # The VM's queue is free: a new snapshot can be taken.
        assert (await rig.wait(await rig.create("s2", "vm2"))).error is None


async def test_a_revert_across_groups_with_one_snapshot_gone_puts_every_disk_back(
    tmp_path: Path, db_url: str
) -> None:
    """Three groups (a, b, the hypervisor): b's snapshot is gone. a and the agent
    were reverted, then put back to the states kept before; the snapshot is ERROR.
    Fails on main: the snapshot stayed READY, so every later revert did it again."""
    async with revert_rig(tmp_path, db_url) as rig:
        await rig.define(running=False)
        sid = await ready(rig, "vm1")
        del rig.drivers[B].snapshots[sid]
        done = await bounded(rig, await rig.manager.revert_snapshot("rv", sid, stop_vm=True))
        _lost(rig, done, sid, B)
        assert "put back as it was before the revert" in done.error.message  # type: ignore[union-attr]
        a = rig.drivers[A]
        assert a.reverted[0] == sid and "-keep-" in a.reverted[-1]
        await _refused_at_once(rig, sid)
        # The kept states were dropped.
        await rig.recovery.reconcile_once()
        assert not rig.store.kept_states()
        assert not [i for d in rig.drivers.values() for i in d.snapshots if "-keep-" in i]


async def test_with_a_snapshot_gone_and_a_driver_down_the_way_back_is_waited_for(
    tmp_path: Path, db_url: str
) -> None:
    """b's snapshot is gone and a, reverted, is unreachable when it should be put
    back: the revert stays open (never forward, never given up on UNAVAILABLE),
    and once a answers every disk is put back and the snapshot is ERROR."""
    async with revert_rig(tmp_path, db_url) as rig:
        await rig.define(running=False)
        sid = await ready(rig, "vm1")
        del rig.drivers[B].snapshots[sid]
        a = rig.drivers[A]
        real = a.revert_snapshot
        down = [False]

        async def flaky(request: RevertRequest) -> RevertResult:
            if down[0]:
                raise Unavailable("array a not reachable (test)")
            result = await real(request)
            down[0] = request.vm_snapshot_id == sid  # down right after the revert
            return result

        a.revert_snapshot = flaky  # type: ignore[method-assign]
        op = await rig.manager.revert_snapshot("rv", sid, stop_vm=True)
        waited = await rig.manager.wait_operation(op.id, 1.5)
        assert not waited.done, waited
        held = rig.store.get_snapshot(sid)
        assert held is not None and held.state is SnapshotState.REVERTING
        assert a.reverted == [sid]  # not put back yet
        down[0] = False
        done = await bounded(rig, op)
        _lost(rig, done, sid, B)
        assert "put back as it was before the revert" in done.error.message  # type: ignore[union-attr]
        assert a.reverted[0] == sid and "-keep-" in a.reverted[-1]


async def test_a_memory_revert_whose_native_snapshot_is_gone_ends(
    tmp_path: Path, db_url: str
) -> None:
    """A memory snapshot (one hypervisor group, no undo): the agent lost it.
    Fails on main: the operation never ends."""
    async with revert_rig(tmp_path, db_url) as rig:
        await rig.define("vm3", volumes=(Volume("vda", "file:///x.img"),))
        sid = await ready(rig, "vm3", "m", memory=True)
        await rig.agent.delete_native_snapshot("vm3", sid)
        done = await bounded(rig, await rig.manager.revert_snapshot("rv", sid, stop_vm=False))
        _lost(rig, done, sid, "sim-1")
        await _refused_at_once(rig, sid)


async def test_a_memory_revert_across_arrays_with_one_snapshot_gone_says_which_disks_moved(
    tmp_path: Path, db_url: str
) -> None:
    """A memory revert keeps no undo: a moved to the snapshot before b answered that
    its snapshot is gone. It cannot be put back, so the revert says so (never
    silently half reverted), leaves the VM stopped and does not load the memory."""
    async with revert_rig(tmp_path, db_url) as rig:
        await rig.define()
        sid = await ready(rig, "vm1", "m", memory=True)
        del rig.drivers[B].snapshots[sid]
        done = await bounded(rig, await rig.manager.revert_snapshot("rv", sid, stop_vm=False))
        _lost(rig, done, sid, B)
        assert "disk vda was reverted to the snapshot" in done.error.message  # type: ignore[union-attr]
        assert rig.drivers[A].reverted == [sid]
        assert (await rig.agent.describe_vm("vm1")).state is VMState.STOPPED


async def test_a_revert_with_its_driver_down_is_retried_and_settles_when_it_is_back(
    tmp_path: Path, db_url: str
) -> None:
    """UNAVAILABLE is no answer about the data: the revert stays open (retried on
    every tick) and lands once the driver is back; the snapshot stays READY."""
    async with revert_rig(tmp_path, db_url) as rig:
        await rig.define("vm2", volumes=(Volume("vda", "a://pool/9"),), running=False)
        sid = await ready(rig, "vm2")
        a = rig.drivers[A]
        a.o.behaviour, a.o.fail_on = "fail-transient", "revert"
        op = await rig.manager.revert_snapshot("rv", sid, stop_vm=True)
        waited = await rig.manager.wait_operation(op.id, 1.5)
        assert not waited.done, waited  # retried across several ticks, not given up
        held = rig.store.get_snapshot(sid)
        assert held is not None and held.state is SnapshotState.REVERTING
        a.o.behaviour = "ok"  # the array is back
        done = await bounded(rig, op)
        assert done.error is None, done.error
        assert a.reverted[-1] == sid
        snap = rig.store.get_snapshot(sid)
        assert snap is not None and snap.state is SnapshotState.READY and snap.current


# --- real processes over unix sockets ---------------------------------------------------


@pytest.fixture
def plain(sockdir: Path, tmp_path: Path) -> Iterator[Cluster]:
    yield from cluster(sockdir, tmp_path, {})


def test_revert_vm_snapshot_of_a_snapshot_deleted_on_the_array_answers(plain: Cluster) -> None:
    """The host, the sim agent and the fake drivers as processes: the array's
    snapshot is deleted while its driver is down, then RevertVMSnapshot. The
    operation ends FAILED_PRECONDITION / SNAPSHOT_LOST within seconds, the
    snapshot is ERROR and a second revert is refused at once. Fails on main: the
    operation never ends."""
    c = plain
    sid = one_disk_snapshot(c)
    c.procs["a"].stop(5)
    state = c.work / "a.json"
    held = json.loads(state.read_text())
    del held["snapshots"][sid]  # deleted on the array, behind the host's back
    state.write_text(json.dumps(held))
    c.start_driver("a")

    revert = c.host.RevertVMSnapshot(
        pb.RevertVMSnapshotRequest(request_id="rv1", id=sid, stop_vm=True), timeout=10
    ).operation
    request = pb.WaitOperationRequest(id=revert.id)
    request.timeout.FromSeconds(8)
    done = c.host.WaitOperation(request, timeout=15).operation
    assert done.done, f"the revert did not end within 8 s: step {done.step!r}"
    assert done.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0], done.error
    assert "io.vmsnap.test.a" in done.error.message and "gone" in done.error.message
    cause = from_status(grpc.StatusCode.FAILED_PRECONDITION, "", done.error.SerializeToString())
    assert cause.reason == Reason.SNAPSHOT_LOST, cause
    assert done.vm_snapshot.state == pb.VM_SNAPSHOT_STATE_ERROR
    snap = c.host.GetVMSnapshot(pb.GetVMSnapshotRequest(id=sid), timeout=5)
    assert snap.vm_snapshot.state == pb.VM_SNAPSHOT_STATE_ERROR

    with pytest.raises(grpc.RpcError) as refused:
        c.host.RevertVMSnapshot(
            pb.RevertVMSnapshotRequest(request_id="rv2", id=sid, stop_vm=True), timeout=10
        )
    error = from_rpc_error(refused.value)
    assert isinstance(error, FailedPrecondition) and "gone" in error.message, error
    assert error.reason == Reason.SNAPSHOT_STATE
