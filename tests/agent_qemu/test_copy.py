"""CopyNativeDisks / DeleteCopiedDisks of the QEMU agent (clone to a new VM), through
the contract: the SDK's gRPC server and AgentClient, in process."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from vmsnap_agent.qemu import DiskFormat, DiskSpec, QemuHypervisor, SnapshotNotFound, VmBusy
from vmsnap_agent.qemu.copies import DiskCopies
from vmsnap_sdk import VM, AgentClient, CloneTarget, Volume
from vmsnap_sdk.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)

from .guestlib import make_qcow2, qemu_img_info

pytestmark = pytest.mark.asyncio

OFFSET = 1 << 20  # where the guest writes its marker on /dev/vda
A = b"vmsnap-before-A"
B = b"vmsnap-after--B"


async def _guest_write(hv: QemuHypervisor, vm_id: str, data: bytes) -> None:
    script = f"printf {data.decode()} | dd of=/dev/vda bs=1 seek={OFFSET} conv=notrunc,fsync"
    async with hv.guest_agent(vm_id) as ga:
        code, _, err = await ga.exec_command("/bin/sh", ["-c", script])
    assert code == 0, err


async def _guest_read(hv: QemuHypervisor, vm_id: str) -> bytes:
    script = f"dd if=/dev/vda bs=1 skip={OFFSET} count={len(A)} 2>/dev/null"
    async with hv.guest_agent(vm_id) as ga:
        code, out, err = await ga.exec_command("/bin/sh", ["-c", script])
    assert code == 0, err
    return out


def _qemu(*args: str) -> subprocess.CompletedProcess[str]:
    """A qemu-img / qemu-io run (blocking: short, on small images)."""
    return subprocess.run(args, capture_output=True, text=True, check=False)


def _image_read(path: Path, workdir: Path) -> bytes:
    """The marker's bytes in a qcow2 image, read by qemu-img (not by QEMU's guest)."""
    raw = workdir / "read.raw"
    subprocess.run(
        ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(path), str(raw)],
        check=True,
        capture_output=True,
    )
    with open(raw, "rb") as f:
        f.seek(OFFSET)
        data = f.read(len(A))
    raw.unlink()
    return data


def _path(locator: str) -> Path:
    assert locator.startswith("file:///")
    return Path(unquote(urlparse(locator).path))


async def test_copy_reads_the_snapshot_and_is_idempotent(
    client: AgentClient, hv: QemuHypervisor, workdir: Path
) -> None:
    assert (await client.get_info()).copy_native_disks
    source = workdir / "local.qcow2"
    await client.define_vm(
        VM(
            id="src",
            volumes=(
                Volume("local", f"file://{source}", 16 << 20, "qcow2"),
                # An array's disk: in the snapshot, but its bytes are the array's.
                Volume("array", "element://c1/7", 16 << 20, "qcow2"),
            ),
        )
    )
    await client.start_vm("src")
    await hv.wait_guest_agent("src")
    await _guest_write(hv, "src", A)
    await client.take_native_snapshot("src", "s1", ["local", "array"], False)
    await _guest_write(hv, "src", B)

    # Copied while the VM runs and writes (QEMU holds the image).
    target = [CloneTarget("local", "new-local")]
    copied = await client.copy_native_disks("c1", "src", "s1", target)
    assert [(v.disk, v.format, v.size_bytes) for v in copied] == [("local", "qcow2", 16 << 20)]
    copy = _path(copied[0].locator)
    assert copy.is_file() and copy != source
    assert _image_read(copy, workdir) == A
    assert await _guest_read(hv, "src") == B
    info = qemu_img_info(copy)  # independent: no backing file, none of the source's snapshots
    assert "backing-filename" not in info and not info.get("snapshots")
    assert not list(copy.parent.glob(".*.tmp"))

    # A retry answers the same disks; the id is not reusable for another copy.
    assert await client.copy_native_disks("c1", "src", "s1", target) == copied
    await client.take_native_snapshot("src", "s2", ["local"], False)
    with pytest.raises(AlreadyExists) as exc:
        await client.copy_native_disks("c1", "src", "s2", target)
    assert exc.value.reason == "CLONE_ID_REUSED"
    with pytest.raises(AlreadyExists):
        await client.copy_native_disks("c1", "src", "s1", [CloneTarget("local", "other")])

    # A memory snapshot's disks are internal snapshots too (with the RAM beside them).
    await client.take_native_snapshot("src", "m1", ["local", "array"], True)
    (from_memory,) = await client.copy_native_disks("c3", "src", "m1", target)
    assert _image_read(_path(from_memory.locator), workdir) == B

    # What cannot be copied, and why.
    with pytest.raises(FailedPrecondition) as failed:
        await client.copy_native_disks("c2", "src", "s1", [CloneTarget("array", "x")])
    assert failed.value.reason == "SNAPSHOT_DATA_MISSING"
    with pytest.raises(NotFound):
        await client.copy_native_disks("c2", "src", "nope", target)
    with pytest.raises(InvalidArgument):
        await client.copy_native_disks("c2", "src", "s1", [CloneTarget("ghost", "x")])

    # The copy outlives the snapshot, and the source never sees the copy's writes.
    await client.delete_native_snapshot("src", "s1")
    assert _image_read(copy, workdir) == A
    assert (
        _qemu("qemu-io", "-f", "qcow2", "-c", f"write -P 0x43 {OFFSET} 4k", str(copy)).returncode
        == 0
    )
    assert await _guest_read(hv, "src") == B

    # A new VM is defined on the copy's locator as answered.
    new = await client.define_vm(VM(id="clone", volumes=tuple(copied)))
    assert [(v.locator, v.native_snapshot) for v in new.volumes] == [(copied[0].locator, True)]
    await client.undefine_vm("clone")

    await client.delete_copied_disks("c1")
    await client.delete_copied_disks("c3")
    assert not copy.exists() and not copy.parent.exists()
    # Nothing half-deleted left behind; the refused copies (c2) never made a directory.
    assert not list(copy.parent.parent.iterdir())
    await client.delete_copied_disks("c1")  # idempotent
    await client.delete_copied_disks("never-made")
    await client.stop_vm("src", True)


async def test_snapshot_delete_waits_for_a_running_copy(
    hv: QemuHypervisor, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped VM (qemu-img on both sides): the snapshot's delete is refused while a
    copy reads it, and the finished copy equals the image at the snapshot."""
    disk = make_qcow2(workdir / "d.qcow2", 16)
    assert _qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x41 0 1M", str(disk)).returncode == 0
    await hv.define_vm("stopped", 256, [DiskSpec("d", str(disk), format=DiskFormat.QCOW2)])
    await hv.take_native_snapshot("stopped", "s")
    at_snapshot = workdir / "at-snapshot.qcow2"
    await asyncio.to_thread(shutil.copyfile, disk, at_snapshot)
    assert _qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x42 0 1M", str(disk)).returncode == 0

    started, release = asyncio.Event(), asyncio.Event()
    copy = DiskCopies.copy

    async def held_copy(self: DiskCopies, *args: Any) -> Any:
        started.set()
        await release.wait()
        return await copy(self, *args)

    monkeypatch.setattr(DiskCopies, "copy", held_copy)
    copying = asyncio.create_task(hv.copy_native_disks("k", "stopped", "s", [("d", "n")]))
    await asyncio.wait_for(started.wait(), 30)
    with pytest.raises(VmBusy) as busy:
        await hv.delete_native_snapshot("stopped", "s")
    assert busy.value.reason == "SNAPSHOT_BUSY"
    release.set()
    (made,) = await copying
    await hv.delete_native_snapshot("stopped", "s")
    # A retry whose answer was lost still gets it once the snapshot is gone.
    assert await hv.copy_native_disks("k", "stopped", "s", [("d", "n")]) == [made]
    with pytest.raises(SnapshotNotFound):
        await hv.copy_native_disks("k2", "stopped", "s", [("d", "n")])
    # The copy has the snapshot's bytes (compare: guest-visible contents only).
    compare = _qemu(
        "qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", "-s",
        str(at_snapshot), str(made.path),
    )  # fmt: skip
    assert compare.returncode == 0, compare.stdout
