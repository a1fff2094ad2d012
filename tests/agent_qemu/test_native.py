"""Hypervisor-native snapshots: memory + disks while running, disks only when stopped."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsnap_agent.qemu import (
    DiskFormat,
    DiskSpec,
    InvalidSpec,
    QemuHypervisor,
    SnapshotConflict,
    SnapshotNotFound,
    VmState,
    VmStateError,
)

from .guestlib import make_qcow2, make_raw

pytestmark = pytest.mark.asyncio

MARKER = "/run/vmsnap-marker"


async def _set_marker(hv: QemuHypervisor, vm_id: str, value: str) -> None:
    async with hv.guest_agent(vm_id) as ga:
        code, _, err = await ga.exec_command("/bin/sh", ["-c", f"echo {value} > {MARKER}"])
    assert code == 0, err


async def _marker(hv: QemuHypervisor, vm_id: str) -> bytes:
    async with hv.guest_agent(vm_id) as ga:
        return (await ga.read_file(MARKER) or b"").strip()


async def test_memory_snapshot_round_trip(hv: QemuHypervisor, workdir: Path) -> None:
    disk = make_qcow2(workdir / "root.qcow2")
    await hv.define_vm("mem", 256, [DiskSpec("root", str(disk), format=DiskFormat.QCOW2)])
    await hv.start_vm("mem")
    await hv.wait_guest_agent("mem")

    # The marker lives on a tmpfs: only a memory snapshot can bring it back.
    await _set_marker(hv, "mem", "before")
    snap = await hv.take_native_snapshot("mem", "s1", include_memory=True)
    assert snap.include_memory and snap.disks == ("root",)
    assert await hv.take_native_snapshot("mem", "s1", include_memory=True) == snap  # idempotent
    with pytest.raises(SnapshotConflict):  # same id, other arguments
        await hv.take_native_snapshot("mem", "s1", include_memory=False)
    await _set_marker(hv, "mem", "after")
    assert await _marker(hv, "mem") == b"after"

    info = await hv.revert_native_snapshot("mem", "s1")
    assert info.state is VmState.RUNNING
    assert await _marker(hv, "mem") == b"before"

    # Disk-only while running: atomic internal snapshot, reverting needs a stop.
    await hv.take_native_snapshot("mem", "disk-only")
    with pytest.raises(VmStateError):
        await hv.revert_native_snapshot("mem", "disk-only")
    assert [s.snapshot_id for s in await hv.list_native_snapshots("mem")] == ["s1", "disk-only"]

    await hv.delete_native_snapshot("mem", "s1")
    await hv.delete_native_snapshot("mem", "s1")  # unknown: OK
    with pytest.raises(SnapshotNotFound):
        await hv.revert_native_snapshot("mem", "s1")

    # A memory snapshot of a stopped VM brings it back RUNNING where it was saved
    # (the id is the host's: any text, here with spaces and a slash).
    await hv.take_native_snapshot("mem", "vm snap/2", include_memory=True)
    await _set_marker(hv, "mem", "later")
    await hv.stop_vm("mem", force=True)
    info = await hv.revert_native_snapshot("mem", "vm snap/2")
    assert info.state is VmState.RUNNING
    assert await _marker(hv, "mem") == b"before"
    await hv.delete_native_snapshot("mem", "vm snap/2")

    await hv.stop_vm("mem", force=True)
    assert [s.snapshot_id for s in await hv.list_native_snapshots("mem")] == ["disk-only"]


async def test_stopped_vm_disk_snapshots(hv: QemuHypervisor, workdir: Path) -> None:
    disk = make_qcow2(workdir / "d.qcow2", 16)
    raw = make_raw(workdir / "r.img")
    await hv.define_vm(
        "off",
        128,
        [DiskSpec("d", str(disk), format=DiskFormat.QCOW2), DiskSpec("r", str(raw))],
    )
    with pytest.raises(InvalidSpec):  # raw disks hold no internal snapshots
        await hv.take_native_snapshot("off", "x", disks=["d", "r"])
    with pytest.raises(VmStateError):
        await hv.take_native_snapshot("off", "x", disks=["d"], include_memory=True)
    snap = await hv.take_native_snapshot("off", "x", disks=["d"])
    assert snap.disks == ("d",) and not snap.include_memory
    await hv.revert_native_snapshot("off", "x")
    await hv.delete_native_snapshot("off", "x")
    assert await hv.list_native_snapshots("off") == []
