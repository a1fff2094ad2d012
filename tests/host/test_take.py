"""Takes with the real manager, executor and store; the sim agent and fake
drivers in process."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from tests.fakes.driver import Options
from tests.host.conftest import FAST, THREE_DISKS, Rig, make_rig
from vmsnap_host.executor.freeze import choose_method
from vmsnap_host.model import GroupKind, QuiescePolicy, SnapshotState
from vmsnap_sdk import (
    Consistency,
    NativeSnapshot,
    QuiesceMethod,
    SnapshotResult,
    TakeRequest,
    VMState,
    Volume,
)
from vmsnap_sdk.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    Reason,
    ResourceExhausted,
    Unavailable,
)


async def test_two_drivers_and_an_unclaimed_disk_make_one_ready_snapshot(rig: Rig) -> None:
    await rig.define()
    op = await rig.wait(await rig.create())
    assert op.error is None
    snap = rig.store.get_snapshot(op.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.READY
    owners = [(g.kind, g.owner, g.disks) for g in snap.groups]
    assert owners == [
        (GroupKind.DRIVER, "io.vmsnap.test.a", ("vda",)),
        (GroupKind.DRIVER, "io.vmsnap.test.b", ("vdb",)),
        (GroupKind.HYPERVISOR, "sim-1", ("vdc",)),
    ]
    assert all(g.ready for g in snap.groups)
    assert snap.freeze_start is not None and snap.freeze_seconds is not None
    assert snap.consistency >= Consistency.FILESYSTEM
    assert snap.current and snap.parent_id == ""
    assert not rig.frozen()
    assert snap.id in rig.drivers["io.vmsnap.test.a"].snapshots
    assert snap.id in rig.drivers["io.vmsnap.test.b"].snapshots
    assert rig.store.get_cleanup(snap.id) == []
    # the plan says why
    assert "PLUGIN" in snap.groups[0].claims[0].describe()


async def test_a_take_started_at_once_commits_its_first_step_with_its_admission(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an idle VM the admission's transaction takes the VM's lease and, granted,
    moves the snapshot to CREATING with its owed deletes and freeze method: two
    durable commits per take (admission, READY), and no freeze token commit
    (recovery thaws by operation id)."""
    await rig.define()
    commits = 0
    write = rig.store.write

    async def counting(*steps: Any) -> Any:
        nonlocal commits
        commits += 1
        return await write(*steps)

    monkeypatch.setattr(rig.store, "write", counting)
    op = await rig.wait(await rig.create())
    assert op.error is None
    assert commits == 2

    # The lease held elsewhere (another replica runs something on the VM): the
    # admission commits the snapshot ALLOCATED and queued, nothing of the take, and
    # the take runs once the lease is free.
    rig.store.write_blocking(rig.store.w_acquire_lease("vm1", "replica-b", "op-b", 60))
    op = await rig.create("s2")
    snap = rig.store.get_snapshot(op.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.ALLOCATED
    record = rig.store.get_operation(op.id)
    assert record is not None and record.step == "queued"
    await asyncio.sleep(0.3)
    snap = rig.store.get_snapshot(op.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.ALLOCATED  # still waiting
    rig.store.write_blocking(rig.store.w_release_lease("vm1", "replica-b"))
    op = await rig.wait(op)
    assert op.error is None
    snap = rig.store.get_snapshot(op.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.READY


async def test_second_snapshot_has_the_first_as_parent(rig: Rig) -> None:
    await rig.define()
    first = await rig.wait(await rig.create("s1"))
    second = await rig.wait(await rig.create("s2"))
    s1 = rig.store.get_snapshot(first.vm_snapshot_id)
    s2 = rig.store.get_snapshot(second.vm_snapshot_id)
    assert s1 is not None and s2 is not None
    assert s2.parent_id == s1.id and s2.current and not s1.current


@pytest.mark.parametrize("behaviour", ["fail-final", "fail-transient"])
async def test_a_failing_driver_rolls_back_every_group(
    tmp_path: Path, behaviour: str, db_url: str
) -> None:
    rig = await make_rig(
        tmp_path,
        Options(name="io.vmsnap.test.a", scheme="a"),
        Options(name="io.vmsnap.test.b", scheme="b", behaviour=behaviour),
        db=db_url,
    )
    try:
        await rig.define()
        op = await rig.wait(await rig.create())
        snap = rig.store.get_snapshot(op.vm_snapshot_id)
        assert snap is not None and snap.state is SnapshotState.ERROR
        assert op.error is not None and snap.error is not None
        expected = (
            grpc.StatusCode.RESOURCE_EXHAUSTED
            if behaviour == "fail-final"
            else grpc.StatusCode.UNAVAILABLE
        )
        assert op.error.code == expected.value[0]
        assert "io.vmsnap.test.b" in snap.error.message
        assert not rig.frozen()
        for driver in rig.drivers.values():
            assert ["delete", snap.id] in driver.calls, driver.calls
            assert snap.id not in driver.snapshots
        assert await rig.agent.list_native_snapshots("vm1") == []
        assert rig.store.get_cleanup(snap.id) == []
        assert rig.store.current_snapshot("vm1") is None
    finally:
        await rig.manager.close()
        await rig.agent.close()
        rig.store.close()


async def test_a_hanging_driver_hits_its_deadline_and_is_rolled_back(
    tmp_path: Path, db_url: str
) -> None:
    rig = await make_rig(
        tmp_path,
        Options(name="io.vmsnap.test.a", scheme="a", behaviour="hang"),
        Options(name="io.vmsnap.test.b", scheme="b"),
        db=db_url,
    )
    try:
        await rig.define()
        op = await rig.wait(await rig.create())
        assert op.error is not None and op.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert not rig.frozen()
        for driver in rig.drivers.values():
            assert not driver.snapshots
    finally:
        await rig.manager.close()
        await rig.agent.close()
        rig.store.close()


async def test_post_processing_is_polled_after_the_thaw(tmp_path: Path, db_url: str) -> None:
    rig = await make_rig(
        tmp_path, Options(name="io.vmsnap.test.a", scheme="a", not_ready_polls=2), db=db_url
    )
    try:
        await rig.define(volumes=(Volume("vda", "a://p/1"),))
        op = await rig.wait(await rig.create(quiesce=QuiescePolicy.OFF))
        snap = rig.store.get_snapshot(op.vm_snapshot_id)
        assert snap is not None and snap.state is SnapshotState.READY and snap.groups[0].ready
        assert [c[0] for c in rig.drivers["io.vmsnap.test.a"].calls].count("get") == 2
        # one consistent-group driver, quiesce OFF: no freeze at all
        assert snap.freeze_start is None
    finally:
        await rig.manager.close()
        await rig.agent.close()
        rig.store.close()


async def test_best_effort_records_the_fallback_and_required_fails(rig: Rig) -> None:
    from vmsnap_agent.sim import NO_GUEST_AGENT

    await rig.agent.define_vm(
        __import__("vmsnap_sdk").VM(
            id="vm2",
            name=f"x {NO_GUEST_AGENT}",
            volumes=(Volume("vda", "a://p/9"), Volume("vdb", "b://p/9")),
        )
    )
    await rig.agent.start_vm("vm2")
    op = await rig.wait(await rig.create("s", "vm2"))
    snap = rig.store.get_snapshot(op.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.READY
    assert snap.consistency == Consistency.CRASH
    assert snap.warnings, "a best-effort fallback must be recorded"
    op = await rig.wait(await rig.create("r", "vm2", quiesce=QuiescePolicy.REQUIRED))
    assert op.error is not None and op.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "REQUIRED" in op.error.message
    assert not rig.frozen("vm2")


async def test_memory_snapshot_with_array_disks(rig: Rig) -> None:
    """RAM + disks on arrays: the VM paused with its RAM saved while the drivers cut;
    revert brings the disks and the RAM back, the VM RUNNING (fails on main: refused
    with FAILED_PRECONDITION, "hypervisor-only")."""
    await rig.define()
    paused_during_cut: list[bool] = []
    for driver in rig.drivers.values():
        take = driver.take_snapshot

        async def watched(request: TakeRequest, take: Any = take) -> SnapshotResult:
            freeze = rig.agent._vms["vm1"].freeze
            paused_during_cut.append(freeze is not None and freeze.saved_ram >= 0)
            return cast(SnapshotResult, await take(request))

        driver.take_snapshot = watched  # type: ignore[method-assign]
    await asyncio.sleep(0.3)
    op = await rig.wait(await rig.create("m", memory=True))
    assert op.error is None, op.error
    snap = rig.store.get_snapshot(op.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.READY and snap.include_memory
    assert [(g.kind, g.disks) for g in snap.groups] == [
        (GroupKind.DRIVER, ("vda",)),
        (GroupKind.DRIVER, ("vdb",)),
        (GroupKind.HYPERVISOR, ("vdc",)),
    ]
    assert paused_during_cut == [True, True]  # every array cut inside the pause
    assert snap.consistency is Consistency.APPLICATION
    assert snap.freeze_seconds is not None and snap.freeze_seconds >= 0  # the pause window
    native = snap.groups[2].result
    assert native is not None and native.metadata["memory_state_location"].startswith("sim://")
    assert not rig.frozen()  # resumed
    saved = rig.agent._store.state.snapshots["vm1"][snap.id].ram_counter
    assert saved >= 0

    await asyncio.sleep(0.5)  # the guest runs on: its RAM counter moves
    later = rig.agent.guest_ram_counter("vm1")
    assert later is not None and later > saved
    op = await rig.wait(await rig.manager.revert_snapshot("rev-m", snap.id, stop_vm=False))
    assert op.error is None, op.error
    assert (await rig.agent.describe_vm("vm1")).state is VMState.RUNNING
    back = rig.agent.guest_ram_counter("vm1")
    assert back is not None and saved <= back < later
    for driver in rig.drivers.values():
        assert snap.id in driver.reverted


async def test_a_failing_driver_in_a_memory_take_resumes_the_vm_and_leaves_nothing(
    tmp_path: Path, db_url: str
) -> None:
    rig = await make_rig(
        tmp_path,
        Options(name="io.vmsnap.test.a", scheme="a"),
        Options(name="io.vmsnap.test.b", scheme="b", behaviour="fail-final"),
        db=db_url,
    )
    try:
        await rig.define()
        op = await rig.wait(await rig.create("m", memory=True))
        snap = rig.store.get_snapshot(op.vm_snapshot_id)
        assert snap is not None and snap.state is SnapshotState.ERROR
        assert op.error is not None and "io.vmsnap.test.b" in op.error.message
        assert not rig.frozen()  # resumed
        before = rig.agent.guest_ram_counter("vm1")
        await asyncio.sleep(0.3)
        after = rig.agent.guest_ram_counter("vm1")
        assert before is not None and after is not None and after > before  # it runs on
        for driver in rig.drivers.values():
            assert ["delete", snap.id] in driver.calls, driver.calls
            assert snap.id not in driver.snapshots
        assert await rig.agent.list_native_snapshots("vm1") == []  # no state kept
        assert rig.store.get_cleanup(snap.id) == []
    finally:
        await rig.manager.close()
        await rig.agent.close()
        rig.store.close()


async def test_memory_snapshot_hypervisor_only_vm(rig: Rig) -> None:
    await rig.define("vm3", volumes=(Volume("vda", "file:///x.img"),))
    op = await rig.wait(await rig.create("m", "vm3", memory=True))
    snap = rig.store.get_snapshot(op.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.READY and snap.include_memory
    assert [g.kind for g in snap.groups] == [GroupKind.HYPERVISOR]
    assert snap.freeze_seconds is None  # QEMU/sim pause inside the native take


async def test_a_native_only_plan_freezes_the_guest_alone(rig: Rig) -> None:
    """One native snapshot cuts every disk at one instant by itself: a quiesced take
    whose plan is only the agent's freezes the guest for the agent's native cut, without
    overlays (they would only add their creation and their commit); a plan with arrays
    keeps the overlays."""
    await rig.define(
        "vm4", volumes=(Volume("vda", "file:///x.img"), Volume("vdb", "file:///y.img"))
    )
    op = await rig.wait(await rig.create("g", "vm4", quiesce=QuiescePolicy.REQUIRED))
    snap = rig.store.get_snapshot(op.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.READY, op.error
    assert [g.kind for g in snap.groups] == [GroupKind.HYPERVISOR]
    assert snap.consistency >= Consistency.FILESYSTEM
    record = rig.store.get_operation(op.id)
    assert record is not None and record.journal["quiesce_method"] == "GUEST_FREEZE_AND_CUT"

    await rig.define()
    op = await rig.wait(await rig.create("o", quiesce=QuiescePolicy.REQUIRED))
    record = rig.store.get_operation(op.id)
    assert record is not None and record.journal["quiesce_method"] == "GUEST_FREEZE_AND_OVERLAY"


async def test_the_agent_is_told_when_no_native_snapshot_follows_the_freeze(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every disk on an array: nothing is taken natively under the freeze, so the
    agent is told (QuiesceRequest.no_native_snapshot) and the QEMU agent makes no cut
    of local disks inside it. A plan with a native group still gets the preparation."""
    hints: list[bool] = []
    quiesce = rig.agent.quiesce

    async def recording(*args: Any, **kwargs: Any) -> Any:
        hints.append(bool(kwargs.get("no_native_snapshot")))
        return await quiesce(*args, **kwargs)

    monkeypatch.setattr(rig.agent, "quiesce", recording)
    await rig.define("arrays", volumes=THREE_DISKS[:2])
    op = await rig.wait(await rig.create("a", "arrays", quiesce=QuiescePolicy.REQUIRED))
    snap = rig.store.get_snapshot(op.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.READY, op.error
    assert GroupKind.HYPERVISOR not in [g.kind for g in snap.groups]
    assert hints == [True]

    await rig.define()  # two arrays and a local disk: the native group adopts a cut
    op = await rig.wait(await rig.create("m", quiesce=QuiescePolicy.REQUIRED))
    snap = rig.store.get_snapshot(op.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.READY, op.error
    assert GroupKind.HYPERVISOR in [g.kind for g in snap.groups]
    assert hints == [True, False]


@pytest.mark.parametrize(
    ("agent_back_after", "away"),
    [
        (0.0, ""),
        (0.4, "link down"),
        # The failed Quiesce made the registry mark the agent not serving: its guard
        # refuses the thaw at once until the health check passes (chaos seed 16066).
        (0.4, Reason.AGENT_NOT_SERVING),
    ],
)
async def test_a_quiesce_whose_answer_is_lost_is_thawed_before_the_take_ends(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, agent_back_after: float, away: str
) -> None:
    """The agent froze the VM, then died before its answer reached the host (seen
    by the chaos harness): the take fails, and thaws by operation id before it
    ends, retried while the agent is away (the link down, or the registry refusing
    to call it until it is back), not left for the lease or the reconciler. The VM
    is thawed when the operation is seen ended."""
    quiesce, unquiesce = rig.agent.quiesce, rig.agent.unquiesce
    away_until = asyncio.get_running_loop().time() + agent_back_after
    thaws: list[str] = []

    async def froze_then_lost(*args: Any, **kwargs: Any) -> Any:
        await quiesce(*args, **kwargs)
        raise Unavailable("Stream removed (Socket closed)")

    async def back_later(token: str, operation_id: str = "") -> Any:
        thaws.append(operation_id)
        if asyncio.get_running_loop().time() < away_until:
            raise Unavailable("the agent restarts", reason=away if away != "link down" else "")
        return await unquiesce(token, operation_id=operation_id)

    monkeypatch.setattr(rig.agent, "quiesce", froze_then_lost)
    monkeypatch.setattr(rig.agent, "unquiesce", back_later)
    await rig.define()
    op = await rig.wait(await rig.create())
    assert op.done and op.error is not None
    assert not rig.frozen()
    assert thaws and set(thaws) == {op.id}
    assert (len(thaws) > 1) == (agent_back_after > 0)
    snap = rig.store.get_snapshot(op.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.ERROR


async def test_a_quiesce_refused_before_it_was_sent_fails_at_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry refuses to call an agent that is not serving: the Quiesce never
    left the host, so nothing is thawed by operation id and the take fails at once,
    not after the lease."""
    thaws: list[str] = []

    async def not_serving(*args: Any, **kwargs: Any) -> Any:
        raise Unavailable("agent sim-1 is not serving", reason=Reason.AGENT_NOT_SERVING)

    async def counting(token: str, operation_id: str = "") -> Any:
        thaws.append(operation_id)
        raise AssertionError("no thaw for a Quiesce that was never sent")

    monkeypatch.setattr(rig.agent, "quiesce", not_serving)
    monkeypatch.setattr(rig.agent, "unquiesce", counting)
    await rig.define()
    started = asyncio.get_running_loop().time()
    op = await rig.wait(await rig.create())
    assert op.done and op.error is not None and "not serving" in op.error.message
    assert thaws == []
    assert asyncio.get_running_loop().time() - started < FAST.quiesce_lease_seconds


def _count_agent_calls(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    for name in ("take_native_snapshot", "unquiesce", "renew_quiesce"):
        method = getattr(rig.agent, name)

        def counting(method: Any = method, name: str = name) -> Any:
            async def call(*args: Any, **kwargs: Any) -> Any:
                calls.append(name)
                return await method(*args, **kwargs)

            return call

        monkeypatch.setattr(rig.agent, name, counting())
    return calls


async def test_the_native_snapshot_is_asked_for_in_the_quiesce(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One call for a quiesced native snapshot, as libvirt's: the agent takes it
    inside the freeze and answers it in the Quiesce, so no TakeNativeSnapshot
    follows; a guest+cut freeze it then released needs no Unquiesce either. With
    arrays beside the local disk the Unquiesce still commits the overlays."""
    calls = _count_agent_calls(rig, monkeypatch)
    await rig.define(
        "vm4", volumes=(Volume("vda", "file:///x.img"), Volume("vdb", "file:///y.img"))
    )
    op = await rig.wait(await rig.create("g", "vm4", quiesce=QuiescePolicy.REQUIRED))
    snap = rig.store.get_snapshot(op.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.READY, op.error
    assert [g.kind for g in snap.groups] == [GroupKind.HYPERVISOR]
    assert snap.consistency >= Consistency.FILESYSTEM
    assert snap.freeze_seconds is not None
    assert calls == []
    assert not rig.frozen("vm4")
    (native,) = await rig.agent.list_native_snapshots("vm4")
    assert native.snapshot_id == snap.id and sorted(native.disks) == ["vda", "vdb"]

    await rig.define()  # two arrays and a local disk
    op = await rig.wait(await rig.create("m", quiesce=QuiescePolicy.REQUIRED))
    snap = rig.store.get_snapshot(op.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.READY, op.error
    assert calls == ["unquiesce"]
    assert not rig.frozen()
    assert [n.snapshot_id for n in await rig.agent.list_native_snapshots("vm1")] == [snap.id]


async def test_an_agent_that_takes_nothing_in_the_quiesce_gets_the_calls_as_before(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent written before QuiesceRequest.native_snapshot (it answers no
    snapshot, and never released): TakeNativeSnapshot and Unquiesce follow. One that
    says released without the snapshot is not believed: its freeze is thawed."""
    quiesce = rig.agent.quiesce

    async def of_version_one(*args: Any, **kwargs: Any) -> Any:
        kwargs.pop("native_snapshot", None)
        return replace(await quiesce(*args, **kwargs), released=True)

    monkeypatch.setattr(rig.agent, "quiesce", of_version_one)
    calls = _count_agent_calls(rig, monkeypatch)
    await rig.define("vm4", volumes=(Volume("vda", "file:///x.img"),))
    op = await rig.wait(await rig.create("g", "vm4", quiesce=QuiescePolicy.REQUIRED))
    snap = rig.store.get_snapshot(op.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.READY, op.error
    assert calls == ["take_native_snapshot", "unquiesce"]
    assert not rig.frozen("vm4")


async def test_a_snapshot_or_release_the_host_did_not_ask_for_is_not_believed(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misbehaving agent answers a disk-only snapshot and `released` to a memory
    take's freeze (nothing was asked for), then a snapshot of another id to a
    native-only take: the host believes neither. The memory snapshot is taken and
    the VM resumed by the calls as before; the wrong answer fails its take with the
    broken rule, the freeze is thawed by an Unquiesce all the same, and the
    snapshot the agent did take is deleted (nothing left behind)."""
    quiesce = rig.agent.quiesce
    bogus = NativeSnapshot(snapshot_id="not-asked", vm_id="vm4", disks=("vda",))

    async def lying(*args: Any, **kwargs: Any) -> Any:
        return replace(await quiesce(*args, **kwargs), native_snapshot=bogus, released=True)

    monkeypatch.setattr(rig.agent, "quiesce", lying)
    calls = _count_agent_calls(rig, monkeypatch)
    await rig.define()  # arrays beside the local disk: the memory is saved at a pause
    op = await rig.wait(await rig.create("m", memory=True))
    snap = rig.store.get_snapshot(op.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.READY, op.error
    assert snap.include_memory
    assert calls == ["take_native_snapshot", "unquiesce"]
    assert not rig.frozen()

    calls.clear()
    await rig.define("vm4", volumes=(Volume("vda", "file:///x.img"),))
    op = await rig.wait(await rig.create("g", "vm4", quiesce=QuiescePolicy.REQUIRED))
    snap = rig.store.get_snapshot(op.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.ERROR
    assert op.error is not None and "native.echoes_id" in op.error.message, op.error
    assert calls == ["unquiesce"]
    assert not rig.frozen("vm4")
    assert snap.id not in [n.snapshot_id for n in await rig.agent.list_native_snapshots("vm4")]
    assert rig.store.get_cleanup(snap.id) == []


async def test_a_native_snapshot_taken_in_the_quiesce_is_deleted_when_the_take_fails(
    tmp_path: Path, db_url: str
) -> None:
    """All or nothing: the agent's snapshot came with the Quiesce, an array then
    fails; the take rolls back and deletes it too (nothing left behind)."""
    rig = await make_rig(
        tmp_path,
        Options(name="io.vmsnap.test.a", scheme="a"),
        Options(name="io.vmsnap.test.b", scheme="b", behaviour="fail-final"),
        db=db_url,
    )
    try:
        with pytest.MonkeyPatch.context() as patch:
            calls = _count_agent_calls(rig, patch)
            await rig.define()
            op = await rig.wait(await rig.create("q", quiesce=QuiescePolicy.REQUIRED))
        assert "take_native_snapshot" not in calls  # it came with the Quiesce
        snap = rig.store.get_snapshot(op.vm_snapshot_id)
        assert snap is not None and snap.state is SnapshotState.ERROR
        assert GroupKind.HYPERVISOR in [g.kind for g in snap.groups]
        assert not rig.frozen()
        assert await rig.agent.list_native_snapshots("vm1") == []
        assert rig.store.get_cleanup(snap.id) == []
    finally:
        await rig.close()


def test_the_freeze_of_a_native_only_plan_is_the_shortest_the_agent_offers() -> None:
    every = frozenset(QuiesceMethod) - {QuiesceMethod.UNSPECIFIED}
    without_cut = every - {QuiesceMethod.GUEST_FREEZE_AND_CUT}
    for policy in (QuiescePolicy.REQUIRED, QuiescePolicy.BEST_EFFORT):
        assert choose_method(policy, every, "a", native_only=True) is (
            QuiesceMethod.GUEST_FREEZE_AND_CUT
        )
        assert choose_method(policy, without_cut, "a", native_only=True) is (
            QuiesceMethod.GUEST_FREEZE
        )
        # Arrays in the plan: overlays keep their bases stable while they cut.
        assert choose_method(policy, every, "a") is QuiesceMethod.GUEST_FREEZE_AND_OVERLAY
    # No guest freeze asked: the native snapshot alone needs no freeze at all; asked
    # for one anyway, the overlay (crash consistent) as before.
    assert choose_method(QuiescePolicy.OFF, every, "a", native_only=True) is QuiesceMethod.OVERLAY


async def test_sanity_checks_have_their_codes(rig: Rig) -> None:
    with pytest.raises(NotFound, match="DefineVM"):
        await rig.create(vm_id="nope")
    await rig.define("vm9", running=False)
    with pytest.raises(FailedPrecondition, match="RUNNING"):
        await rig.create("m", "vm9", memory=True)
    await rig.define()
    await rig.wait(await rig.create("s1"))
    with pytest.raises(AlreadyExists, match="choose another name"):
        await rig.create("s1", request_id="other")
    await rig.wait(await rig.create("s2"))
    await rig.wait(await rig.create("s3"))
    with pytest.raises(ResourceExhausted, match="max_snapshots_per_vm"):
        await rig.create("s4")
    # same request id → same operation; reused for something else → ALREADY_EXISTS
    again = await rig.create("s1")
    assert again.request_id == "req-vm1-s1"
    with pytest.raises(AlreadyExists, match="request_id"):
        await rig.create("zzz", request_id="req-vm1-s1")


async def test_the_queue_is_bounded(tmp_path: Path, db_url: str) -> None:
    rig = await make_rig(
        tmp_path, Options(name="io.vmsnap.test.a", scheme="a", behaviour="hang"), db=db_url
    )
    try:
        await rig.define(volumes=(Volume("vda", "a://p/1"),))
        first = await rig.create("s1")
        second = await rig.create("s2")  # waits (queue_bound = 1)
        with pytest.raises(Aborted, match="retry when they finish"):
            await rig.create("s3")
        await rig.wait(first)
        await rig.wait(second)
    finally:
        await rig.manager.close()
        await rig.agent.close()
        rig.store.close()


async def test_a_take_longer_than_a_third_of_its_leases_renews_both(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The freeze's lease at the agent and the VM's lease in the catalog are renewed
    every third of their length (vmsnap_host/renewer.py), and no more once the take
    ended; a take shorter than that renews neither."""
    from tests.host.conftest import FAST

    # Leases of 1.2 s: renewed every 0.4 s. The slow take below (0.6 s) outlasts a
    # third of both and stays well inside the take's deadline, 0.8 x what is left
    # of the freeze's lease when the cut starts (with 0.6 s leases and a 0.45 s
    # take, a Quiesce slower than 37 ms under load left too little: flaky in CI).
    settings = replace(FAST, quiesce_lease_seconds=1.2, lease_seconds=1.2, take_timeout_seconds=3.0)
    rig = await make_rig(
        tmp_path,
        Options(name="io.vmsnap.test.a", scheme="a"),
        Options(name="io.vmsnap.test.b", scheme="b"),
        settings=settings,
        db=db_url,
    )
    try:
        await rig.define()
        calls = _count_agent_calls(rig, monkeypatch)
        renewed: list[str] = []
        real_renew = rig.store.w_renew_lease

        def counting_renew(*args: Any) -> Any:
            renewed.append(args[0])
            return real_renew(*args)

        monkeypatch.setattr(rig.store, "w_renew_lease", counting_renew)
        op = await rig.wait(await rig.create("quick"))
        assert op.error is None, op.error
        assert calls.count("renew_quiesce") == 0 and renewed == []

        b = rig.drivers["io.vmsnap.test.b"]
        real_take = b.take_snapshot

        async def slow(request: TakeRequest) -> SnapshotResult:
            await asyncio.sleep(0.6)  # past 0.4 s, a third of both leases
            return await real_take(request)

        monkeypatch.setattr(b, "take_snapshot", slow)
        op = await rig.wait(await rig.create("slow"))
        assert op.error is None, op.error
        snap = rig.store.get_snapshot(op.vm_snapshot_id)
        assert snap is not None and snap.state is SnapshotState.READY
        assert calls.count("renew_quiesce") >= 1
        assert renewed and set(renewed) == {"vm1"}
        seen = (calls.count("renew_quiesce"), len(renewed))
        await asyncio.sleep(1.0)
        assert (calls.count("renew_quiesce"), len(renewed)) == seen  # none after the take
        assert not rig.frozen()
    finally:
        await rig.close()
