"""A disk served over NBD (as Element volumes will be): boot, overlay, commit."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmsnap_agent.qemu import DiskSpec, QemuHypervisor, QuiesceMethod

from .guestlib import make_ext4, qemu_io, read_at, sha256

pytestmark = pytest.mark.asyncio

OFFSET = 30 << 20
# The longest disk name the contract allows: QEMU ids get a shortened form.
LONG = "v" * 63


@pytest.fixture
def nbd_export(workdir: Path) -> Iterator[tuple[str, Path]]:
    """qemu-nbd serving a raw file on a unix socket; killed afterwards."""
    image = make_ext4(workdir / "nbd-vol.img")
    sock, pidfile = workdir / "nbd.sock", workdir / "nbd.pid"
    subprocess.run(
        [
            "qemu-nbd",
            "--fork",
            "--persistent",
            "--shared=4",
            f"--socket={sock}",
            "--export-name=vol42",
            "--format=raw",
            f"--pid-file={pidfile}",
            str(image),
        ],
        check=True,
        timeout=30,
    )
    try:
        yield f"nbd+unix:///vol42?socket={sock}", image
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGTERM)


# nbd_export before hv: fixtures are torn down in reverse, so the VM is stopped
# while its NBD server still answers (else QEMU's stop waits on the dead export).
async def test_overlay_over_nbd_disk(nbd_export: tuple[str, Path], hv: QemuHypervisor) -> None:
    url, image = nbd_export
    await hv.define_vm("nbd", 256, [DiskSpec(LONG, url, locator="element://c1/42")])
    await hv.start_vm("nbd")
    await hv.wait_guest_agent("nbd")
    async with hv.guest_agent("nbd") as ga:
        _, mounts, _ = await ga.exec_command("/bin/cat", ["/proc/mounts"])
    assert b"/dev/vda /mnt/vda ext4" in mounts  # the guest uses the NBD volume

    res = await hv.quiesce("nbd", QuiesceMethod.OVERLAY_GUEST, lease_seconds=120)
    assert res.stable_paths == (url,)
    before = sha256(image)
    # Past the file system's used blocks (mkfs of an empty 32 MiB volume), where
    # the write cannot hurt the mounted ext4.
    await qemu_io(hv, "nbd", LONG, f"write -P 0x42 {OFFSET} 4096")
    assert sha256(image) == before
    await hv.unquiesce(res.token)
    assert read_at(image, OFFSET, 4096) == b"\x42" * 4096
