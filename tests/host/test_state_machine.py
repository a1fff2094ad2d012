"""The trustworthy core, in process: every defect of issue 10 that lives in the
host's state machine, revert, freeze and lease handling, each shown failing on
v0.1 and passing now."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from tests.fakes.driver import Options
from tests.host.conftest import FAST, Rig, make_rig
from vmsnap_agent.sim import disk_path
from vmsnap_host.model import KeptState, OperationRecord, OperationType, SnapshotState
from vmsnap_sdk import Capability, QuiesceMethod, SnapshotResult, UnquiesceResult
from vmsnap_sdk.errors import Unavailable

A, B = "io.vmsnap.test.a", "io.vmsnap.test.b"
UNDO = frozenset({Capability.REVERT, Capability.REVERT_UNDO, Capability.LIST})


async def _ready(rig: Rig, name: str = "s1") -> str:
    op = await rig.wait(await rig.create(name))
    assert op.error is None, op.error
    return op.vm_snapshot_id


async def test_a_revert_queued_behind_a_delete_does_not_bring_the_snapshot_back(
    tmp_path: Path,
    db_url: str,
) -> None:
    rig = await make_rig(
        tmp_path,
        Options(name=A, scheme="a"),
        Options(name=B, scheme="b"),
        settings=replace(FAST, queue_bound=4),
        db=db_url,
    )
    try:
        await rig.define()
        sid = await _ready(rig)
        rig.drivers[A].o.behaviour = "hang"  # the VM is busy with a take that hangs
        busy = await rig.create("s2")
        delete = await rig.manager.delete_snapshot("del", sid)
        revert = await rig.manager.revert_snapshot("rev", sid, stop_vm=True)
        rig.drivers[A].o.behaviour = "ok"
        await rig.wait(busy)
        assert (await rig.wait(delete)).error is None
        done = await rig.wait(revert)
        assert done.error is not None
        assert done.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        snap = rig.store.get_snapshot(sid)
        assert snap is not None and snap.state is SnapshotState.REMOVED
    finally:
        await rig.close()


async def test_an_unexpected_exception_in_a_revert_ends_it_on_one_side(
    tmp_path: Path, db_url: str
) -> None:
    rig = await make_rig(
        tmp_path, Options(name=A, scheme="a"), Options(name=B, scheme="b"), db=db_url
    )
    try:
        await rig.define()
        sid = await _ready(rig)

        async def broken(request: Any) -> Any:
            raise RuntimeError("a bug in the client adapter")

        rig.drivers[B].revert_snapshot = broken  # type: ignore[method-assign]
        done = await rig.wait(await rig.manager.revert_snapshot("rv", sid, stop_vm=True))
        assert done.error is not None and done.error.code == grpc.StatusCode.INTERNAL.value[0]
        assert "put back as it was" in done.error.message
        snap = rig.store.get_snapshot(sid)
        assert snap is not None and snap.state is SnapshotState.READY
        # a was reverted, then put back to the state kept before
        assert rig.drivers[A].reverted[0] == sid and "-keep-" in rig.drivers[A].reverted[-1]
        assert not rig.store.kept_states()
        assert not [i for d in rig.drivers.values() for i in d.snapshots if "-keep-" in i]
    finally:
        await rig.close()


async def test_a_group_whose_revert_outcome_is_unknown_is_put_back_too(
    tmp_path: Path, db_url: str
) -> None:
    """b reverts, then its answer is lost (UNAVAILABLE); a fails for good. v0.1 counted
    b as touched but had no undo for it: b stayed reverted while the message said
    "put back"."""
    rig = await make_rig(
        tmp_path,
        Options(name=A, scheme="a", behaviour="fail-final", fail_on="revert"),
        Options(name=B, scheme="b", behaviour="fail-after", fail_on="revert", capabilities=UNDO),
        db=db_url,
    )
    try:
        await rig.define()
        sid = await _ready(rig)
        done = await rig.wait(await rig.manager.revert_snapshot("rv", sid, stop_vm=True))
        assert done.error is not None and "put back as it was" in done.error.message
        b = rig.drivers[B]
        assert sid in b.reverted  # it did happen…
        assert "-keep-" in b.reverted[-1]  # …and was undone with the array's undo
        assert not rig.store.kept_states()
        assert not [i for d in rig.drivers.values() for i in d.snapshots if "-keep-" in i]
    finally:
        await rig.close()


async def test_kept_states_whose_delete_failed_are_retried_until_gone(
    tmp_path: Path, db_url: str
) -> None:
    rig = await make_rig(
        tmp_path,
        Options(name=A, scheme="a"),
        Options(name=B, scheme="b", behaviour="fail-transient", fail_on="delete"),
        db=db_url,
    )
    try:
        await rig.define()
        sid = await _ready(rig)
        done = await rig.wait(await rig.manager.revert_snapshot("rv", sid, stop_vm=True))
        assert done.error is None, done.error
        b = rig.drivers[B]
        assert [i for i in b.snapshots if "-keep-" in i]  # its delete failed…
        assert [k.owner for k in rig.store.kept_states()] == [B]  # …and is still owed
        b.o.behaviour = "ok"
        await rig.recovery.reconcile_once()
        assert not [i for i in b.snapshots if "-keep-" in i]
        assert not rig.store.kept_states()
    finally:
        await rig.close()


async def test_a_revert_interrupted_with_an_owner_down_is_settled_when_it_is_back(
    tmp_path: Path,
    db_url: str,
) -> None:
    """A crash mid-revert (phase "reverting", kept states journaled) with driver b
    down at restart: the revert stays open (not REVERTING forever: it is retried on
    every reconcile) and is put on one side once b answers."""
    rig = await make_rig(
        tmp_path, Options(name=A, scheme="a"), Options(name=B, scheme="b"), db=db_url
    )
    try:
        vm = await rig.define()
        sid = await _ready(rig)
        await rig.agent.stop_vm("vm1", True)
        op = OperationRecord(
            id="op-crashed-revert",
            type=OperationType.REVERT,
            vm_id="vm1",
            vm_snapshot_id=sid,
            request_id="r-crashed",
            params={"stop_vm": True},
            journal={"phase": "reverting"},
        )
        snap = rig.store.get_snapshot(sid)
        assert snap is not None
        kept_id = f"{sid}-keep-{op.id[:8]}"
        steps = [rig.store.w_insert_operation(op), rig.store.w_move(sid, SnapshotState.REVERTING)]
        for g in snap.groups:
            result: SnapshotResult | None = None
            if g.owner in rig.drivers:
                driver = rig.drivers[g.owner]
                from vmsnap_sdk import TakeRequest

                volumes = tuple(v for v in vm.volumes if v.disk in g.disks)
                result = await driver.take_snapshot(TakeRequest(kept_id, vm, volumes))
            else:
                await rig.agent.take_native_snapshot("vm1", kept_id, list(g.disks), False)
            steps.append(
                rig.store.w_keep(
                    KeptState(kept_id, g.owner, g.kind, op.id, "vm1", sid, result=result)
                )
            )
        await rig.store.write(*steps)
        # a reverted before the crash; b is down now
        await rig.drivers[A].revert_snapshot(
            __import__("vmsnap_sdk").RevertRequest(sid, snap.groups[0].result, vm)
        )
        rig.drivers[B].o.behaviour, rig.drivers[B].o.fail_on = "fail-transient", "revert"

        await rig.recovery.resolve_on_start()
        held = rig.store.get_snapshot(sid)
        assert held is not None and held.state is SnapshotState.REVERTING
        still = rig.store.get_operation(op.id)
        assert still is not None and not still.done and "one side" in still.step

        rig.drivers[B].o.behaviour = "ok"
        await rig.recovery.reconcile_once()
        done = rig.store.get_operation(op.id)
        assert done is not None and done.done
        settled = rig.store.get_snapshot(sid)
        assert settled is not None and settled.state is SnapshotState.READY
        # every disk on one side: both drivers were put back to the kept state
        assert rig.drivers[A].reverted[-1] == kept_id
        assert rig.drivers[B].reverted[-1] == kept_id
        assert done.error is not None and "put back" in done.error.message
        await rig.recovery.reconcile_once()
        assert not rig.store.kept_states()
    finally:
        await rig.close()


async def test_the_thaw_is_retried_through_an_agent_blip(tmp_path: Path, db_url: str) -> None:
    """The agent fails Unquiesce for 3.5 s: v0.1 gave up after ~3 s and left the VM
    frozen until the lease ran out; now the thaw goes on until confirmed."""
    rig = await make_rig(
        tmp_path, Options(name=A, scheme="a"), Options(name=B, scheme="b"), db=db_url
    )
    try:
        await rig.define()
        real = rig.agent.unquiesce
        blip_until = [0.0]

        async def flaky(token: str, operation_id: str = "") -> UnquiesceResult:
            if time.monotonic() < blip_until[0]:
                raise Unavailable("agent restarting (test)")
            if operation_id:
                return await real(token, operation_id=operation_id)  # type: ignore[call-arg]
            return await real(token)

        rig.agent.unquiesce = flaky  # type: ignore[method-assign]
        blip_until[0] = time.monotonic() + 3.5
        op = await rig.wait(await rig.create("s1"))
        assert not rig.frozen(), "the VM is still frozen after its take ended"
        assert op.error is None, op.error
    finally:
        await rig.close()


async def test_one_unavailable_while_polling_post_processing_does_not_undo_the_cut(
    tmp_path: Path,
    db_url: str,
) -> None:
    rig = await make_rig(
        tmp_path,
        Options(name=A, scheme="a", not_ready_polls=2),
        Options(name=B, scheme="b"),
        db=db_url,
    )
    try:
        await rig.define()
        a = rig.drivers[A]
        real = a.get_snapshot
        failed = [False]

        async def blip_once(snapshot_id: str) -> SnapshotResult:
            if not failed[0]:
                failed[0] = True
                raise Unavailable("array busy (test)")
            return await real(snapshot_id)

        a.get_snapshot = blip_once  # type: ignore[method-assign]
        op = await rig.wait(await rig.create("s1"))
        assert op.error is None, op.error
        assert failed[0]
        snap = rig.store.get_snapshot(op.vm_snapshot_id)
        assert snap is not None and snap.state is SnapshotState.READY
    finally:
        await rig.close()


async def test_a_lost_vm_lease_stops_the_work_and_thaws(tmp_path: Path, db_url: str) -> None:
    rig = await make_rig(
        tmp_path,
        Options(name=A, scheme="a", behaviour="hang"),
        Options(name=B, scheme="b"),
        settings=replace(FAST, lease_seconds=1.0, take_timeout_seconds=30.0),
        db=db_url,
    )
    try:
        await rig.define()
        op = await rig.create("s1")
        for _ in range(200):
            if rig.frozen():
                break
            await asyncio.sleep(0.02)
        assert rig.frozen()
        # Another replica takes the VM over (this one's lease is taken away).
        await rig.store.write(
            rig.store.w_release_lease("vm1", "test"),
            rig.store.w_acquire_lease("vm1", "replica-b", "other-op", 60),
        )
        for _ in range(200):
            if not rig.manager.running:
                break
            await asyncio.sleep(0.02)
        assert not rig.manager.running, "the work went on without the VM's lease"
        assert not rig.frozen()
        left = rig.store.get_operation(op.id)
        assert left is not None and not left.done  # the new owner resolves it
    finally:
        await rig.close()


async def test_a_non_vmsnap_exception_in_a_take_ends_it_in_error_with_nothing_left(
    tmp_path: Path,
    db_url: str,
) -> None:
    rig = await make_rig(
        tmp_path, Options(name=A, scheme="a"), Options(name=B, scheme="b"), db=db_url
    )
    try:
        await rig.define()
        b = rig.drivers[B]
        real = b.take_snapshot

        async def broken(request: Any) -> SnapshotResult:
            await real(request)
            raise KeyError("bug")

        b.take_snapshot = broken  # type: ignore[method-assign]
        op = await rig.wait(await rig.create("s1"))
        assert op.error is not None and op.error.code == grpc.StatusCode.INTERNAL.value[0]
        assert B in op.error.message
        snap = rig.store.get_snapshot(op.vm_snapshot_id)
        assert snap is not None and snap.state is SnapshotState.ERROR
        assert not rig.frozen()
        assert all(not d.snapshots for d in rig.drivers.values())
    finally:
        await rig.close()


async def test_a_take_interrupted_before_its_token_was_journaled_is_thawed_by_operation_id(
    rig: Rig,
) -> None:
    vm = await rig.define()
    sid = await _ready(rig, "template")
    snap = rig.store.get_snapshot(sid)
    assert snap is not None
    crashed = replace(snap, id="crashed2", name="c2", state=SnapshotState.CREATING, current=False)
    op = OperationRecord(
        id="op-crashed2",
        type=OperationType.CREATE,
        vm_id="vm1",
        vm_snapshot_id="crashed2",
        request_id="r-crashed2",
        step="quiescing",
        journal={"quiesce_method": "OVERLAY", "freeze_needed": True},
    )
    await rig.store.write(rig.store.w_create(crashed, op))
    # The host froze the VM and died before it could journal the token.
    await rig.agent.quiesce(vm.id, QuiesceMethod.OVERLAY, 30, True, "op-crashed2")
    assert rig.frozen()
    await rig.recovery.resolve_on_start()
    assert not rig.frozen()
    done = rig.store.get_operation("op-crashed2")
    assert done is not None and done.error is not None
    assert "frozen and is thawed now" in done.error.message


async def test_a_revert_that_cannot_go_back_everywhere_goes_forward_everywhere(
    tmp_path: Path,
    db_url: str,
) -> None:
    """b's revert answer is lost, and b cannot be put back; a and the agent were
    put back before that was known. Going forward must redo a and the agent too,
    or a "successful" revert leaves them as before (found by the chaos harness)."""
    rig = await make_rig(
        tmp_path, Options(name=A, scheme="a"), Options(name=B, scheme="b"), db=db_url
    )
    try:
        vm = await rig.define()
        local = disk_path(rig.path / "agent", vm.volumes[2].locator)
        assert local is not None
        local.write_bytes(b"at the snapshot")
        sid = await _ready(rig)
        local.write_bytes(b"before the revert")
        b = rig.drivers[B]
        real = b.revert_snapshot
        lost = [False]

        async def flaky(request: Any) -> Any:
            if "-keep-" in request.vm_snapshot_id:
                raise Unavailable("array busy (test)")  # b cannot go back
            result = await real(request)
            if not lost[0]:
                lost[0] = True
                raise Unavailable("answer lost (test)")  # reverted, outcome unknown
            return result

        b.revert_snapshot = flaky  # type: ignore[method-assign]
        done = await rig.wait(await rig.manager.revert_snapshot("rv", sid, stop_vm=True))
        assert done.error is None, done.error
        # every group ends at the snapshot
        assert rig.drivers[A].reverted[-1] == sid
        assert b.reverted[-1] == sid
        assert local.read_bytes() == b"at the snapshot"
    finally:
        await rig.close()


async def test_a_revert_resumed_after_going_forward_keeps_going_forward(
    tmp_path: Path, db_url: str
) -> None:
    """The host chose to go forward (journaled), b reached the snapshot through a
    revert that keeps no undo, then the host died. Resumed, it must not put a back:
    b's missing undo does not mean b is unchanged any more (found by the chaos
    harness, seed 29093)."""
    undo = frozenset({Capability.REVERT, Capability.REVERT_UNDO, Capability.LIST})
    rig = await make_rig(
        tmp_path,
        Options(name=A, scheme="a"),
        Options(name=B, scheme="b", capabilities=undo),
        db=db_url,
    )
    try:
        vm = await rig.define()
        sid = await _ready(rig)
        await rig.agent.stop_vm("vm1", True)
        snap = rig.store.get_snapshot(sid)
        assert snap is not None
        op = OperationRecord(
            id="op-forward",
            type=OperationType.REVERT,
            vm_id="vm1",
            vm_snapshot_id=sid,
            request_id="r-forward",
            params={"stop_vm": True},
            journal={"phase": "forward", "undo": [B]},
        )
        kept_id = f"{sid}-keep-{op.id[:8]}"
        steps = [rig.store.w_insert_operation(op), rig.store.w_move(sid, SnapshotState.REVERTING)]
        from vmsnap_sdk import RevertRequest, TakeRequest

        for g in snap.groups:
            result: SnapshotResult | None = None
            if g.owner == A:
                volumes = tuple(v for v in vm.volumes if v.disk in g.disks)
                result = await rig.drivers[A].take_snapshot(TakeRequest(kept_id, vm, volumes))
            elif g.owner != B:
                await rig.agent.take_native_snapshot("vm1", kept_id, list(g.disks), False)
            steps.append(
                rig.store.w_keep(
                    KeptState(kept_id, g.owner, g.kind, op.id, "vm1", sid, result=result)
                )
            )
        await rig.store.write(*steps)
        # Forward had reached b (no undo kept) when the host died.
        b_group = next(g for g in snap.groups if g.owner == B)
        await rig.drivers[B].revert_snapshot(RevertRequest(sid, b_group.result, vm))  # type: ignore[arg-type]

        await rig.recovery.resolve_on_start()

        done = rig.store.get_operation(op.id)
        assert done is not None and done.done and done.error is None, done
        assert rig.drivers[A].reverted[-1] == sid
        assert rig.drivers[B].reverted[-1] == sid
    finally:
        await rig.close()


async def test_an_operation_being_admitted_is_not_resolved_as_abandoned(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A reconcile tick that lands between an operation's insert and its start must
    not take it for one abandoned by a crash (it aborted the caller's revert with
    "the host restarted before this revert began"; found by the chaos harness
    under load, seed 3)."""
    rig = await make_rig(tmp_path, Options(name=A, scheme="a"), Options(name=B, scheme="b"))
    try:
        await rig.define()
        sid = await _ready(rig)
        admitted: set[int] = set()
        for name in ("w_create", "w_insert_operation"):
            real = getattr(rig.store, name)

            def tagged(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
                step = _real(*args, **kwargs)
                admitted.add(id(step))
                return step

            monkeypatch.setattr(rig.store, name, tagged)
        real_write = rig.store.write

        async def write(*steps: Any) -> Any:
            result = await real_write(*steps)
            if any(id(s) in admitted for s in steps):
                await rig.recovery.resolve_open()  # the tick, right after the commit
            return result

        monkeypatch.setattr(rig.store, "write", write)

        revert = await rig.wait(await rig.manager.revert_snapshot("rev", sid, stop_vm=True))
        assert revert.error is None, revert.error
        take = await rig.wait(await rig.create("s2"))
        assert take.error is None, take.error
        delete = await rig.wait(await rig.manager.delete_snapshot("del", sid))
        assert delete.error is None, delete.error
    finally:
        await rig.close()
