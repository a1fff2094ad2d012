"""The sim hypervisor agent as the host meets it: its own process, over a unix socket."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from tests.agent_sim.simproc import SimProc
from vmsnap_agent.sim import NO_FREEZE_HOOK, NO_GUEST_AGENT, freeze_of, frozen, load_state
from vmsnap_agent.sim._store import Store, VMRecord
from vmsnap_sdk import VM, AgentClient, Consistency, Page, QuiesceMethod, VMState, Volume
from vmsnap_sdk.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)


def a_vm(vm_id: str, name: str = "") -> VM:
    return VM(
        id=vm_id,
        name=name or vm_id,
        memory_mib=512,
        volumes=(
            Volume("vda", "ontap://svm1/vol1/disk.raw", 1 << 20),
            Volume("vdb", "file:///var/lib/vms/local.qcow2", 2 << 20, "qcow2"),
        ),
    )


async def wait_until_thawed(state: Path, vm_id: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while frozen(state, vm_id):
        assert time.monotonic() < deadline, f"{vm_id} still frozen after {timeout} s"
        await asyncio.sleep(0.05)


# --- identity and lifecycle ---------------------------------------------------------


async def test_info(agent: AgentClient) -> None:
    info = await agent.get_info()
    assert (info.name, info.hypervisor, info.contract_versions) == ("sim-test", "sim", ("v1",))
    assert info.quiesce_methods == {
        QuiesceMethod.OVERLAY,
        QuiesceMethod.GUEST_FREEZE,
        QuiesceMethod.GUEST_FREEZE_AND_OVERLAY,
        QuiesceMethod.PAUSE_AND_SAVE_MEMORY,
        QuiesceMethod.GUEST_FREEZE_AND_CUT,
    }
    assert info.memory_snapshots and info.memory_with_array_disks


async def test_pause_and_save_memory_over_the_contract(agent: AgentClient) -> None:
    """The sim mimics QEMU's pause+memory: the state rides in the quiesce answer and
    in the memory snapshot taken meanwhile; a disk-only one is refused then."""
    await agent.define_vm(a_vm("vm-p"))
    await agent.start_vm("vm-p")
    q = await agent.quiesce("vm-p", QuiesceMethod.PAUSE_AND_SAVE_MEMORY, 10, True, "op-p")
    assert q.memory_state is not None and q.consistency is Consistency.APPLICATION
    with pytest.raises(FailedPrecondition):
        await agent.take_native_snapshot("vm-p", "disk-only", [], False)
    snap = await agent.take_native_snapshot("vm-p", "with-ram", [], True)
    assert snap.include_memory and snap.memory_state is not None
    assert (await agent.unquiesce(q.token)).thawed_now
    listed = await agent.list_native_snapshots("vm-p")
    assert [s.memory_state is not None for s in listed] == [True]
    await agent.stop_vm("vm-p", True)
    with pytest.raises(FailedPrecondition):  # a stopped VM has no RAM to save
        await agent.quiesce("vm-p", QuiesceMethod.PAUSE_AND_SAVE_MEMORY, 10, True, "op-q")
    assert (await agent.revert_native_snapshot("vm-p", "with-ram")).state is VMState.RUNNING


async def test_define_start_stop_undefine(agent: AgentClient) -> None:
    defined = await agent.define_vm(a_vm("vm-1"))
    assert defined.state is VMState.STOPPED
    assert defined.agent == "sim-test"
    assert [v.disk for v in defined.volumes] == ["vda", "vdb"]
    assert await agent.define_vm(a_vm("vm-1")) == defined  # same definition: idempotent
    with pytest.raises(AlreadyExists):
        await agent.define_vm(a_vm("vm-1", name="other"))

    assert (await agent.start_vm("vm-1")).state is VMState.RUNNING
    assert (await agent.start_vm("vm-1")).state is VMState.RUNNING
    assert (await agent.describe_vm("vm-1")).state is VMState.RUNNING
    with pytest.raises(FailedPrecondition):
        await agent.undefine_vm("vm-1")
    assert (await agent.stop_vm("vm-1", force=False)).state is VMState.STOPPED
    assert (await agent.stop_vm("vm-1", force=True)).state is VMState.STOPPED
    await agent.undefine_vm("vm-1")
    await agent.undefine_vm("vm-1")  # idempotent
    with pytest.raises(NotFound):
        await agent.describe_vm("vm-1")
    with pytest.raises(NotFound):
        await agent.start_vm("vm-1")


async def test_list_is_paged(agent: AgentClient) -> None:
    for i in range(5):
        await agent.define_vm(a_vm(f"vm-{i}"))
    seen: list[str] = []
    page = Page(size=2)
    while True:
        result = await agent.list_vms(page)
        seen += [vm.id for vm in result.vms]
        if not result.next_token:
            break
        page = Page(size=2, token=result.next_token)
    assert seen == [f"vm-{i}" for i in range(5)]


async def test_invalid_definition_is_rejected(agent: AgentClient) -> None:
    with pytest.raises(InvalidArgument):
        await agent.define_vm(VM(id="bad", volumes=(Volume("vda", "no-scheme"),)))


# --- freezing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "consistency"),
    [
        (QuiesceMethod.OVERLAY, Consistency.CRASH),
        (QuiesceMethod.GUEST_FREEZE, Consistency.APPLICATION),
        (QuiesceMethod.GUEST_FREEZE_AND_OVERLAY, Consistency.APPLICATION),
    ],
)
async def test_quiesce_and_unquiesce(
    agent: AgentClient, sim: SimProc, method: QuiesceMethod, consistency: Consistency
) -> None:
    await agent.define_vm(a_vm("vm-q"))
    await agent.start_vm("vm-q")
    assert not frozen(sim.state, "vm-q")
    result = await agent.quiesce("vm-q", method, 60, False, "op-1")
    assert (result.method, result.consistency, result.warning) == (method, consistency, "")
    record = freeze_of(sim.state, "vm-q")
    assert record is not None
    assert (record.token, record.operation_id) == (result.token, "op-1")
    assert (await agent.describe_vm("vm-q")).state is VMState.RUNNING

    thawed = await agent.unquiesce(result.token)
    assert thawed.thawed_now
    assert thawed.frozen_for_seconds >= 0
    assert not frozen(sim.state, "vm-q")
    again = await agent.unquiesce(result.token)  # idempotent
    assert (again.thawed_now, again.frozen_for_seconds) == (False, 0.0)
    with pytest.raises(NotFound):
        await agent.renew_quiesce(result.token, 10)


async def test_guest_without_agent(agent: AgentClient) -> None:
    await agent.define_vm(a_vm("vm-g", name=f"db {NO_GUEST_AGENT}"))
    await agent.start_vm("vm-g")
    for method in (QuiesceMethod.GUEST_FREEZE, QuiesceMethod.GUEST_FREEZE_AND_OVERLAY):
        with pytest.raises(FailedPrecondition) as caught:
            await agent.quiesce("vm-g", method, 60, False, "")
        assert caught.value.reason == "GUEST_AGENT_UNAVAILABLE"

    fallback = await agent.quiesce("vm-g", QuiesceMethod.GUEST_FREEZE_AND_OVERLAY, 60, True, "")
    assert (fallback.method, fallback.consistency) == (QuiesceMethod.OVERLAY, Consistency.CRASH)
    assert "guest agent" in fallback.warning
    await agent.unquiesce(fallback.token)

    nothing = await agent.quiesce("vm-g", QuiesceMethod.GUEST_FREEZE, 60, True, "")
    assert nothing.consistency is Consistency.CRASH
    assert nothing.warning
    await agent.unquiesce(nothing.token)

    overlay = await agent.quiesce("vm-g", QuiesceMethod.OVERLAY, 60, False, "")
    assert (overlay.consistency, overlay.warning) == (Consistency.CRASH, "")
    await agent.unquiesce(overlay.token)


async def test_guest_without_freeze_hook_is_filesystem_consistent(agent: AgentClient) -> None:
    await agent.define_vm(a_vm("vm-h", name=f"web {NO_FREEZE_HOOK}"))
    await agent.start_vm("vm-h")
    result = await agent.quiesce("vm-h", QuiesceMethod.GUEST_FREEZE, 60, False, "")
    assert result.consistency is Consistency.FILESYSTEM
    await agent.unquiesce(result.token)


async def test_stopped_vm_freezes_with_the_consistency_of_its_last_stop(
    agent: AgentClient,
) -> None:
    await agent.define_vm(a_vm("vm-s", name=f"cold {NO_GUEST_AGENT}"))
    clean = await agent.quiesce("vm-s", QuiesceMethod.GUEST_FREEZE, 60, False, "")
    assert clean.consistency is Consistency.APPLICATION
    await agent.unquiesce(clean.token)
    await agent.start_vm("vm-s")
    await agent.stop_vm("vm-s", force=True)
    forced = await agent.quiesce("vm-s", QuiesceMethod.OVERLAY, 60, False, "")
    assert forced.consistency is Consistency.CRASH
    await agent.unquiesce(forced.token)


async def test_a_frozen_vm_refuses_other_work(agent: AgentClient) -> None:
    await agent.define_vm(a_vm("vm-f"))
    await agent.start_vm("vm-f")
    held = await agent.quiesce("vm-f", QuiesceMethod.OVERLAY, 60, False, "op-a")
    retry = await agent.quiesce("vm-f", QuiesceMethod.OVERLAY, 60, False, "op-a")
    assert retry.token == held.token
    with pytest.raises(Aborted):
        await agent.quiesce("vm-f", QuiesceMethod.OVERLAY, 60, False, "op-b")
    for call in (agent.stop_vm("vm-f", force=False), agent.revert_native_snapshot("vm-f", "x")):
        with pytest.raises((FailedPrecondition, NotFound)):
            await call
    with pytest.raises(FailedPrecondition) as caught:
        await agent.stop_vm("vm-f", force=True)
    assert caught.value.reason == "VM_FROZEN"
    # The point of a freeze: the hypervisor's own snapshot can be cut meanwhile.
    await agent.take_native_snapshot("vm-f", "snap-during-freeze", ["vdb"], False)
    assert (await agent.unquiesce(held.token)).thawed_now


async def test_lease_runs_out_and_the_agent_thaws(agent: AgentClient, sim: SimProc) -> None:
    await agent.define_vm(a_vm("vm-l"))
    await agent.start_vm("vm-l")
    result = await agent.quiesce("vm-l", QuiesceMethod.GUEST_FREEZE, 0.3, False, "op-l")
    assert result.expire_time.timestamp() > time.time() - 1
    await wait_until_thawed(sim.state, "vm-l")
    assert not (await agent.unquiesce(result.token)).thawed_now
    with pytest.raises(NotFound):
        await agent.renew_quiesce(result.token, 10)
    # And the VM can be frozen again.
    again = await agent.quiesce("vm-l", QuiesceMethod.OVERLAY, 60, False, "op-m")
    assert (await agent.unquiesce(again.token)).thawed_now


async def test_renew_extends_the_lease(agent: AgentClient, sim: SimProc) -> None:
    await agent.define_vm(a_vm("vm-r"))
    await agent.start_vm("vm-r")
    result = await agent.quiesce("vm-r", QuiesceMethod.OVERLAY, 0.5, False, "")
    expiry = await agent.renew_quiesce(result.token, 300)
    assert expiry > result.expire_time
    record = freeze_of(sim.state, "vm-r")
    assert record is not None
    assert record.expire_at == pytest.approx(expiry.timestamp(), abs=0.01)
    await asyncio.sleep(0.8)  # past the first lease; the renewed one holds
    assert frozen(sim.state, "vm-r")
    assert (await agent.unquiesce(result.token)).thawed_now


async def test_a_shorter_lease_given_later_runs_out_first(agent: AgentClient, sim: SimProc) -> None:
    """The agent sleeps until the first lease runs out; a lease that runs out
    sooner, given while it sleeps (a new freeze, or a renewal that shortens one),
    wakes it (sim/_agent.py, _wake_reaper)."""
    for vm_id in ("vm-long", "vm-short", "vm-cut"):
        await agent.define_vm(a_vm(vm_id))
        await agent.start_vm(vm_id)
    long = await agent.quiesce("vm-long", QuiesceMethod.OVERLAY, 60, False, "op-long")
    cut = await agent.quiesce("vm-cut", QuiesceMethod.OVERLAY, 60, False, "op-cut")
    await asyncio.sleep(0.05)  # the agent is asleep until the 60 s leases run out
    await agent.quiesce("vm-short", QuiesceMethod.OVERLAY, 0.3, False, "op-short")
    await agent.renew_quiesce(cut.token, 0.3)  # shortened
    await wait_until_thawed(sim.state, "vm-short", timeout=3)
    await wait_until_thawed(sim.state, "vm-cut", timeout=3)
    assert frozen(sim.state, "vm-long")
    assert (await agent.unquiesce(long.token)).thawed_now


# --- native snapshots -------------------------------------------------------------------


async def test_native_snapshots(agent: AgentClient) -> None:
    await agent.define_vm(a_vm("vm-n"))
    with pytest.raises(FailedPrecondition) as caught:
        await agent.take_native_snapshot("vm-n", "mem-1", [], True)
    assert caught.value.reason == "VM_NOT_RUNNING"
    with pytest.raises(InvalidArgument):
        await agent.take_native_snapshot("vm-n", "bad", ["vdz"], False)

    disk = await agent.take_native_snapshot("vm-n", "disk-1", ["vdb"], False)
    assert (disk.disks, disk.include_memory, disk.size_bytes) == (("vdb",), False, 2 << 20)
    assert await agent.take_native_snapshot("vm-n", "disk-1", ["vdb"], False) == disk
    with pytest.raises(AlreadyExists):
        await agent.take_native_snapshot("vm-n", "disk-1", ["vda", "vdb"], False)

    await agent.start_vm("vm-n")
    memory = await agent.take_native_snapshot("vm-n", "mem-1", [], True)
    assert memory.disks == ("vda", "vdb")
    assert memory.include_memory
    assert [s.snapshot_id for s in await agent.list_native_snapshots("vm-n")] == [
        "disk-1",
        "mem-1",
    ]

    with pytest.raises(FailedPrecondition) as caught:
        await agent.revert_native_snapshot("vm-n", "disk-1")
    assert caught.value.reason == "VM_NOT_STOPPED"
    await agent.stop_vm("vm-n", force=False)
    assert (await agent.revert_native_snapshot("vm-n", "disk-1")).state is VMState.STOPPED
    assert (await agent.revert_native_snapshot("vm-n", "mem-1")).state is VMState.RUNNING
    with pytest.raises(NotFound):
        await agent.revert_native_snapshot("vm-n", "nope")

    await agent.delete_native_snapshot("vm-n", "disk-1")
    await agent.delete_native_snapshot("vm-n", "disk-1")  # idempotent
    await agent.delete_native_snapshot("no-such-vm", "disk-1")  # a VM that is gone holds none
    assert [s.snapshot_id for s in await agent.list_native_snapshots("")] == ["mem-1"]


# --- restarts ---------------------------------------------------------------------------


async def test_state_and_freezes_survive_a_sigkill(sim: SimProc) -> None:
    client = AgentClient.connect(sim.address, timeout=10)
    try:
        for vm_id in ("vm-short", "vm-soon", "vm-long"):
            await client.define_vm(a_vm(vm_id))
            await client.start_vm(vm_id)
        await client.take_native_snapshot("vm-long", "snap-1", [], True)
        short = await client.quiesce("vm-short", QuiesceMethod.OVERLAY, 0.2, False, "")
        soon = await client.quiesce("vm-soon", QuiesceMethod.OVERLAY, 2.0, False, "")
        long = await client.quiesce("vm-long", QuiesceMethod.GUEST_FREEZE, 300, False, "")
    finally:
        await client.close()

    sim.kill()  # no chance to thaw or to save anything more
    assert frozen(sim.state, "vm-short")
    await asyncio.sleep(max(0.0, short.expire_time.timestamp() - time.time()) + 0.05)
    sim.start()

    client = AgentClient.connect(sim.address, timeout=10)
    try:
        # Expired while the agent was down: resolved before it served.
        assert not frozen(sim.state, "vm-short")
        assert not (await client.unquiesce(short.token)).thawed_now
        # Still leased when the agent came back: thawed by the agent when it ran out.
        await wait_until_thawed(sim.state, "vm-soon")
        assert not (await client.unquiesce(soon.token)).thawed_now
        # Far from expiry: still frozen, and the old token still works.
        assert frozen(sim.state, "vm-long")
        assert (await client.unquiesce(long.token)).thawed_now
        assert (await client.describe_vm("vm-long")).state is VMState.RUNNING
        assert [s.snapshot_id for s in await client.list_native_snapshots("vm-long")] == ["snap-1"]
    finally:
        await client.close()


def test_unknown_hypervisor_kind_fails_clearly(tmp_path: Path, sockdir: Path) -> None:
    import subprocess

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmsnap_agent.cli",
            "--hypervisor",
            "xen",
            "--listen",
            f"unix://{sockdir}/q.sock",
            "--state",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--hypervisor" in result.stderr
    assert "'xen'" in result.stderr and "qemu" in result.stderr and "sim" in result.stderr


# --- the state on disk: one file per VM -------------------------------------------------


def stamp(path: Path) -> tuple[int, int]:
    """What changes when a file is rewritten (replaced by a rename, or written in place)."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


