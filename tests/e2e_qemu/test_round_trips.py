"""Data round trips through the host's public API on a real QEMU guest.

One VM with a disk on each emulated array (an Element volume over NBD, a file
in an ONTAP volume) plus a local qcow2 disk, driven by the reference drivers.
"""

from __future__ import annotations

import json
import time
from urllib.parse import unquote, urlparse

import grpc
import pytest

from tests.support.qemu_stack import (
    QemuStack,
    fsck,
    make_ext4,
    read_ext4_file,
    replay_and_fsck,
)
from vmsnap_host.client import GroupKind, HostClient, QuiescePolicy, VMSnapshotState
from vmsnap_sdk import VM, Consistency, VMState, Volume

from .conftest import (
    DISK_SIZE,
    counter,
    done,
    guest_sh,
    three_disks,
    vm_of,
    wait_console,
    wait_counter,
    wait_guest,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(300)]

# A marker on the raw local disk, past anything else (the qcow2 disk has no file system).
LOCAL_OFFSET = 16 << 20


@pytest.fixture(scope="module")
def stack(lease30_stack: QemuStack) -> QemuStack:
    return lease30_stack


async def _local_marker(stack: QemuStack, vm_id: str, text: str) -> None:
    await guest_sh(
        stack,
        vm_id,
        f"printf '{text}' | dd of=/dev/vdc bs=512 seek={LOCAL_OFFSET // 512} "
        "conv=notrunc 2>/dev/null && sync",
    )


def _read_local(stack: QemuStack, image: str, length: int) -> bytes:
    import subprocess

    raw = stack.work / "local-check.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, str(raw)],
        check=True,
        timeout=60,
    )
    with open(raw, "rb") as f:
        f.seek(LOCAL_OFFSET)
        data = f.read(length)
    raw.unlink()
    return data


async def _clone_holds_the_snapshot(
    stack: QemuStack, host: HostClient, snapshot_id: str, low: int, high: int
) -> None:
    """CreateVMFromSnapshot: the Element and ONTAP disks cloned by their drivers, the
    local qcow2 disk copied by the QEMU agent from its internal snapshot."""
    op = await done(host, await host.create_vm_from_snapshot(snapshot_id, "rt-clone"))
    assert op.succeeded, op.error
    clone = await host.get_vm("rt-clone")
    assert clone.state is VMState.STOPPED
    new = {v.disk: v.locator for v in clone.volumes}
    assert new["vda"].startswith("element://") and new["vdb"].startswith("ontap://"), new
    assert new["vdc"].startswith("file:///"), new
    image = stack.element_image(new["vda"], stack.work / "rt-clone-vda.img")
    clean, report = fsck(image)
    assert clean, report
    assert low <= int(read_ext4_file(image, "counter")) <= high
    ontap = stack.ontap_export / new["vdb"].split("/", 3)[3]
    assert read_ext4_file(ontap, "marker") == "before\n"
    assert _read_local(stack, unquote(urlparse(new["vdc"]).path), 12) == b"LOCAL-BEFORE"
    await host.undefine_vm("rt-clone")


