"""While the VM is frozen: writes during an overlay freeze, and the host and agent killed.

The ONTAP emulator delays its jobs here, which stretches each take (and so the
freeze window) to a few seconds: long enough to act while the VM is frozen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.support.qemu_stack import MiB, QemuStack, StackOptions, fsck, read_ext4_file_bytes
from vmsnap_agent.qemu.process import VmPaths
from vmsnap_host.client import HostClient, QuiescePolicy, VMSnapshotState

from .conftest import (
    counter,
    done,
    guest_sh,
    poll,
    start_stack,
    three_disks,
    vm_of,
    wait_counter,
    wait_guest,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(300)]

LEASE = 10.0


@pytest.fixture(scope="module")
def stack() -> Iterator[QemuStack]:
    yield from start_stack(StackOptions(lease_seconds=LEASE, ontap_job_delay=2.0))


def _overlays(stack: QemuStack, vm_id: str) -> list[str]:
    return sorted(p.name for p in VmPaths.for_vm(stack.agent_state, vm_id).overlays.glob("*"))


async def _frozen(stack: QemuStack, vm_id: str) -> str:
    """Wait until the agent holds a quiesce with its overlays in place; its token."""
    await poll(lambda: bool(stack.frozen_token(vm_id) and _overlays(stack, vm_id)), 30)
    token = stack.frozen_token(vm_id)
    assert token is not None
    return token


async def test_overlay_writes_survive_commit_then_killed_while_frozen(
    stack: QemuStack, host: HostClient
) -> None:
    disks = three_disks(stack, "fz")
    await host.define_vm(vm_of(stack, "fz", disks, "vmsnap.writer=/dev/vda"))
    await host.start_vm("fz")
    try:
        await wait_guest(stack, "fz")
        await wait_counter(stack, "fz", 0)

        # --- bytes written during an overlay freeze: in the overlay, then committed ---------
        op = await host.create_vm_snapshot("fz", "overlay", quiesce=QuiescePolicy.OFF)
        token = await _frozen(stack, "fz")
        before = overlay_bytes(stack, "fz")
        # Through the guest's file system and QEMU's block layer (sync): into the overlays.
        await guest_sh(stack, "fz", f"yes during | head -c {MiB} > /mnt/vda/during && sync")
        assert stack.frozen_token("fz") == token, "the freeze ended before the write"
        assert overlay_bytes(stack, "fz") >= before + MiB  # the MiB went there
        op = await done(host, op)
        assert op.succeeded, op.error
        assert not _overlays(stack, "fz") and stack.frozen_token("fz") is None
        snap = await host.get_vm_snapshot(op.vm_snapshot_id)
        assert snap.freeze_seconds is not None and snap.freeze_seconds >= 0.5, snap
        print(f"freeze window with slow ONTAP jobs: {snap.freeze_seconds:.2f} s")

        # --- host and agent SIGKILLed while the VM is frozen ------------------------------
        killed = await host.create_vm_snapshot("fz", "killed", quiesce=QuiescePolicy.REQUIRED)
        token = await _frozen(stack, "fz")
        stack.kill("host")
        stack.kill("agent")
        killed_at = time.monotonic()
        frozen_overlays = _overlays(stack, "fz")
        # Nobody watches the lease now: the overlays stay until an agent is back.
        await asyncio.sleep(LEASE + 1)
        assert stack.frozen_token("fz") == token and _overlays(stack, "fz") == frozen_overlays

        stack.start_agent()  # resolves the expired lease before it serves
        assert stack.frozen_token("fz") is None and not _overlays(stack, "fz")
        assert time.monotonic() - killed_at >= LEASE
        async with stack.probe().guest_agent("fz") as ga:
            assert await ga.execute("guest-fsfreeze-status") == "thawed"
        n = await counter(stack, "fz")
        await wait_counter(stack, "fz", n)  # the guest writes again

        stack.start_host()  # recovery: the interrupted take is rolled back
        killed_op = await done(host, killed, timeout=60)
        assert killed_op.error is not None, killed_op
        failed = await host.get_vm_snapshot(killed.vm_snapshot_id)
        assert failed.state is VMSnapshotState.ERROR, failed
        # Nothing of it stayed on the arrays: Element keeps only the first take's group.
        groups = stack.element_rpc("ListGroupSnapshots", {})["groupSnapshots"]
        assert len(groups) == 1, groups
    finally:
        await host.stop_vm("fz")

    # Data consistent: both array disks clean; the write made during the freeze is there.
    image = stack.element_image(disks.element, stack.work / "fz-vda.img")
    clean, report = fsck(image)
    assert clean, report
    assert read_ext4_file_bytes(image, "during") == (b"during\n" * MiB)[:MiB]
    clean, report = fsck(disks.ontap)
    assert clean, report

    # The first snapshot was cut before that write: reverting to it drops the file.
    op = await done(host, await host.revert_vm_snapshot(snap.id))
    assert op.succeeded, op.error
    image = stack.element_image(disks.element, stack.work / "fz-reverted.img")
    assert fsck(image)[0]
    assert read_ext4_file_bytes(image, "during") == b""


def overlay_bytes(stack: QemuStack, vm_id: str) -> int:
    """Bytes allocated in the VM's overlays (they grow with the writes they take)."""
    overlays = VmPaths.for_vm(stack.agent_state, vm_id).overlays
    return sum(p.stat().st_blocks * 512 for p in overlays.glob("*"))
