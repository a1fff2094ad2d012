"""Revert, delete and crash recovery, in process."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from tests.fakes.driver import Options
from tests.host.conftest import Rig, make_rig
from vmsnap_host.model import OperationRecord, OperationType, SnapshotState
from vmsnap_sdk import Capability, VMState
from vmsnap_sdk.errors import FailedPrecondition, NotFound


async def _ready(rig: Rig, name: str = "s1") -> str:
    op = await rig.wait(await rig.create(name))
    assert op.error is None, op.error
    return op.vm_snapshot_id


async def test_disk_only_revert_needs_a_stopped_vm_or_stop_vm(rig: Rig) -> None:
    await rig.define()
    sid = await _ready(rig)
    with pytest.raises(FailedPrecondition, match="stop_vm"):
        await rig.manager.revert_snapshot("rv1", sid, stop_vm=False)
    op = await rig.wait(await rig.manager.revert_snapshot("rv2", sid, stop_vm=True))
    assert op.error is None, op.error
    vm = await rig.agent.describe_vm("vm1")
    assert vm.state is VMState.STOPPED
    for d in rig.drivers.values():
        assert sid in d.reverted
    snap = rig.store.get_snapshot(sid)
    assert snap is not None and snap.state is SnapshotState.READY and snap.current
    # several groups: each driver without REVERT_UNDO got a safety snapshot, deleted after
    for d in rig.drivers.values():
        kept = [c for c in d.calls if c[0] == "take" and "-keep-" in c[1]]
        assert kept and all(k[1] not in d.snapshots for k in kept)


async def test_a_failed_revert_is_rolled_back(tmp_path: Path, db_url: str) -> None:
    rig = await make_rig(
        tmp_path,
        Options(name="io.vmsnap.test.a", scheme="a"),
        Options(name="io.vmsnap.test.b", scheme="b", behaviour="fail-final", fail_on="revert"),
        db=db_url,
    )
    try:
        await rig.define()
        sid = await _ready(rig)
        op = await rig.wait(await rig.manager.revert_snapshot("rv", sid, stop_vm=True))
        assert op.error is not None and "put back" in op.error.message
        a = rig.drivers["io.vmsnap.test.a"]
        # a was reverted to the snapshot, then back to the state kept before
        assert a.reverted[0] == sid and "-keep-" in a.reverted[-1]
        snap = rig.store.get_snapshot(sid)
        assert snap is not None and snap.state is SnapshotState.READY
    finally:
        await rig.manager.close()
        await rig.agent.close()
        rig.store.close()


async def test_memory_snapshot_reverts_to_running(rig: Rig) -> None:
    from vmsnap_sdk import Volume

    await rig.define("vm3", volumes=(Volume("vda", "file:///x.img"),))
    op = await rig.wait(await rig.create("m", "vm3", memory=True))
    await rig.agent.stop_vm("vm3", True)
    rev = await rig.wait(await rig.manager.revert_snapshot("rv", op.vm_snapshot_id, stop_vm=False))
    assert rev.error is None, rev.error
    assert (await rig.agent.describe_vm("vm3")).state is VMState.RUNNING


async def test_delete_repoints_children_and_current_and_is_idempotent(rig: Rig) -> None:
    await rig.define()
    s1 = await _ready(rig, "s1")
    s2 = await _ready(rig, "s2")
    s3 = await _ready(rig, "s3")
    op = await rig.wait(await rig.manager.delete_snapshot("d2", s2))
    assert op.error is None
    child = rig.store.get_snapshot(s3)
    assert child is not None and child.parent_id == s1
    op = await rig.wait(await rig.manager.delete_snapshot("d3", s3))
    parent = rig.store.get_snapshot(s1)
    assert parent is not None and parent.current
    removed = rig.store.get_snapshot(s3)
    assert removed is not None and removed.state is SnapshotState.REMOVED
    for d in rig.drivers.values():
        assert s2 not in d.snapshots and s3 not in d.snapshots
    assert [n.snapshot_id for n in await rig.agent.list_native_snapshots("vm1")] == [s1]
    again = await rig.manager.delete_snapshot("d3-again", s3)
    assert again.done and again.error is None
    with pytest.raises(NotFound):
        await rig.manager.delete_snapshot("d4", "doesnotexist")


async def test_delete_with_a_driver_down_expunges_in_the_background(
    tmp_path: Path, db_url: str
) -> None:
    rig = await make_rig(
        tmp_path,
        Options(name="io.vmsnap.test.a", scheme="a"),
        Options(name="io.vmsnap.test.b", scheme="b", behaviour="fail-transient", fail_on="delete"),
        db=db_url,
    )
    try:
        await rig.define()
        sid = await _ready(rig)
        op = await rig.manager.delete_snapshot("d", sid)
        waited = await rig.manager.wait_operation(op.id, 2.0)
        assert not waited.done
        snap = rig.store.get_snapshot(sid)
        assert snap is not None and snap.state is SnapshotState.EXPUNGING
        rig.drivers["io.vmsnap.test.b"].o.behaviour = "ok"  # the array is back
        await rig.recovery.reconcile_once()
        snap = rig.store.get_snapshot(sid)
        assert snap is not None and snap.state is SnapshotState.REMOVED
        assert (await rig.manager.wait_operation(op.id, 1.0)).done
        assert sid not in rig.drivers["io.vmsnap.test.b"].snapshots
    finally:
        await rig.manager.close()
        await rig.agent.close()
        rig.store.close()


@pytest.mark.parametrize("journaled", ["method", "token"])
async def test_restart_rolls_back_an_interrupted_take(rig: Rig, journaled: str) -> None:
    """What a crash leaves: a CREATING snapshot, the freeze method journaled (a take
    journals no token since session 12: recovery thaws by operation id; a journal
    an older host wrote has the token), cuts on the drivers. Recovery thaws,
    deletes everywhere, and records ERROR."""
    await rig.define()
    vm = await rig.agent.describe_vm("vm1")
    sid = await _ready(rig, "template")
    snap = rig.store.get_snapshot(sid)
    assert snap is not None
    # Forge the state of a crash mid-take from a finished take: same groups.
    crashed = replace(
        snap, id="crashed1", name="crashed", state=SnapshotState.CREATING, current=False
    )
    op = OperationRecord(
        id="op-crashed",
        type=OperationType.CREATE,
        vm_id="vm1",
        vm_snapshot_id="crashed1",
        request_id="r-crashed",
        step="taking 3 groups",
    )
    await rig.store.write(rig.store.w_create(crashed, op))
    from vmsnap_sdk import QuiesceMethod

    q = await rig.agent.quiesce("vm1", QuiesceMethod.OVERLAY, 30, True, "op-crashed")
    saved = {"quiesce_token": q.token} if journaled == "token" else {"quiesce_method": "OVERLAY"}
    await rig.store.write(rig.store.w_journal(op.id, "quiescing and taking 3 groups", 15, **saved))
    for d in rig.drivers.values():
        await d.take_snapshot(
            __import__("vmsnap_sdk").TakeRequest("crashed1", vm, (vm.volumes[0],))
        )
    await rig.agent.take_native_snapshot("vm1", "crashed1", ["vdc"], False)
    assert rig.frozen()

    await rig.recovery.resolve_on_start()

    assert not rig.frozen()
    after = rig.store.get_snapshot("crashed1")
    assert after is not None and after.state is SnapshotState.ERROR
    assert after.error is not None and "restarted" in after.error.message
    done = rig.store.get_operation("op-crashed")
    assert done is not None and done.done and done.error is not None
    assert done.error.code == grpc.StatusCode.ABORTED.value[0]
    for d in rig.drivers.values():
        assert "crashed1" not in d.snapshots
    assert "crashed1" not in [n.snapshot_id for n in await rig.agent.list_native_snapshots("vm1")]


async def test_revert_refused_for_a_driver_without_revert(tmp_path: Path, db_url: str) -> None:
    rig = await make_rig(
        tmp_path,
        Options(
            name="io.vmsnap.test.a",
            scheme="a",
            capabilities=frozenset({Capability.CONSISTENT_GROUP}),
        ),
        Options(name="io.vmsnap.test.b", scheme="b"),
        db=db_url,
    )
    try:
        await rig.define(running=False)
        sid = await _ready(rig)
        with pytest.raises(FailedPrecondition, match="CAPABILITY_REVERT"):
            await rig.manager.revert_snapshot("rv", sid, stop_vm=False)
    finally:
        await rig.manager.close()
        await rig.agent.close()
        rig.store.close()


async def test_revert_undo_is_used_where_the_array_offers_it(tmp_path: Path, db_url: str) -> None:
    undo = frozenset({Capability.CONSISTENT_GROUP, Capability.REVERT, Capability.REVERT_UNDO})
    rig = await make_rig(
        tmp_path,
        Options(name="io.vmsnap.test.a", scheme="a", capabilities=undo),
        Options(name="io.vmsnap.test.b", scheme="b", behaviour="fail-final", fail_on="revert"),
        db=db_url,
    )
    try:
        await rig.define()
        sid = await _ready(rig)
        op = await rig.wait(await rig.manager.revert_snapshot("rv", sid, stop_vm=True))
        assert op.error is not None and "put back" in op.error.message
        a = rig.drivers["io.vmsnap.test.a"]
        # no safety snapshot on a: its own undo was kept, used to go back, then dropped
        assert not [c for c in a.calls if c[0] == "take" and "-keep-" in c[1]]
        assert a.reverted[0] == sid and "-keep-" in a.reverted[-1]
        assert set(a.snapshots) == {sid}
    finally:
        await rig.manager.close()
        await rig.agent.close()
        rig.store.close()


async def test_two_deletes_of_one_snapshot_both_finish(rig: Rig) -> None:
    """Both admitted while it was READY (two callers, or two replicas): the second
    finds it removed and succeeds. It stayed open before, re-run on every tick."""
    await rig.define()
    sid = await _ready(rig)
    first = await rig.manager.delete_snapshot("d1", sid)
    second = await rig.manager.delete_snapshot("d2", sid)
    for op in (first, second):
        done = await rig.wait(op)
        assert done.error is None, done.error
    snap = rig.store.get_snapshot(sid)
    assert snap is not None and snap.state is SnapshotState.REMOVED
    assert rig.store.unfinished_operations() == []