async def test_a_change_of_one_vm_rewrites_that_vm_only(agent: AgentClient, sim: SimProc) -> None:
    for vm_id in ("vm-busy", "vm-idle"):
        await agent.define_vm(a_vm(vm_id))
        await agent.start_vm(vm_id)
    await agent.take_native_snapshot("vm-idle", "snap-idle", [], False)
    idle = sim.state / "vms" / "vm-idle.json"
    idle_snaps = sim.state / "snapshots" / "vm-idle.json"
    busy = sim.state / "vms" / "vm-busy.json"
    before = stamp(idle), stamp(idle_snaps)
    busy_before = stamp(busy)

    held = await agent.quiesce("vm-busy", QuiesceMethod.OVERLAY, 60, False, "op-busy")
    assert frozen(sim.state, "vm-busy")
    # The freeze is on disk in its own file; the VM's file is not rewritten for it.
    freeze = sim.state / "freezes" / "vm-busy.json"
    assert freeze.exists() and stamp(busy) == busy_before
    await agent.renew_quiesce(held.token, 120)
    await agent.take_native_snapshot("vm-busy", "snap-busy", [], True)
    assert (await agent.unquiesce(held.token)).thawed_now
    await agent.stop_vm("vm-busy", force=True)
    await agent.revert_native_snapshot("vm-busy", "snap-busy")
    await agent.delete_native_snapshot("vm-busy", "snap-busy")
    await agent.define_vm(a_vm("vm-new"))
    await agent.undefine_vm("vm-new")

    assert (stamp(idle), stamp(idle_snaps)) == before
    assert not (sim.state / "state.json").exists()
    assert sorted(p.name for p in (sim.state / "vms").iterdir()) == ["vm-busy.json", "vm-idle.json"]
    assert [p.name for p in (sim.state / "snapshots").iterdir()] == ["vm-idle.json"]
    # Thawed: the VM's freeze page stays mapped, and says so.
    assert [p.name for p in (sim.state / "freezes").iterdir()] == ["vm-busy.json"]
    assert not frozen(sim.state, "vm-busy")


