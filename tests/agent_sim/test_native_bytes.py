"""The sim agent's native snapshots keep the bytes of its file disks, and only those.

The host plans a disk to the hypervisor strategy only when the agent says that
its native snapshot holds the disk's bytes; these tests hold the sim to what it
says: a revert restores a file disk, an array disk is reported as not kept, and
a SIGKILL of the agent never leaves a disk half reverted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import grpc
import pytest

from tests.agent_sim.simproc import SimProc
from vmsnap_agent.sim import disk_path
from vmsnap_sdk import VM, AgentClient, Page, VMState, Volume
from vmsnap_sdk.errors import FailedPrecondition, InvalidArgument

ROOT_DISK = "file:///var/lib/vms/root.img"
DATA_DISK = "file:///var/lib/vms/data%20disk.img"


def mixed_vm(vm_id: str) -> VM:
    return VM(
        id=vm_id,
        name=vm_id,
        memory_mib=256,
        volumes=(
            Volume("vda", ROOT_DISK, 1 << 20),
            Volume("vdb", "element://cluster-1/42", 1 << 20),
            Volume("vdc", "ontap://svm1/vol1/disk.raw", 1 << 20),
            Volume("vdd", DATA_DISK, 0),
        ),
    )


def write(path: Path, data: bytes) -> None:
    """As a guest (or the chaos harness) would: open the file anew, write in place."""
    with path.open("r+b") as f:
        f.write(data)
        f.truncate(len(data))


def read(path: Path) -> bytes:
    return path.read_bytes()


def flags(vm: VM) -> dict[str, bool]:
    return {v.disk: v.native_snapshot for v in vm.volumes}


EXPECTED = {"vda": True, "vdb": False, "vdc": False, "vdd": True}


def test_disk_path_maps_file_locators_only(tmp_path: Path) -> None:
    assert disk_path(tmp_path, "file:///var/lib/a.img") == tmp_path / "disks/var/lib/a.img"
    assert disk_path(tmp_path, "file:///x%20y/z") == tmp_path / "disks/x y/z"
    for other in ("element://c/1", "ontap://svm/vol/f", "nbd://h/e"):
        assert disk_path(tmp_path, other) is None
    for bad in ("file://host/a", "file:///a/../../etc/passwd", "file:///", "file:///a//b"):
        with pytest.raises(ValueError, match="file:///ABSOLUTE/PATH"):
            disk_path(tmp_path, bad)


async def test_native_snapshot_flag_per_scheme(agent: AgentClient, sim: SimProc) -> None:
    defined = await agent.define_vm(mixed_vm("vm-flags"))
    assert flags(defined) == EXPECTED
    assert flags(await agent.describe_vm("vm-flags")) == EXPECTED
    assert flags((await agent.list_vms(Page())).vms[0]) == EXPECTED
    assert flags(await agent.start_vm("vm-flags")) == EXPECTED
    # The flag is not part of a volume's identity (requests leave it False).
    assert mixed_vm("vm-flags").volumes == defined.volumes
    assert flags(await agent.define_vm(mixed_vm("vm-flags"))) == EXPECTED

    # File disks are real files, created sparse with their size; array disks are not.
    root = disk_path(sim.state, ROOT_DISK)
    data = disk_path(sim.state, DATA_DISK)
    assert root is not None and data is not None
    assert root.stat().st_size == 1 << 20
    assert root.stat().st_blocks * 512 < 1 << 20  # sparse
    assert data.stat().st_size == 0
    assert sorted(p.name for p in (sim.state / "disks").rglob("*") if p.is_file()) == [
        "data disk.img",
        "root.img",
    ]


async def test_a_file_locator_out_of_the_state_dir_is_refused(agent: AgentClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await agent.define_vm(
            VM(id="vm-bad", volumes=(Volume("vda", "file:///a/../../../etc/passwd"),))
        )
    assert caught.value.field_violations[0][0] == "vm.volumes[0].locator"


async def test_revert_restores_the_bytes_of_file_disks(agent: AgentClient, sim: SimProc) -> None:
    await agent.define_vm(mixed_vm("vm-b"))
    root = disk_path(sim.state, ROOT_DISK)
    data = disk_path(sim.state, DATA_DISK)
    assert root is not None and data is not None
    await agent.start_vm("vm-b")
    write(root, b"A" * 5000)
    write(data, b"a" * 70000)

    snap = await agent.take_native_snapshot("vm-b", "snap-a", [], False)
    assert snap.disks == ("vda", "vdb", "vdc", "vdd")
    copy = sim.state / "native" / "vm-b" / "snap-a" / "vda"
    assert read(copy) == b"A" * 5000
    # A repeat is idempotent and copies nothing again.
    before = copy.stat().st_mtime_ns
    assert await agent.take_native_snapshot("vm-b", "snap-a", [], False) == snap
    assert copy.stat().st_mtime_ns == before

    write(root, b"B" * 9000)
    write(data, b"b" * 10)
    await agent.stop_vm("vm-b", force=False)
    reverted = await agent.revert_native_snapshot("vm-b", "snap-a")
    assert reverted.state is VMState.STOPPED
    assert read(root) == b"A" * 5000
    assert read(data) == b"a" * 70000

    # A snapshot of some disks reverts those only.
    write(root, b"C" * 10)
    write(data, b"c" * 10)
    await agent.take_native_snapshot("vm-b", "snap-c-root", ["vda"], False)
    write(root, b"D" * 10)
    write(data, b"d" * 10)
    await agent.revert_native_snapshot("vm-b", "snap-c-root")
    assert (read(root), read(data)) == (b"C" * 10, b"d" * 10)

    # A memory snapshot brings back the disks with the running VM.
    await agent.start_vm("vm-b")
    await agent.take_native_snapshot("vm-b", "snap-mem", [], True)
    write(root, b"E" * 10)
    reverted = await agent.revert_native_snapshot("vm-b", "snap-mem")
    assert reverted.state is VMState.RUNNING
    assert read(root) == b"C" * 10


async def test_delete_and_undefine_remove_the_copies(agent: AgentClient, sim: SimProc) -> None:
    for vm_id in ("vm-d", "vm-e"):
        await agent.define_vm(
            VM(id=vm_id, volumes=(Volume("vda", f"file:///vms/{vm_id}.img", 4096),))
        )
        await agent.take_native_snapshot(vm_id, "s1", [], False)
        await agent.take_native_snapshot(vm_id, "s2", [], False)
    native = sim.state / "native"
    assert (native / "vm-d" / "s1" / "vda").is_file()
    # Empty vm_id: every VM's snapshots (what the host's reconciler sweeps).
    listed = await agent.list_native_snapshots("")
    assert sorted((s.vm_id, s.snapshot_id) for s in listed) == [
        ("vm-d", "s1"),
        ("vm-d", "s2"),
        ("vm-e", "s1"),
        ("vm-e", "s2"),
    ]

    await agent.delete_native_snapshot("vm-d", "s1")
    assert not (native / "vm-d" / "s1").exists()
    assert (native / "vm-d" / "s2" / "vda").is_file()
    await agent.delete_native_snapshot("vm-d", "s1")  # idempotent

    await agent.undefine_vm("vm-e")
    assert not (native / "vm-e").exists()
    disk = disk_path(sim.state, "file:///vms/vm-e.img")
    assert disk is not None and disk.is_file()  # the disk is the user's, it stays


async def test_a_lost_copy_fails_the_revert_instead_of_restoring_nothing(
    agent: AgentClient, sim: SimProc
) -> None:
    await agent.define_vm(VM(id="vm-l", volumes=(Volume("vda", "file:///l.img", 4096),)))
    await agent.take_native_snapshot("vm-l", "s1", [], False)
    (sim.state / "native" / "vm-l" / "s1" / "vda").unlink()
    with pytest.raises(FailedPrecondition) as caught:
        await agent.revert_native_snapshot("vm-l", "s1")
    assert caught.value.reason == "SNAPSHOT_DATA_MISSING"


# --- SIGKILL of the agent in the middle ------------------------------------------------

SIZE = 24 << 20  # big enough that the copies take a while
DISKS = ("file:///k/one.img", "file:///k/two.img")


def two_disk_vm() -> VM:
    return VM(
        id="vm-k",
        volumes=tuple(Volume(f"vd{c}", loc, SIZE) for c, loc in zip("ab", DISKS, strict=True)),
    )


def sides(state: Path) -> set[bytes]:
    """The one byte every disk is made of; a disk of mixed bytes fails the test."""
    found = set()
    for locator in DISKS:
        path = disk_path(state, locator)
        assert path is not None
        data = read(path)
        assert len(data) == SIZE, f"{path} is {len(data)} bytes"
        assert data.count(data[:1]) == SIZE, f"{path} is half written"
        found.add(data[:1])
    return found


def leftovers(state: Path) -> list[str]:
    return sorted(p.name for p in state.rglob(".*.tmp"))


def own_client(sim: SimProc) -> AgentClient:
    """A client whose connection is its own: gRPC shares connections between the
    channels of a process, and one that saw the killed agent would keep failing
    (in reconnect backoff) for a while after the new agent serves."""
    channel = grpc.aio.insecure_channel(
        sim.address, options=[("grpc.use_local_subchannel_pool", 1)]
    )
    return AgentClient(channel, timeout=30)


async def call_then_kill(sim: SimProc, delay: float, call: str) -> bool:
    """Start a revert or take of vm-k, SIGKILL the agent ``delay`` s later, restart
    it; whether the call had succeeded before the kill."""
    client = own_client(sim)
    try:
        await client.describe_vm("vm-k")  # connected: the call below goes out at once
        task: asyncio.Future[object] = asyncio.ensure_future(
            client.revert_native_snapshot("vm-k", "snap-a")
            if call == "revert"
            else client.take_native_snapshot("vm-k", "snap-t", [], False)
        )
        await asyncio.sleep(delay)
        done = task.done() and task.exception() is None
        sim.kill()
        with contextlib.suppress(Exception):
            await task
    finally:
        await client.close()
    sim.start()
    return done


async def test_a_sigkill_mid_revert_leaves_every_disk_on_one_side(sim: SimProc) -> None:
    client = AgentClient.connect(sim.address, timeout=30)
    try:
        await client.define_vm(two_disk_vm())
        for locator in DISKS:
            path = disk_path(sim.state, locator)
            assert path is not None
            write(path, b"A" * SIZE)
        await client.take_native_snapshot("vm-k", "snap-a", [], False)
    finally:
        await client.close()

    outcomes = []
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 5.0):
        for locator in DISKS:
            path = disk_path(sim.state, locator)
            assert path is not None
            write(path, b"B" * SIZE)
        acknowledged = await call_then_kill(sim, delay, "revert")
        found = sides(sim.state)
        assert len(found) == 1, f"killed after {delay} s: the disks are on both sides"
        assert leftovers(sim.state) == []
        side = found.pop()
        if acknowledged:
            assert side == b"A", f"an acknowledged revert was lost (killed after {delay} s)"
        outcomes.append((delay, acknowledged, side))
    # Killed before the revert began, and after it ended: both sides were seen.
    assert {side for _, _, side in outcomes} == {b"A", b"B"}, outcomes
    assert outcomes[-1][1], f"the revert took more than 5 s: {outcomes}"


async def test_a_sigkill_mid_take_leaves_a_whole_snapshot_or_none(sim: SimProc) -> None:
    client = AgentClient.connect(sim.address, timeout=30)
    try:
        await client.define_vm(two_disk_vm())
        for locator in DISKS:
            path = disk_path(sim.state, locator)
            assert path is not None
            write(path, b"T" * SIZE)
    finally:
        await client.close()

    seen = set()
    for delay in (0.0, 0.03, 0.1, 0.3, 5.0):
        acknowledged = await call_then_kill(sim, delay, "take")
        client = own_client(sim)
        try:
            taken = [s.snapshot_id for s in await client.list_native_snapshots("vm-k")]
            assert taken or not acknowledged, f"an acknowledged take was lost ({delay} s)"
            copies = sim.state / "native" / "vm-k" / "snap-t"
            if taken:
                assert sorted(p.name for p in copies.iterdir()) == ["vda", "vdb"]
                assert all(read(p) == b"T" * SIZE for p in copies.iterdir())
                await client.delete_native_snapshot("vm-k", "snap-t")
            else:
                assert not copies.exists(), "a copy without its snapshot was left behind"
            seen.add(bool(taken))
            assert leftovers(sim.state) == []
        finally:
            await client.close()
    assert seen == {True, False}


async def test_start_up_finishes_a_committed_revert_and_drops_an_uncommitted_one(
    sim: SimProc,
) -> None:
    """The two crash windows a timed kill rarely hits, set up by hand: copies staged
    and the revert recorded (finished at start-up), copies staged only (dropped)."""
    client = own_client(sim)
    try:
        for vm_id in ("vm-done", "vm-undone"):
            await client.define_vm(VM(id=vm_id, volumes=(Volume("vda", f"file:///{vm_id}", 8),)))
            path = disk_path(sim.state, f"file:///{vm_id}")
            assert path is not None
            write(path, b"A" * 8)
            await client.take_native_snapshot(vm_id, "snap-a", [], False)
            write(path, b"B" * 8)
    finally:
        await client.close()
    sim.kill()
    for vm_id in ("vm-done", "vm-undone"):
        path = disk_path(sim.state, f"file:///{vm_id}")
        assert path is not None
        (path.parent / f".{path.name}.tmp").write_bytes(b"A" * 8)
    vm_file = sim.state / "vms" / "vm-done.json"
    data = json.loads(vm_file.read_text())
    data["vm"]["reverting"] = {"snapshot_id": "snap-a", "disks": ["vda"], "state": "STOPPED"}
    vm_file.write_text(json.dumps(data))
    # A take cut short before its record: copies of a snapshot nobody knows.
    orphan = sim.state / "native" / "vm-done" / "snap-half"
    orphan.mkdir()
    (orphan / "vda").write_bytes(b"half")

    sim.start()
    done, undone = (disk_path(sim.state, f"file:///{v}") for v in ("vm-done", "vm-undone"))
    assert done is not None and undone is not None
    assert (read(done), read(undone)) == (b"A" * 8, b"B" * 8)
    assert leftovers(sim.state) == []
    assert json.loads(vm_file.read_text())["vm"]["reverting"] is None
    assert not orphan.exists()
    assert (sim.state / "native" / "vm-done" / "snap-a" / "vda").is_file()
