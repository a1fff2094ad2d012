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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from tests.chaos.checks import Content
from tests.chaos.knobs import Knobs
from vmsnap_sdk import DriverClient, Volume
from vmsnap_sdk.errors import Aborted, TransientError

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
                await asyncio.to_thread(_pwrite, disk.path, offset, chunk)
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
                parts.append(await asyncio.to_thread(_pread, disk.path, offset, size))
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
