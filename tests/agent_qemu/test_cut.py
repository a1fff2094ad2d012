"""A disk-only native snapshot asked for during an overlay quiesce adopts the quiesce's cut.

That is what the host does with a plan spanning arrays and a local qcow2 disk:
quiesce (overlays on every disk), then in parallel the drivers' takes and the
native snapshot of the local disk. Under an overlay the base is no root node any
more, so QEMU cannot snapshot it; the agent cut it in the overlay transaction.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from vmsnap_agent.qemu import (
    Consistency,
    DiskFormat,
    DiskSpec,
    GuestImage,
    QemuHypervisor,
    QuiesceMethod,
    SnapshotConflict,
    VmFrozen,
)
from vmsnap_agent.qemu import quiesce as quiesce_module
from vmsnap_agent.qemu.process import VmPaths

from .guestlib import make_qcow2, make_raw, qemu_io, read_at

pytestmark = pytest.mark.asyncio

OFFSET = 8 << 20


def _qcow2_bytes(path: Path, workdir: Path) -> bytes:
    """4 KiB at OFFSET of a qcow2 image's active layer (-U: QEMU may still hold it)."""
    raw = workdir / "check.raw"
    subprocess.run(
        ["qemu-img", "convert", "-U", "-O", "raw", str(path), str(raw)], check=True, timeout=60
    )
    data = read_at(raw, OFFSET, 4096)
    raw.unlink()
    return data


async def test_native_snapshot_during_overlay_quiesce_is_the_cut(
    hv: QemuHypervisor, workdir: Path
) -> None:
    local = make_qcow2(workdir / "local.qcow2")
    array = make_raw(workdir / "array.img")
    await hv.define_vm(
        "cut",
        256,
        [
            DiskSpec("vda", str(array)),
            DiskSpec("vdb", str(local), format=DiskFormat.QCOW2),
        ],
    )
    await hv.start_vm("cut")
    await qemu_io(hv, "cut", "vdb", f"write -P 0x11 {OFFSET} 4096")

    res = await hv.quiesce("cut", QuiesceMethod.OVERLAY, lease_seconds=60)
    # After the cut, a write lands in the overlay, not in the snapshot.
    await qemu_io(hv, "cut", "vdb", f"write -P 0x22 {OFFSET} 4096")
    with pytest.raises(VmFrozen):  # memory, or disks that were not cut: refused
        await hv.take_native_snapshot("cut", "m", include_memory=True)
    snap = await hv.take_native_snapshot("cut", "s1", ["vdb"])
    assert snap.snapshot_id == "s1" and snap.disks == ("vdb",)
    assert await hv.take_native_snapshot("cut", "s1", ["vdb"]) == snap  # idempotent
    with pytest.raises(SnapshotConflict):  # one cut, one snapshot
        await hv.take_native_snapshot("cut", "s2", ["vdb"])
    await hv.unquiesce(res.token)

    assert [s.snapshot_id for s in await hv.list_native_snapshots("cut")] == ["s1"]
    await hv.stop_vm("cut", force=True)
    assert _qcow2_bytes(local, workdir) == b"\x22" * 4096  # the commit kept the write
    await hv.revert_native_snapshot("cut", "s1")
    assert _qcow2_bytes(local, workdir) == b"\x11" * 4096  # the cut's bytes
    await hv.delete_native_snapshot("cut", "s1")
    assert await hv.list_native_snapshots("cut") == []


async def test_unadopted_cut_is_dropped(hv: QemuHypervisor, workdir: Path) -> None:
    local = make_qcow2(workdir / "local.qcow2")
    await hv.define_vm("drop", 256, [DiskSpec("vdb", str(local), format=DiskFormat.QCOW2)])
    await hv.start_vm("drop")
    res = await hv.quiesce("drop", QuiesceMethod.OVERLAY, lease_seconds=60)
    await hv.unquiesce(res.token)
    graph = await hv.qmp("drop").execute("query-named-block-nodes", {"flat": True})
    tags = [s["name"] for n in graph for s in n.get("image", {}).get("snapshots", [])]
    assert tags == []

    # An adoption whose alias is durable (its commit point) keeps the cut, even when
    # the agent died before anything else was written: the snapshot it answered, or
    # would answer on a retry, must not lose its data at unquiesce. (Before issue 16
    # the quiesce record's adopted_by, written after the alias, decided: dropped.)
    res = await hv.quiesce("drop", QuiesceMethod.OVERLAY, lease_seconds=60)
    paths = VmPaths.for_vm((workdir / "state").resolve(), "drop")
    cut_tag = json.loads(paths.quiesce.read_text())["cut_tag"]
    (paths.root / "native-aliases.json").write_text(json.dumps({"s9": cut_tag}))
    await hv.unquiesce(res.token)
    assert [s.snapshot_id for s in await hv.list_native_snapshots("drop")] == ["s9"]
    await hv.stop_vm("drop", force=True)


