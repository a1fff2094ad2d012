"""Fixtures and helpers of the end-to-end tests on the real hypervisor.

The tests drive the host's public API only (``HostClient``); the helpers that
look at bytes (arrays' volumes and export files, the guest through qemu-ga,
``e2fsck``/``debugfs`` on images) only check what the API did.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.qemu_stack import MiB, QemuStack, StackOptions, make_ext4
from vmsnap_agent.qemu.errors import QemuAgentError
from vmsnap_agent.qemu.process import qemu_binary
from vmsnap_host.client import HostClient, Operation
from vmsnap_sdk import VM, Volume

DISK_SIZE = 32 * MiB


def start_stack(options: StackOptions) -> Iterator[QemuStack]:
    """A module's stack; afterwards nothing it started may be left (asserted)."""
    if qemu_binary() is None:
        pytest.skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
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


@dataclass
class Disks:
    element: str  # locator
    ontap: Path  # the image file in the ONTAP export
    local: Path  # a qcow2 image the hypervisor snapshots natively


def three_disks(stack: QemuStack, tag: str) -> Disks:
    """An ext4 Element volume, an ext4 file in an ONTAP volume, a local qcow2 file."""
    seed = make_ext4(stack.work / f"{tag}-seed.img", DISK_SIZE)
    element = stack.element_volume(f"{tag}-vda", DISK_SIZE, ext4_from=seed)
    seed.unlink()
    datastore = stack.ontap_volume(f"ds_{tag}".replace("-", "_"))
    (datastore / tag).mkdir()
    ontap = make_ext4(datastore / tag / "vdb.img", DISK_SIZE)
    return Disks(element, ontap, stack.work / f"{tag}-vdc.qcow2")


def vm_of(stack: QemuStack, vm_id: str, disks: Disks, *flags: str) -> VM:
    """The VM definition; ``flags`` (``vmsnap.writer=/dev/vda``, ...) ride in the name."""
    return VM(
        id=vm_id,
        name=" ".join((vm_id, *flags)),
        memory_mib=256,
        volumes=(
            Volume("vda", disks.element, DISK_SIZE),
            Volume("vdb", stack.ontap_locator(disks.ontap), DISK_SIZE),
            Volume("vdc", f"file://{disks.local}", DISK_SIZE, "qcow2"),
        ),
    )


async def done(host: HostClient, op: Operation, timeout: float = 120) -> Operation:
    finished = await host.wait(op.id, timeout=timeout)
    assert finished.done, f"operation {op.id} still running: {finished.step}"
    return finished


async def guest_sh(stack: QemuStack, vm_id: str, script: str, timeout: float = 30) -> str:
    """Run a shell script in the guest through qemu-ga; its stdout."""
    async with stack.probe().guest_agent(vm_id) as ga:
        code, out, err = await ga.exec_command("/bin/sh", ["-c", script], timeout=timeout)
    assert code == 0, f"{script!r} exited {code}: {err.decode(errors='replace')}"
    return out.decode(errors="replace")


async def wait_guest(stack: QemuStack, vm_id: str, timeout: float = 90) -> None:
    """Until qemu-ga answers (the guest booted)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                await guest_sh(stack, vm_id, "true")
                return
            except (QemuAgentError, OSError, AssertionError):
                pass
            await asyncio.sleep(0.3)


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
