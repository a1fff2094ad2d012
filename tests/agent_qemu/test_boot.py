"""A real guest boots to an answering qemu-ga; stop leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsnap_agent.qemu import BootMode, DiskSpec, GuestAgentUnavailable, QemuHypervisor, VmState

from .guestlib import make_ext4

pytestmark = pytest.mark.asyncio


async def test_boot_to_guest_agent_and_stop(hv: QemuHypervisor, workdir: Path) -> None:
    disk = make_ext4(workdir / "a.img")
    await hv.define_vm("boot", 256, [DiskSpec("a", str(disk), locator="ontap://svm/vol/a.img")])
    info = await hv.start_vm("boot")
    assert info.state is VmState.RUNNING
    assert info.pid is not None
    await hv.wait_guest_agent("boot")

    async with hv.guest_agent("boot") as ga:
        assert "version" in await ga.execute("guest-info")
        # The init script mounted the ext4 disk.
        code, out, _ = await ga.exec_command("/bin/cat", ["/proc/mounts"])
        assert code == 0
        assert b"/dev/vda /mnt/vda ext4" in out

    described = await hv.describe_vm("boot")
    assert [(d.name, d.locator, d.active_path) for d in described.disks] == [
        ("a", "ontap://svm/vol/a.img", str(disk))
    ]
    assert [v.vm_id for v in await hv.list_vms()] == ["boot"]

    stopped = await hv.stop_vm("boot")  # graceful: guest-shutdown through qemu-ga
    assert stopped.state is VmState.STOPPED
    assert stopped.pid is None
    leftovers = {p.name for p in (workdir / "state" / "vms" / "boot").iterdir()}
    assert "qemu.pid" not in leftovers
    assert not list((workdir / "state" / "run").iterdir())  # no socket left


async def test_define_is_idempotent(hv: QemuHypervisor, workdir: Path) -> None:
    from vmsnap_agent.qemu import VmAlreadyExists

    disks = [DiskSpec("a", str(workdir / "a.img"))]
    await hv.define_vm("d1", 128, disks)
    await hv.define_vm("d1", 128, disks)
    with pytest.raises(VmAlreadyExists):
        await hv.define_vm("d1", 256, disks)
    await hv.undefine_vm("d1")
    assert await hv.list_vms() == []


async def test_boot_from_disk(hv: QemuHypervisor, workdir: Path) -> None:
    """A real VM boots its first disk: firmware only, no test guest (here: nothing
    bootable, so SeaBIOS waits; the process and QMP are what is checked)."""
    disk = make_ext4(workdir / "root.img")
    await hv.define_vm("fw", 128, [DiskSpec("root", str(disk))], boot=BootMode.DISK)
    info = await hv.start_vm("fw")
    assert info.state is VmState.RUNNING
    status = await hv.qmp("fw").execute("query-status")
    assert status["running"] is True
    with pytest.raises(GuestAgentUnavailable):
        async with hv.guest_agent("fw", sync_timeout=0.5):
            pass
    assert (await hv.stop_vm("fw", force=True)).state is VmState.STOPPED
