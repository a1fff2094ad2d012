"""pause+memory: the VM paused, its RAM and devices saved to a file, disks cut while
paused (a local qcow2 natively, an "array" raw disk copied as an array would), the
saved state adopted by a native memory snapshot; revert starts the VM from the file.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.support import ram_counter
from vmsnap_agent.qemu import DiskFormat, DiskSpec, QemuHypervisor, QuiesceMethod, VmState
from vmsnap_agent.qemu.errors import VmFrozen

from .guestlib import make_qcow2, make_raw, read_at, wait_until

pytestmark = pytest.mark.asyncio


def _size(path: Path) -> int:
    """The file's size, -1 when it does not exist."""
    return path.stat().st_size if path.exists() else -1


async def _sh(hv: QemuHypervisor, vm_id: str, script: str) -> str:
    async with hv.guest_agent(vm_id) as ga:
        code, out, err = await ga.exec_command("/bin/sh", ["-c", script])
    assert code == 0, err
    return out.decode()


async def _counter(hv: QemuHypervisor, vm_id: str) -> int | None:
    return ram_counter.parse(await _sh(hv, vm_id, ram_counter.READ))


async def _status(hv: QemuHypervisor, vm_id: str) -> str:
    return str((await hv.qmp(vm_id).execute("query-status"))["status"])


async def _define(hv: QemuHypervisor, workdir: Path, vm_id: str) -> Path:
    local = make_qcow2(workdir / f"{vm_id}-local.qcow2")
    array = make_raw(workdir / f"{vm_id}-array.raw")
    await hv.define_vm(
        vm_id,
        256,
        [
            DiskSpec("vda", str(local), format=DiskFormat.QCOW2, locator=f"file://{local}"),
            # A disk the agent cannot snapshot natively (an array's, to QEMU a raw file).
            DiskSpec("vdb", str(array), locator="ontap://svm/vol/vdb.raw"),
        ],
    )
    await hv.start_vm(vm_id)
    await hv.wait_guest_agent(vm_id, timeout=120)  # TCG on a loaded machine
    await _sh(hv, vm_id, ram_counter.START)
    return array


async def test_pause_save_adopt_revert(hv: QemuHypervisor, workdir: Path) -> None:
    array = await _define(hv, workdir, "pm")
    await asyncio.sleep(0.3)
    before = await _counter(hv, "pm")
    assert before is not None and before > 0
    await _sh(hv, "pm", "echo before > /run/ram-marker")

    q = await hv.quiesce("pm", QuiesceMethod.PAUSE_MEMORY, 60, operation_id="op-1")
    assert await _status(hv, "pm") != "running"  # paused until unquiesce
    state = Path(q.memory_path)
    assert q.memory_bytes == _size(state) > 0
    # The "array" cuts its disk while the VM is paused.
    await _sh_free_copy(array, workdir / "array-cut.raw")
    with pytest.raises(VmFrozen):  # only the memory snapshot may be taken meanwhile
        await hv.take_native_snapshot("pm", "other", ["vda"], include_memory=False)
    snap = await hv.take_native_snapshot("pm", "s1", ["vda"], include_memory=True)
    assert snap.include_memory and snap.disks == ("vda",) and snap.memory_path
    assert await hv.take_native_snapshot("pm", "s1", ["vda"], include_memory=True) == snap
    assert await hv.unquiesce(q.token) is not None
    assert await _status(hv, "pm") == "running"
    # Adopted: the snapshot owns the file now (kept where it was saved).
    assert snap.memory_path == q.memory_path and _size(state) == q.memory_bytes

    # Change everything: RAM (the counter runs on), the local disk, the array disk.
    at_snapshot = await _counter(hv, "pm")
    assert at_snapshot is not None
    await _sh(hv, "pm", "printf LATER | dd of=/dev/vda bs=512 seek=2048 conv=notrunc,fsync")
    await _sh(hv, "pm", "printf LATER | dd of=/dev/vdb bs=512 seek=8 conv=notrunc,fsync")
    await _sh(hv, "pm", "echo later > /run/ram-marker")
    # Far enough ahead (5 s of counting) that the read after the revert, however slow
    # on a loaded machine, still finds the count below it.
    later = await _counter(hv, "pm")
    while later is not None and later < at_snapshot + 100:
        await asyncio.sleep(0.5)
        later = await _counter(hv, "pm")
    assert later is not None

    # Revert: the "array" restores its disk (VM stopped first), then the agent.
    await hv.stop_vm("pm", force=True)
    shutil.copyfile(workdir / "array-cut.raw", array)
    info = await hv.revert_native_snapshot("pm", "s1")
    assert info.state is VmState.RUNNING
    back = await _counter(hv, "pm")
    assert (await _sh(hv, "pm", "cat /run/ram-marker 2>/dev/null || true")).strip() == "before"
    # The loop resumed from RAM as saved: from the value at the pause, not from
    # zero (a reboot) and not from "later" (no revert).
    assert back is not None and before <= back < later, (before, back, later)
    assert read_at(array, 8 * 512, 5) != b"LATER"
    local_now = await _sh(hv, "pm", "dd if=/dev/vda bs=512 skip=2048 count=1 2>/dev/null")
    assert not local_now.startswith("LATER")

    await hv.delete_native_snapshot("pm", "s1")
    assert _size(Path(snap.memory_path)) < 0
    assert [s.snapshot_id for s in await hv.list_native_snapshots("pm")] == []


async def _sh_free_copy(src: Path, dest: Path) -> None:
    await asyncio.to_thread(shutil.copyfile, src, dest)


async def test_unadopted_state_is_dropped_and_vm_resumed_lease_too(
    hv: QemuHypervisor, workdir: Path
) -> None:
    """A take that failed after the pause: unquiesce resumes the VM, nothing stays."""
    await _define(hv, workdir, "drop")
    q = await hv.quiesce("drop", QuiesceMethod.PAUSE_MEMORY, 60)
    assert _size(Path(q.memory_path)) > 0
    await hv.unquiesce(q.token)
    assert await _status(hv, "drop") == "running"
    assert _size(Path(q.memory_path)) < 0
    assert await hv.list_native_snapshots("drop") == []
    first = await _counter(hv, "drop")
    await asyncio.sleep(0.3)
    assert (await _counter(hv, "drop") or 0) > (first or 0)  # the guest runs on

    # Nobody unquiesces: the lease's end resumes the VM and drops the state.
    q = await hv.quiesce("drop", QuiesceMethod.PAUSE_MEMORY, 1.0)

    async def resumed() -> bool:
        return not hv.list_quiesces("drop")

    await wait_until(resumed, 15)
    assert await _status(hv, "drop") == "running"
    assert _size(Path(q.memory_path)) < 0
