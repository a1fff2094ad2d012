"""Helpers shared by the QEMU backend tests (disk images, console, qemu-io)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from vmsnap_agent.qemu import QemuHypervisor
from vmsnap_agent.qemu.process import device_id


def make_ext4(path: Path, size_mib: int = 32) -> Path:
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True)
    return path


def make_raw(path: Path, size_mib: int = 8) -> Path:
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    return path


def make_qcow2(path: Path, size_mib: int = 64) -> Path:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_mib}M"], check=True
    )
    return path


def qemu_img_info(path: Path) -> dict[str, Any]:
    """``qemu-img info`` of an image (``-U``: QEMU may hold it open)."""
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    info: dict[str, Any] = json.loads(out)
    return info


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


async def wait_console(hv: QemuHypervisor, vm_id: str, text: str, timeout: float = 60) -> None:
    """Wait for a line of the guest's serial console (for guests without qemu-ga)."""
    console = hv.console_path(vm_id)

    async def printed() -> bool:
        return console.exists() and text in console.read_text(errors="replace")

    await wait_until(printed, timeout, 0.2)


async def qemu_io(hv: QemuHypervisor, vm_id: str, disk: str, command: str) -> None:
    """Write through the device's BlockBackend, i.e. into whatever is its top image now."""
    out = await hv.qmp(vm_id).execute(
        "human-monitor-command",
        {"command-line": f'qemu-io -d {device_id(disk)}/virtio-backend "{command}"'},
    )
    assert not out, out


def read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def fsck_clean(image: Path) -> tuple[bool, str]:
    """e2fsck -fn (read-only): is the ext4 image consistent without journal replay?"""
    proc = subprocess.run(
        ["e2fsck", "-fn", str(image)], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0, proc.stdout + proc.stderr


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 60, interval: float = 0.1
) -> None:
    """Poll an async predicate until it holds; TimeoutError after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            if await predicate():
                return
            await asyncio.sleep(interval)