async def test_a_freeze_with_no_native_snapshot_makes_no_cut(
    hv: QemuHypervisor, workdir: Path
) -> None:
    """QuiesceRequest.no_native_snapshot (an array-only plan): no internal snapshot of
    the local disk inside the freeze, none to drop after it, and a native snapshot
    asked under that freeze is refused with what to do instead."""
    local = make_qcow2(workdir / "local.qcow2")
    await hv.define_vm("nocut", 256, [DiskSpec("vdb", str(local), format=DiskFormat.QCOW2)])
    await hv.start_vm("nocut")
    res = await hv.quiesce("nocut", QuiesceMethod.OVERLAY, lease_seconds=60, cut=False)
    graph = await hv.qmp("nocut").execute("query-named-block-nodes", {"flat": True})
    assert [s["name"] for n in graph for s in n.get("image", {}).get("snapshots", [])] == []
    with pytest.raises(VmFrozen, match="no_native_snapshot"):
        await hv.take_native_snapshot("nocut", "s1", ["vdb"])
    await hv.unquiesce(res.token)
    assert await hv.list_native_snapshots("nocut") == []
    # The default still cuts, so a take under the freeze adopts it.
    res = await hv.quiesce("nocut", QuiesceMethod.OVERLAY, lease_seconds=60)
    assert (await hv.take_native_snapshot("nocut", "s2", ["vdb"])).disks == ("vdb",)
    await hv.unquiesce(res.token)
    assert [s.snapshot_id for s in await hv.list_native_snapshots("nocut")] == ["s2"]
    await hv.stop_vm("nocut", force=True)


async def test_guest_cut_freezes_the_guest_for_the_cut_alone(
    hv: QemuHypervisor, workdir: Path
) -> None:
    """``guest+cut`` (a plan that is a native snapshot alone): freeze, cut, thaw at
    once; no overlay, so nothing to commit; the native snapshot adopts the cut."""
    local = make_qcow2(workdir / "local.qcow2")
    await hv.define_vm("gc", 256, [DiskSpec("vdb", str(local), format=DiskFormat.QCOW2)])
    await hv.start_vm("gc")
    await hv.wait_guest_agent("gc")
    await qemu_io(hv, "gc", "vdb", f"write -P 0x11 {OFFSET} 4096")

    res = await hv.quiesce("gc", QuiesceMethod.GUEST_CUT, lease_seconds=60)
    assert res.consistency in (Consistency.FILESYSTEM, Consistency.APPLICATION)
    async with hv.guest_agent("gc") as ga:  # thawed as soon as the cut was made
        assert await ga.execute("guest-fsfreeze-status") == "thawed"
    info = await hv.describe_vm("gc")
    assert [d.active_path for d in info.disks] == [str(local)]  # no overlay
    await qemu_io(hv, "gc", "vdb", f"write -P 0x22 {OFFSET} 4096")  # into the disk itself
    with pytest.raises(VmFrozen):  # only the cut can be taken meanwhile
        await hv.take_native_snapshot("gc", "m", include_memory=True)
    snap = await hv.take_native_snapshot("gc", "s1", ["vdb"])
    assert snap.disks == ("vdb",)
    await hv.unquiesce(res.token)
    assert [s.snapshot_id for s in await hv.list_native_snapshots("gc")] == ["s1"]

    await hv.stop_vm("gc", force=True)
    assert _qcow2_bytes(local, workdir) == b"\x22" * 4096
    await hv.revert_native_snapshot("gc", "s1")
    assert _qcow2_bytes(local, workdir) == b"\x11" * 4096  # the cut's bytes


