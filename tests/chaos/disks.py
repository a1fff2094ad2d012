"""The VMs' disks: made, written and read as a guest would, outside the host.

Array disks are test volumes made through each reference driver's
ConformanceFixture (``create_test_volume``, ``write_volume``, ``read_volume``),
so the bytes go to the emulators and come back from them, never through the
host. The local ``file:///PATH`` disk is checkable only when the sim agent keeps
its bytes, at ``<agent state>/disks/PATH``: the harness writes and reads that
file when it exists, and reports the local disk "not checkable" otherwise.

A disk's content is the bytes of two regions (offset 0 and the middle), each
given a fresh random pattern before every take.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from tests.chaos.checks import Content
from tests.chaos.knobs import Knobs
from vmsnap_sdk import DriverClient, Volume
from vmsnap_sdk.errors import Aborted, TransientError, Unavailable

LOCAL_PREFIX = "file:///"

_T = TypeVar("_T")


@dataclass(frozen=True)
class Disk:
    name: str
    locator: str
    #: "element", "ontap" or "local".
    kind: str
    #: The stack component of the driver that holds it (array disks).
    driver: str = ""
    #: The file holding its bytes (local disk), when the agent keeps one.
    path: Path | None = None
    #: "raw" (the sim agent's file) or "qcow2" (the QEMU agent's image, via qemu-io).
    image: str = "raw"

    def volume(self, size: int) -> Volume:
        if self.kind == "local":
            return Volume(self.name, self.locator, size, "qcow2")
        return Volume(self.name, self.locator, size)


def local_path(agent_state: Path, locator: str) -> Path:
    """Where the sim agent keeps a ``file:///PATH`` disk's bytes (its ``disk_path``)."""
    from vmsnap_agent import sim

    found = getattr(sim, "disk_path", None)
    if found is not None:
        path = found(agent_state, locator)
        assert isinstance(path, Path)
        return path
    return agent_state / "disks" / locator.removeprefix(LOCAL_PREFIX)


class DiskIO:
    """Writes and reads the disks, retrying while a driver or an emulator is down."""

    def __init__(self, drivers: dict[str, str], knobs: Knobs) -> None:
        self.knobs = knobs
        self.clients = {
            name: DriverClient.connect(address, timeout=knobs.io_timeout)
            for name, address in drivers.items()
        }

    def offsets(self) -> tuple[int, int]:
        return (0, self.knobs.disk_bytes // 2)

    async def create(self, driver: str, name: str) -> str:
        client = self.clients[driver]
        volume = await self._retry(partial(client.create_test_volume, name, self.knobs.disk_bytes))
        return volume.locator

    async def write(self, disk: Disk, content: Content) -> None:
        """Write both regions; raises when the driver stays unreachable past the patience."""
        size = self.knobs.pattern_bytes
        for i, offset in enumerate(self.offsets()):
            chunk = content[i * size : (i + 1) * size]
            if disk.kind == "local":
                assert disk.path is not None
                write = _qcow2_write if disk.image == "qcow2" else _pwrite
                await asyncio.to_thread(write, disk.path, offset, chunk)
            else:
                client = self.clients[disk.driver]
                await self._retry(partial(client.write_volume, disk.locator, offset, chunk))

    async def read(self, disk: Disk) -> Content | None:
        """Both regions, or None when the disk is not checkable (a local disk without file)."""
        size = self.knobs.pattern_bytes
        parts = []
        for offset in self.offsets():
            if disk.kind == "local":
                if disk.path is None or not disk.path.exists():
                    return None
                read = _qcow2_read if disk.image == "qcow2" else _pread
                parts.append(await asyncio.to_thread(read, disk.path, offset, size))
            else:
                client = self.clients[disk.driver]
                parts.append(
                    await self._retry(partial(client.read_volume, disk.locator, offset, size))
                )
        return b"".join(parts)

    async def _retry(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """Retry while the driver or its emulator is down (UNAVAILABLE and the like)."""
        deadline = time.monotonic() + self.knobs.io_patience
        while True:
            try:
                return await call()
            except (TransientError, Aborted):
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.3)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


def _pwrite(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _pread(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset).ljust(length, b"\0")
    finally:
        os.close(fd)


# The QEMU agent's local disks are qcow2 images holding its native snapshots: they
# are written and read with qemu-io, never rewritten whole. Only while the VM is
# stopped and no operation runs on it (nothing else has the image open).
QEMU_IO_TIMEOUT = 30.0


def _qcow2_write(path: Path, offset: int, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(prefix="chaos-", suffix=".bin") as source:
        source.write(data)
        source.flush()
        _qemu_io(path, f"write -q -s {source.name} {offset} {len(data)}")


def _qcow2_read(path: Path, offset: int, length: int) -> bytes:
    dump = _qemu_io(path, f"read -v {offset} {length}", share=True)
    found = bytearray()
    for line in dump.splitlines():
        head, sep, rest = line.partition(":")
        if not sep or not all(c in "0123456789abcdef" for c in head.strip()):
            continue
        found += bytes(int(h, 16) for h in rest[:50].split())
    return bytes(found[:length])


def _qemu_io(path: Path, command: str, *, share: bool = False) -> str:
    result = subprocess.run(
        ["qemu-io", *(["-r", "-U"] if share else []), "-f", "qcow2", "-c", command, str(path)],
        capture_output=True,
        text=True,
        timeout=QEMU_IO_TIMEOUT,
        check=False,
    )
    if result.returncode != 0 or "error" in result.stderr.lower():
        raise Unavailable(f"qemu-io {command} on {path}: {result.stderr.strip()[:300]}")
    return result.stdout