async def test_quiesced_snapshot_round_trip_then_crash_consistent(
    stack: QemuStack, host: HostClient
) -> None:
    disks = three_disks(stack, "rt")
    await host.define_vm(vm_of(stack, "rt", disks, "vmsnap.writer=/dev/vda"))
    await host.start_vm("rt")
    await wait_guest(stack, "rt")
    await wait_counter(stack, "rt", 0)
    await guest_sh(stack, "rt", "echo before > /mnt/vdb/marker && sync")
    await _local_marker(stack, "rt", "LOCAL-BEFORE")

    # --- REQUIRED: the guest's file systems frozen (qemu-ga + hook) ---------------------
    low = await counter(stack, "rt")
    op = await host.create_vm_snapshot("rt", "quiesced", quiesce=QuiescePolicy.REQUIRED)
    op = await done(host, op)
    high = await counter(stack, "rt")
    assert op.succeeded, op.error
    snap = await host.get_vm_snapshot(op.vm_snapshot_id)
    assert snap.state is VMSnapshotState.READY
    assert snap.consistency >= Consistency.FILESYSTEM, snap
    assert snap.freeze_seconds is not None and snap.freeze_seconds > 0
    owners = {g.owner: (g.kind, g.disks) for g in snap.groups}
    kinds = sorted((kind.name, disks) for kind, disks in owners.values())
    assert kinds == [("DRIVER", ("vda",)), ("DRIVER", ("vdb",)), ("HYPERVISOR", ("vdc",))], snap

    # More writes, then a clean stop: the disks now hold later data.
    await wait_counter(stack, "rt", high + 3)
    await guest_sh(stack, "rt", "echo after > /mnt/vdb/marker && sync")
    await _local_marker(stack, "rt", "LOCAL-AFTER!")

    # --- clone to a new VM while the source runs and writes: every disk as at the take --
    began = time.monotonic()
    await _clone_holds_the_snapshot(stack, host, snap.id, low, high)
    print(f"clone and its checks: {time.monotonic() - began:.1f} s")

    assert (await host.stop_vm("rt")).state is VMState.STOPPED
    later = stack.element_image(disks.element, stack.work / "rt-later.img")
    at_stop = int(read_ext4_file(later, "counter"))
    assert at_stop > high
    # The source kept its later data through the clone.
    assert read_ext4_file(disks.ontap, "marker") == "after\n"
    assert _read_local(stack, str(disks.local), 12) == b"LOCAL-AFTER!"

    op = await done(host, await host.revert_vm_snapshot(snap.id))
    assert op.succeeded, op.error
    image = stack.element_image(disks.element, stack.work / "rt-reverted.img")
    clean, report = fsck(image)
    assert clean, report
    reverted = int(read_ext4_file(image, "counter"))
    assert low <= reverted <= high, (low, reverted, high)
    clean, report = fsck(disks.ontap)
    assert clean, report
    assert read_ext4_file(disks.ontap, "marker") == "before\n"
    assert _read_local(stack, str(disks.local), 12) == b"LOCAL-BEFORE"

    # --- OFF: no guest freeze; the arrays still cut at one instant (overlays) -----------
    await host.start_vm("rt")
    await wait_guest(stack, "rt")
    start = await wait_counter(stack, "rt", reverted)
    # The guest's counts reach the disk at ext4's commit (every 5 s): synced, the cut
    # below cannot hold a count from before the revert. (The memory snapshot's refusal
    # that stood here gave the commit time; a memory snapshot with these disks is now
    # tests/e2e_qemu/test_memory.py.)
    await guest_sh(stack, "rt", "sync")
    op = await done(host, await host.create_vm_snapshot("rt", "crash", quiesce=QuiescePolicy.OFF))
    assert op.succeeded, op.error
    crash = await host.get_vm_snapshot(op.vm_snapshot_id)
    assert crash.consistency is Consistency.CRASH, crash
    await wait_counter(stack, "rt", start + 3)
    await host.stop_vm("rt")
    op = await done(host, await host.revert_vm_snapshot(crash.id))
    assert op.succeeded, op.error
    image = stack.element_image(disks.element, stack.work / "rt-crash.img")
    as_cut, report = fsck(image)
    # What crash consistency gives: maybe a journal to replay, never worse.
    repaired, repair_report = replay_and_fsck(image)
    assert repaired, repair_report
    value = read_ext4_file(image, "counter").strip()
    assert value == "" or int(value) >= reverted, value
    print(f"crash-consistent cut: clean without replay={as_cut}")

    await host.stop_vm("rt", force=True)


def _agent_methods(stack: QemuStack) -> list[str]:
    """The method of every quiesce the agent undid, in order (its "unquiesced" lines)."""
    methods = []
    for line in (stack.work / "agent.log").read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or entry.get("msg") != "unquiesced":
            continue
        fields = entry.get("fields", entry)
        if isinstance(fields, dict) and "method" in fields:
            methods.append(str(fields["method"]))
    return methods


async def test_memory_snapshot_round_trip(stack: QemuStack, host: HostClient) -> None:
    """All disks local: the hypervisor-only plan may include RAM (a tmpfs marker comes back).
    A quiesced disk-only take of the same VM freezes the guest for the native cut
    alone (it cuts every disk at once: no overlay to make and commit) and restores."""
    disk = stack.work / "mem-vda.qcow2"
    await host.define_vm(
        VM(
            id="mem",
            name="mem",
            memory_mib=256,
            volumes=(Volume("vda", f"file://{disk}", DISK_SIZE, "qcow2"),),
        )
    )
    await host.start_vm("mem")
    try:
        await wait_guest(stack, "mem")
        await _local_disk_marker(stack, "mem", "before")
        before = len(_agent_methods(stack))
        op = await done(
            host, await host.create_vm_snapshot("mem", "disk", quiesce=QuiescePolicy.REQUIRED)
        )
        assert op.succeeded, op.error
        disk_snap = await host.get_vm_snapshot(op.vm_snapshot_id)
        assert [g.kind for g in disk_snap.groups] == [GroupKind.HYPERVISOR]
        assert disk_snap.consistency >= Consistency.FILESYSTEM, disk_snap
        assert _agent_methods(stack)[before:] == ["guest+cut"]
        await _local_disk_marker(stack, "mem", "after!")

        await guest_sh(stack, "mem", "echo one > /run/marker")
        op = await done(host, await host.create_vm_snapshot("mem", "ram", include_memory=True))
        assert op.succeeded, op.error
        snap = await host.get_vm_snapshot(op.vm_snapshot_id)
        assert snap.include_memory and snap.consistency is Consistency.APPLICATION, snap
        assert [g.kind for g in snap.groups] == [GroupKind.HYPERVISOR]
        await guest_sh(stack, "mem", "echo two > /run/marker")

        op = await done(host, await host.revert_vm_snapshot(snap.id))
        assert op.succeeded, op.error
        assert (await host.get_vm("mem")).state is VMState.RUNNING
        assert (await guest_sh(stack, "mem", "cat /run/marker")).strip() == "one"
    finally:
        await host.stop_vm("mem", force=True)
    op = await done(host, await host.revert_vm_snapshot(disk_snap.id))
    assert op.succeeded, op.error
    assert _read_local_at(str(disk), 0, 6) == b"before"


