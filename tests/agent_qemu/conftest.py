"""Fixtures for the QEMU backend tests: a real guest in real QEMU processes.

Needs (Debian): qemu-system-x86 qemu-utils busybox-static qemu-guest-agent kmod
cpio e2fsprogs, plus apt lists that know linux-image-cloud-amd64 (the guest
kernel is fetched with ``apt-get download`` into ~/.cache/vmsnap/guest, keyed by
package versions). Tests skip only when qemu-system-x86_64 is missing.

Every VM a test starts is force-stopped by the ``hv`` fixture's finalizer, with
SIGKILL of any QEMU pid still alive as a backstop, and the state dir (sockets,
overlays) is removed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.tools import require
from vmsnap_agent.qemu import GuestImage, QemuHypervisor, build_guest_image
from vmsnap_agent.qemu.agent import QemuAgent
from vmsnap_agent.qemu.locators import LocatorMap
from vmsnap_agent.qemu.process import VmPaths, running_pid
from vmsnap_sdk import AgentClient
from vmsnap_sdk.serve import start_agent_server


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    require("qemu-system-x86_64", "qemu-system-x86")
    return build_guest_image()


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short path under /tmp: QEMU's unix sockets live under it (108-byte limit).
    d = Path(tempfile.mkdtemp(prefix="vsq-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def kill_leftover_vms(state_dir: Path) -> None:
    for vm_dir in (state_dir / "vms").glob("*"):
        pid = running_pid(VmPaths.for_vm(state_dir, vm_dir.name))
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


@pytest_asyncio.fixture
async def hv(guest_image: GuestImage, workdir: Path) -> AsyncIterator[QemuHypervisor]:
    state = workdir / "state"
    hyp = QemuHypervisor(state, guest=guest_image, guest_sync_timeout=2.0)
    await hyp.open()
    try:
        yield hyp
    finally:
        # Close first: QMP serves one client, a second agent object would wait on it.
        await hyp.close()
        try:
            # A fresh object, as the test may have replaced (restarted) hyp.
            async with QemuHypervisor(state, guest=guest_image) as cleaner:
                for vm in await cleaner.list_vms():
                    if vm.quiesce_token:  # a test that failed while quiesced
                        await asyncio.wait_for(cleaner.unquiesce(vm.quiesce_token), 60)
                    await asyncio.wait_for(cleaner.stop_vm(vm.vm_id, force=True), 60)
        finally:
            kill_leftover_vms(state)


@pytest_asyncio.fixture
async def client(hv: QemuHypervisor, workdir: Path) -> AsyncIterator[AgentClient]:
    """The agent served over a unix socket, as the host calls it, and a client of it.
    element://c1/<n> volumes are files of one directory here (over NBD in real life)."""
    locators = LocatorMap.parse([f"element://c1/={workdir}/element/"])
    address = f"unix://{workdir}/agent.sock"
    server = await start_agent_server(QemuAgent(hv, "qemu-test", locators), address)
    agent = AgentClient.connect(address, timeout=60)
    try:
        yield agent
    finally:
        await agent.close()
        await server.stop(0)