async def test_reads_write_nothing(agent: AgentClient, sim: SimProc) -> None:
    await agent.define_vm(a_vm("vm-read"))
    await agent.start_vm("vm-read")
    await agent.take_native_snapshot("vm-read", "snap-r", [], False)
    files = [sim.state / "vms" / "vm-read.json", sim.state / "snapshots" / "vm-read.json"]
    before = [stamp(f) for f in files]
    await agent.describe_vm("vm-read")
    await agent.list_vms(Page(size=10))
    await agent.list_native_snapshots("vm-read")
    await agent.start_vm("vm-read")  # already running: nothing changes
    await agent.define_vm(a_vm("vm-read"))  # the same definition again
    await agent.take_native_snapshot("vm-read", "snap-r", [], False)  # a repeat
    assert not (await agent.unquiesce("q-unknown")).thawed_now
    assert [stamp(f) for f in files] == before


async def test_long_vm_ids_survive_a_restart(agent: AgentClient, sim: SimProc) -> None:
    longest = "v" + "x-." * 42 + "9"  # 128 characters, dots and all
    await agent.define_vm(a_vm(longest))
    await agent.quiesce(longest, QuiesceMethod.OVERLAY, 60, False, "")
    sim.kill()
    sim.start()
    assert frozen(sim.state, longest)
    client = AgentClient.connect(sim.address, timeout=10)
    try:
        assert (await client.describe_vm(longest)).id == longest
    finally:
        await client.close()