async def _local_disk_marker(stack: QemuStack, vm_id: str, text: str) -> None:
    await guest_sh(
        stack, vm_id, f"printf '{text}' | dd of=/dev/vda bs=512 conv=notrunc 2>/dev/null && sync"
    )


def _read_local_at(image: str, offset: int, length: int) -> bytes:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        raw = f"{tmp}/disk.raw"
        subprocess.run(
            ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, raw], check=True, timeout=60
        )
        with open(raw, "rb") as f:
            f.seek(offset)
            return f.read(length)


async def test_guest_without_agent(stack: QemuStack, host: HostClient) -> None:
    """qemu-ga silent: REQUIRED fails with the cause; BEST_EFFORT records CRASH and warns."""
    seed = stack.work / "noga-seed.img"

    element = stack.element_volume("noga-vda", DISK_SIZE, ext4_from=make_ext4(seed, DISK_SIZE))
    local = stack.work / "noga-vdb.qcow2"
    await host.define_vm(
        VM(
            id="noga",
            name="noga vmsnap.noga=1",
            memory_mib=256,
            volumes=(
                Volume("vda", element, DISK_SIZE),
                Volume("vdb", f"file://{local}", DISK_SIZE, "qcow2"),
            ),
        )
    )
    await host.start_vm("noga")
    try:
        await wait_console(stack, "noga", "vmsnap-init: ready")

        op = await done(
            host, await host.create_vm_snapshot("noga", "must", quiesce=QuiescePolicy.REQUIRED)
        )
        assert op.error is not None and op.error.code is grpc.StatusCode.FAILED_PRECONDITION
        assert "REQUIRED" in op.error.message and "guest" in op.error.message, op.error
        failed = await host.get_vm_snapshot(op.vm_snapshot_id)
        assert failed.state is VMSnapshotState.ERROR, failed
        assert not stack.frozen_token("noga")  # thawed: nothing left quiesced

        op = await done(
            host, await host.create_vm_snapshot("noga", "may", quiesce=QuiescePolicy.BEST_EFFORT)
        )
        assert op.succeeded, op.error
        snap = await host.get_vm_snapshot(op.vm_snapshot_id)
        assert snap.state is VMSnapshotState.READY
        assert snap.consistency is Consistency.CRASH, snap
        assert any("guest agent" in w for w in snap.warnings), snap.warnings
        # Nothing of the failed take stayed on the array: one group snapshot, the READY one.
        groups = stack.element_rpc("ListGroupSnapshots", {})["groupSnapshots"]
        members = [
            g
            for g in groups
            if any(m["volumeID"] == int(element.rsplit("/", 1)[1]) for m in g["members"])
        ]
        assert len(members) == 1, members
    finally:
        await host.stop_vm("noga", force=True)


async def test_element_target_restart_pauses_guest_io(stack: QemuStack, host: HostClient) -> None:
    """The array's block target dies and comes back: the guest's I/O waits, then succeeds."""
    seed = make_ext4(stack.work / "link-seed.img", DISK_SIZE)
    element = stack.element_volume("link-vda", DISK_SIZE, ext4_from=seed)
    seed.unlink()
    await host.define_vm(
        VM(id="link", name="link", memory_mib=256, volumes=(Volume("vda", element, DISK_SIZE),))
    )
    await host.start_vm("link")
    try:
        await wait_guest(stack, "link")
        stack.crash_element()
        # Written and synced while the target is down or just back: QEMU reconnects.
        await guest_sh(stack, "link", "echo survived > /mnt/vda/link && sync", timeout=60)
        console = stack.probe().console_path("link").read_text(errors="replace")
        assert "I/O error" not in console, console[-2000:]
    finally:
        await host.stop_vm("link")
    image = stack.element_image(element, stack.work / "link.img")
    clean, report = fsck(image)
    assert clean, report
    assert read_ext4_file(image, "link") == "survived\n"