async def test_a_native_snapshot_asked_for_with_the_quiesce_is_its_cut_in_one_call(
    hv: QemuHypervisor, workdir: Path
) -> None:
    """QuiesceRequest.native_snapshot with guest+cut: the cut is adopted as the
    snapshot in the Quiesce, which then ends at once (released: guest thawed, no
    record left, nothing to unquiesce); the snapshot holds the cut's bytes and
    restores them. A retry of the operation's Quiesce answers the same snapshot and
    leaves no second cut behind."""
    local = make_qcow2(workdir / "local.qcow2")
    await hv.define_vm("one", 256, [DiskSpec("vdb", str(local), format=DiskFormat.QCOW2)])
    await hv.start_vm("one")
    await hv.wait_guest_agent("one")
    await qemu_io(hv, "one", "vdb", f"write -P 0x11 {OFFSET} 4096")

    res = await hv.quiesce(
        "one", QuiesceMethod.GUEST_CUT, 60, "op-1", native_snapshot=("s1", ["vdb"])
    )
    assert res.released and res.native is not None
    assert res.native.snapshot_id == "s1" and res.native.disks == ("vdb",)
    assert res.consistency in (Consistency.FILESYSTEM, Consistency.APPLICATION)
    assert hv.list_quiesces("one") == []  # nothing held
    async with hv.guest_agent("one") as ga:
        assert await ga.execute("guest-fsfreeze-status") == "thawed"
    assert (await hv.unquiesce(res.token)) is None  # an Unquiesce finds nothing to do
    assert [s.snapshot_id for s in await hv.list_native_snapshots("one")] == ["s1"]

    again = await hv.quiesce(
        "one", QuiesceMethod.GUEST_CUT, 60, "op-1", native_snapshot=("s1", ["vdb"])
    )
    assert again.released and again.native is not None and again.native.snapshot_id == "s1"
    graph = await hv.qmp("one").execute("query-named-block-nodes", {"flat": True})
    tags = {s["name"] for n in graph for s in n.get("image", {}).get("snapshots", [])}
    assert len(tags) == 1  # the retry's own cut was dropped

    # Disks it cannot cut at the freeze (none named vdz): answered without a
    # snapshot and held as usual, so the caller's TakeNativeSnapshot reports why.
    held = await hv.quiesce("one", QuiesceMethod.GUEST_CUT, 60, native_snapshot=("s2", ["vdz"]))
    assert held.native is None and not held.released
    assert [q.token for q in hv.list_quiesces("one")] == [held.token]
    await hv.unquiesce(held.token)
    assert [s.snapshot_id for s in await hv.list_native_snapshots("one")] == ["s1"]

    await qemu_io(hv, "one", "vdb", f"write -P 0x22 {OFFSET} 4096")
    await hv.stop_vm("one", force=True)
    await hv.revert_native_snapshot("one", "s1")
    assert _qcow2_bytes(local, workdir) == b"\x11" * 4096  # the cut's bytes


async def test_an_agent_killed_after_the_adoption_keeps_the_snapshot(
    hv: QemuHypervisor, workdir: Path, guest_image: GuestImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent dies in a released guest+cut Quiesce after the cut's adoption (its
    commit point) and before the record's removal, whose end was never saved (the
    record says "maybe frozen"). The restarted agent ends the quiesce when its
    lease is over (a thaw of a thawed guest is harmless) and keeps the adopted
    cut: the snapshot the host was about to be told of is there, nothing else."""
    local = make_qcow2(workdir / "local.qcow2")
    await hv.define_vm("dies", 256, [DiskSpec("vdb", str(local), format=DiskFormat.QCOW2)])
    await hv.start_vm("dies")
    await hv.wait_guest_agent("dies")
    await qemu_io(hv, "dies", "vdb", f"write -P 0x33 {OFFSET} 4096")

    class Killed(Exception):
        pass

    async def dies(*args: object) -> None:
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(quiesce_module, "unquiesce", dies)
        with pytest.raises(Killed):
            await hv.quiesce(
                "dies", QuiesceMethod.GUEST_CUT, 1, "op-9", native_snapshot=("s1", ["vdb"])
            )
    (left,) = hv.list_quiesces("dies")
    assert left.consistency is Consistency.CRASH  # its end unsaved: never more than reached
    await hv.close()  # the agent process is gone; QEMU runs on
    await asyncio.sleep(1.5)  # past the lease, nobody watching

    async with QemuHypervisor(workdir / "state", guest=guest_image) as again:
        assert again.list_quiesces("dies") == []  # open() ended the expired quiesce
        assert [s.snapshot_id for s in await again.list_native_snapshots("dies")] == ["s1"]
        async with again.guest_agent("dies") as ga:
            assert await ga.execute("guest-fsfreeze-status") == "thawed"
        graph = await again.qmp("dies").execute("query-named-block-nodes", {"flat": True})
        tags = {s["name"] for n in graph for s in n.get("image", {}).get("snapshots", [])}
        assert len(tags) == 1  # the adopted cut alone
        await qemu_io(again, "dies", "vdb", f"write -P 0x44 {OFFSET} 4096")
        await again.stop_vm("dies", force=True)
        await again.revert_native_snapshot("dies", "s1")
        assert _qcow2_bytes(local, workdir) == b"\x33" * 4096
