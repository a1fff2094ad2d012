"""Fixtures and helpers of the end-to-end tests on the real hypervisor.

The tests drive the host's public API only (``HostClient``); the helpers that
look at bytes (arrays' volumes and export files, the guest through qemu-ga,
``e2fsck``/``debugfs`` on images) only check what the API did.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.qemu_stack import (
    DISK_SIZE,
    Disks,
    QemuStack,
    StackOptions,
    guest_sh,
    three_disks,
    vm_of,
    wait_guest,
)
from tests.support.tools import require
from vmsnap_host.client import HostClient, Operation

__all__ = ["DISK_SIZE", "Disks", "guest_sh", "three_disks", "vm_of", "wait_guest"]


def start_stack(options: StackOptions) -> Iterator[QemuStack]:
    """A module's stack; afterwards nothing it started may be left (asserted)."""
    require("qemu-system-x86_64", "qemu-system-x86")
    stack = QemuStack(options=options)
    work = stack.work
    stack.start()
    try:
        yield stack
        assert not stack.leftovers(), stack.leftovers()
    finally:
        stack.stop()
        assert not processes_under(work), processes_under(work)
        assert not work.exists()


@pytest.fixture(scope="package")
def lease30_stack() -> Iterator[QemuStack]:
    """One stack with a 30 s lease for every module that needs no other options
    (test_round_trips, test_memory): a stack start costs seconds of boot-free
    set-up. Their tests use VM ids and file names of their own, and the stack is
    checked for leftovers when the last of them is done."""
    yield from start_stack(StackOptions(lease_seconds=30))


def processes_under(work: Path) -> list[str]:
    """Live processes whose command line names the stack's work dir (QEMU, NBD, ...)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except (OSError, IndexError):
            continue
        if str(work) in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


@pytest_asyncio.fixture
async def host(stack: QemuStack) -> AsyncIterator[HostClient]:
    client = HostClient.connect(stack.host_address, timeout=60)
    try:
        yield client
    finally:
        await client.close()


async def done(host: HostClient, op: Operation, timeout: float = 120) -> Operation:
    finished = await host.wait(op.id, timeout=timeout)
    assert finished.done, f"operation {op.id} still running: {finished.step}"
    return finished


async def poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if predicate():
                return
            await asyncio.sleep(interval)


async def wait_console(stack: QemuStack, vm_id: str, text: str, timeout: float = 90) -> None:
    console = stack.probe().console_path(vm_id)
    await poll(lambda: console.exists() and text in console.read_text(errors="replace"), timeout)


async def counter(stack: QemuStack, vm_id: str, disk: str = "vda") -> int:
    """The guest writer's counter as the guest sees it now."""
    text = await guest_sh(stack, vm_id, f"cat /mnt/{disk}/counter 2>/dev/null || echo 0")
    return int(text.strip() or 0)


async def wait_counter(stack: QemuStack, vm_id: str, above: int, timeout: float = 30) -> int:
    async with asyncio.timeout(timeout):
        while True:
            n = await counter(stack, vm_id)
            if n > above:
                return n
            await asyncio.sleep(0.2)
