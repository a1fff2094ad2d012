"""``vmsnap-agent --hypervisor qemu`` as the host meets it: its own process, over a
unix socket, killed while a VM is frozen and restarted after the lease ran out."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.support.procs import Proc, wait_serving
from vmsnap_agent.qemu import GuestImage, QemuHypervisor
from vmsnap_sdk import VM, AgentClient, QuiesceMethod, VMState, Volume
from vmsnap_sdk.errors import FailedPrecondition

from .guestlib import make_ext4

pytestmark = pytest.mark.asyncio


def _agent(workdir: Path, log: str) -> tuple[Proc, str]:
    address = f"unix://{workdir}/agent.sock"
    proc = Proc(
        [
            sys.executable,
            "-m",
            "vmsnap_agent.cli",
            "--hypervisor",
            "qemu",
            "--listen",
            address,
            "--state",
            str(workdir / "state"),
            "--name",
            "qemu-test",
            "--guest-agent-timeout",
            "2",
            # The test's probe talks to qemu-ga beside the agent (one client at a time).
            "--guest-agent-idle-close",
            "1",
        ],
        workdir / log,
    )
    wait_serving(address)
    return proc, address


async def _freeze_status(hv: QemuHypervisor, vm_id: str) -> str:
    async with hv.guest_agent(vm_id) as ga:
        return str(await ga.execute("guest-fsfreeze-status"))


async def test_agent_killed_while_frozen(
    hv: QemuHypervisor, workdir: Path, guest_image: GuestImage
) -> None:
    del guest_image  # built (cached) before the agent process needs it
    await hv.close()  # the agent process owns the VM's sockets from here on
    make_ext4(workdir / "d.img")
    proc, address = _agent(workdir, "agent1.log")
    try:
        client = AgentClient.connect(address, timeout=60)
        vm = VM(id="vm-1", volumes=(Volume("d", f"file://{workdir}/d.img"),))
        await client.define_vm(vm)
        assert (await client.start_vm("vm-1")).state is VMState.RUNNING
        async with asyncio.timeout(60):
            while True:  # boot: the first freeze works once qemu-ga answers
                try:
                    # A lease long enough that CI's load cannot end it before the
                    # SIGKILL below (2 s did once: the agent thawed, as it should).
                    q = await client.quiesce("vm-1", QuiesceMethod.GUEST_FREEZE, 8, False, "")
                    break
                except FailedPrecondition:  # GUEST_AGENT_UNAVAILABLE while booting
                    await asyncio.sleep(0.5)
        await client.close()
    finally:
        proc.signal(signal.SIGKILL)  # no thaw on the way out
        proc.stop()

    # Nobody watches the lease now: the guest stays frozen past its end until an
    # agent is back.
    await asyncio.sleep(max(0.0, q.expire_time.timestamp() - time.time()) + 0.5)
    # Not opened: only to reach qemu-ga, closing its connection after each use.
    probe = QemuHypervisor(workdir / "state", guest_agent_idle_close=0)
    assert await _freeze_status(probe, "vm-1") == "frozen"

    proc, address = _agent(workdir, "agent2.log")
    try:
        client = AgentClient.connect(address, timeout=60)
        # The restarted agent resolved the expired lease before serving.
        assert await _freeze_status(probe, "vm-1") == "thawed"
        assert not (await client.unquiesce(q.token)).thawed_now
        assert (await client.stop_vm("vm-1", True)).state is VMState.STOPPED
        await client.close()
    finally:
        proc.stop()
