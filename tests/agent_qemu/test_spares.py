"""Spare overlays: made after an unquiesce, opened (not created) by the next quiesce.

What a user relies on: an overlay the agent made ahead of time behaves exactly as one
QEMU creates inside the transaction — same header (so an offline ``qemu-img commit``
after QEMU died finds the base), the guest's writes folded back into the bases, a
spare that went missing costs nothing but speed, and none is trusted by another QEMU
process or left behind by a stop.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from vmsnap_agent.qemu import DiskSpec, QemuHypervisor, QuiesceMethod, VmState
from vmsnap_agent.qemu.process import VmPaths
from vmsnap_agent.qemu.spares import SpareOverlays, _Generation

from .guestlib import (
    make_ext4,
    make_qcow2,
    make_raw,
    qemu_img_info,
    qemu_io,
    read_at,
    wait_until,
)


def _header(path: Path) -> tuple[str, str, int]:
    """(backing file, backing format, virtual size) as written in a qcow2 header."""
    info = qemu_img_info(path)
    return info["backing-filename"], info["backing-filename-format"], info["virtual-size"]


async def _spares_ready(paths: VmPaths, count: int) -> None:
    async def ready() -> bool:
        return paths.spares.exists() and len(list(paths.spares.glob("*.qcow2"))) == count

    await wait_until(ready, 30)


@pytest.mark.asyncio
async def test_spare_overlays_match_created_ones_and_fold_back(
    hv: QemuHypervisor, workdir: Path
) -> None:
    data = make_ext4(workdir / "sp-data.img")
    scratch = make_raw(workdir / "sp-scratch.img")
    local = make_qcow2(workdir / "sp-local.qcow2")
    await hv.define_vm(
        "sp",
        256,
        [
            DiskSpec("data", str(data)),
            DiskSpec("scratch", str(scratch)),
            DiskSpec("local", str(local), format="qcow2"),
        ],
        kernel_args="vmsnap.writer=/dev/vda",
    )
    await hv.start_vm("sp")
    await hv.wait_guest_agent("sp")
    paths = VmPaths.for_vm((workdir / "state").resolve(), "sp")

    # The first quiesce after a start has no spares: QEMU creates its overlays.
    first = await hv.quiesce("sp", QuiesceMethod.OVERLAY, lease_seconds=120)
    created = {d.name: _header(Path(d.active_path)) for d in (await hv.describe_vm("sp")).disks}
    await hv.unquiesce(first.token)
    await _spares_ready(paths, 3)

    # The next one opens the spares: same headers as QEMU's own, and they are used up.
    second = await hv.quiesce("sp", QuiesceMethod.OVERLAY, lease_seconds=120)
    assert list(paths.spares.glob("*.qcow2")) == []
    info = await hv.describe_vm("sp")
    overlays = [Path(d.active_path) for d in info.disks]
    assert {d.name: _header(Path(d.active_path)) for d in info.disks} == created
    await qemu_io(hv, "sp", "scratch", "write -P 0xab 4096 65536")
    assert read_at(scratch, 4096, 65536) == b"\0" * 65536  # the base did not move
    await hv.unquiesce(second.token)
    assert read_at(scratch, 4096, 65536) == b"\xab" * 65536
    assert not any(p.exists() for p in overlays)
    nodes = await hv.qmp("sp").execute("query-named-block-nodes", {"flat": True})
    assert not [n for n in nodes if n["node-name"].startswith("ov-")]

    # A spare deleted behind the agent's back: that disk's overlay is created instead.
    await _spares_ready(paths, 3)
    gone = sorted(paths.spares.glob("scratch-*.qcow2"))
    gone[0].unlink()
    third = await hv.quiesce("sp", QuiesceMethod.OVERLAY, lease_seconds=120)
    info = await hv.describe_vm("sp")
    assert {d.name: _header(Path(d.active_path)) for d in info.disks} == created

    # QEMU dies with spare overlays on top: the offline commit (qemu-img, reading the
    # headers' backing files) folds the guest's flushed write into the base.
    await qemu_io(hv, "sp", "scratch", "write -P 0x3c 0 4096")
    await qemu_io(hv, "sp", "scratch", "flush")
    assert info.pid is not None
    os.kill(info.pid, signal.SIGKILL)

    async def stopped() -> bool:
        return (await hv.describe_vm("sp")).state is VmState.STOPPED

    await wait_until(stopped)
    assert read_at(scratch, 0, 4096) == b"\0" * 4096
    assert await hv.unquiesce(third.token) is not None
    assert read_at(scratch, 0, 4096) == b"\x3c" * 4096

    # A new QEMU process trusts no spare of the old one; a stop leaves none behind.
    await hv.start_vm("sp")
    assert not paths.spares.exists() or list(paths.spares.iterdir()) == []
    await hv.wait_guest_agent("sp")
    fourth = await hv.quiesce("sp", QuiesceMethod.OVERLAY, lease_seconds=120)
    await hv.unquiesce(fourth.token)
    await _spares_ready(paths, 3)
    await hv.stop_vm("sp", force=True)
    assert not paths.spares.exists()


def test_a_spare_is_only_for_the_qemu_process_it_was_made_for(tmp_path: Path) -> None:
    spares = SpareOverlays()
    made = tmp_path / "data-1.qcow2"
    made.touch()
    spares._ready["vm"] = _Generation(pid=100, by_disk={"data": made})
    assert spares.claim("vm", 101, "data") is None  # another QEMU process
    assert spares.claim("vm", None, "data") is None  # not running
    assert spares.claim("other", 100, "data") is None
    assert spares.claim("vm", 100, "data") == made
    assert spares.claim("vm", 100, "data") is None  # claimed once


def test_save_places_spares_only_once_the_record_is_durable(tmp_path: Path) -> None:
    """A record that cannot be written places nothing and leaves no claimed spare."""
    from vmsnap_agent.qemu.quiesce import _save_and_place

    paths = VmPaths(root=tmp_path / "vm", run=tmp_path / "run")
    paths.overlays.mkdir(parents=True)
    spare = tmp_path / "spare.qcow2"
    spare.write_bytes(b"qcow2")
    target = paths.overlays / "q-1-data.qcow2"
    paths.quiesce.mkdir()  # a directory where the record goes: the write fails
    with pytest.raises(OSError):
        _save_and_place(paths, {"token": "q-1"}, [(spare, target)])
    assert not spare.exists() and not target.exists()

    paths.quiesce.rmdir()
    spare.write_bytes(b"qcow2")
    assert _save_and_place(paths, {"token": "q-1"}, [(spare, target)]) == {str(target)}
    assert (
        target.read_bytes() == b"qcow2" and json.loads(paths.quiesce.read_text())["token"] == "q-1"
    )
    # A spare gone before its rename: reported as not placed (the overlay is created).
    assert _save_and_place(paths, {"token": "q-2"}, [(spare, paths.overlays / "x.qcow2")]) == set()