def test_ids_the_sdk_would_refuse_still_get_safe_file_names(tmp_path: Path) -> None:
    odd = ["../escape", ".hidden", "a/b", "x" * 300, "spaces and ünïcode", "%1"]
    store = Store(tmp_path / "state")
    for vm_id in odd:
        store.state.vms[vm_id] = VMRecord(id=vm_id, name=vm_id, memory_mib=1)
        store.save_vm(vm_id)
    store.flush_blocking()  # saves are written in the store's writer thread
    names = [p.name for p in (tmp_path / "state" / "vms").iterdir()]
    assert len(set(names)) == len(odd)
    assert all(len(n) < 128 and not n.startswith(".") for n in names)
    assert sorted(load_state(tmp_path / "state").vms) == sorted(odd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def write_version_1(state: Path, *, frozen_until: float) -> None:
    """A state directory as the version 1 agent left it: everything in state.json."""
    vm = {
        "id": "vm-old",
        "name": "vm-old",
        "memory_mib": 512,
        "state": "RUNNING",
        "clean_shutdown": True,
        "volumes": [{"disk": "vda", "locator": "a://p/1", "size_bytes": 1 << 20, "format": "raw"}],
        "freeze": {
            "token": "q-old",
            "method": "OVERLAY",
            "consistency": "CRASH",
            "operation_id": "op-old",
            "frozen_at": time.time() - 1,
            "expire_at": frozen_until,
        },
    }
    other = dict(vm, id="vm-other", name="vm-other", state="STOPPED", freeze=None)
    snap = {
        "snapshot_id": "snap-old",
        "vm_id": "vm-old",
        "disks": ["vda"],
        "include_memory": False,
        "create_time": 1700000000.0,
        "size_bytes": 1 << 20,
    }
    state.mkdir(parents=True)
    (state / "state.json").write_text(
        json.dumps(
            {
                "version": 1,
                "vms": {"vm-old": vm, "vm-other": other},
                "snapshots": {"vm-old": {"snap-old": snap}, "vm-other": {}},
            },
            indent=2,
        )
    )


async def test_a_version_1_state_file_is_converted(sockdir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    write_version_1(state, frozen_until=time.time() + 300)
    # Readers see the old layout until an agent converts it.
    assert frozen(state, "vm-old")
    assert not frozen(state, "vm-other")
    before = load_state(state).to_json()

    sim = SimProc(sockdir, state, tmp_path / "agent.log")
    sim.start()
    try:
        assert not (state / "state.json").exists()
        assert sorted(p.name for p in (state / "vms").iterdir()) == ["vm-old.json", "vm-other.json"]
        assert [p.name for p in (state / "snapshots").iterdir()] == ["vm-old.json"]
        assert load_state(state).to_json() == dict(
            before, snapshots={"vm-old": before["snapshots"]["vm-old"]}
        )
        client = AgentClient.connect(sim.address, timeout=10)
        try:
            assert (await client.describe_vm("vm-old")).state is VMState.RUNNING
            snaps = await client.list_native_snapshots("")
            assert [(s.vm_id, s.snapshot_id) for s in snaps] == [("vm-old", "snap-old")]
            assert frozen(state, "vm-old")
            assert (await client.unquiesce("q-old")).thawed_now
            assert not frozen(state, "vm-old")
        finally:
            await client.close()
        sim.kill()
        sim.start()  # and it stays converted
        assert not frozen(state, "vm-old")
        assert sorted(load_state(state).vms) == ["vm-old", "vm-other"]
    finally:
        sim.stop()


async def test_start_up_drops_leftovers_of_a_crash(sockdir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    sim = SimProc(sockdir, state, tmp_path / "agent.log")
    sim.start()
    client = AgentClient.connect(sim.address, timeout=10)
    try:
        await client.define_vm(a_vm("vm-keep"))
        await client.take_native_snapshot("vm-keep", "s1", [], False)
    finally:
        await client.close()
    sim.kill()
    # An undefine cut short after the VM's file went, a write cut short before its rename.
    (state / "snapshots" / "vm-gone.json").write_text(
        json.dumps({"version": 2, "vm_id": "vm-gone", "snapshots": {}})
    )
    (state / "vms" / ".vm-keep.json.tmp").write_text("{half")
    sim.start()
    try:
        assert sorted(p.name for p in (state / "snapshots").iterdir()) == ["vm-keep.json"]
        assert [p.name for p in (state / "vms").iterdir()] == ["vm-keep.json"]
        assert list(load_state(state).snapshots) == ["vm-keep"]
    finally:
        sim.stop()


async def test_the_state_is_fsynced_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A freeze and a thaw are durable before they are answered, but an fsync on the
    # event loop would stall every other VM's call behind it (issue 16).
    import os
    import threading

    from vmsnap_agent.sim import SimAgent

    agent = SimAgent(tmp_path / "state", name="sim-1")
    await agent.start()
    loop_thread = threading.get_ident()
    fsynced_in: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        fsynced_in.append(threading.get_ident())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    try:
        await agent.define_vm(a_vm("vm1"))
        await agent.start_vm("vm1")
        freeze = await agent.quiesce("vm1", QuiesceMethod.OVERLAY, 60, False, "op-1")
        assert frozen(tmp_path / "state", "vm1")  # durable when answered
        await agent.unquiesce(freeze.token)
        assert not frozen(tmp_path / "state", "vm1")
    finally:
        await agent.close()
    assert fsynced_in and loop_thread not in fsynced_in
