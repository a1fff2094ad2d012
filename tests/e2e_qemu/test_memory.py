"""A memory snapshot of a guest whose disks live on both emulated arrays and a local
qcow2, through the host's public API: the VM is paused with its RAM saved to a file
while the drivers cut their disks; revert brings back every disk and the RAM (a
counter kept only in the guest's RAM), the VM RUNNING. Fails on main: the host
refused such a snapshot (FAILED_PRECONDITION, "hypervisor-only").
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support import ram_counter
from tests.support.qemu_stack import QemuStack, read_ext4_file
from vmsnap_host.client import HostClient, VMSnapshotState
from vmsnap_sdk import Consistency, VMState

from .conftest import done, guest_sh, three_disks, vm_of, wait_guest

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(300)]

LOCAL_OFFSET = 16 << 20


@pytest.fixture(scope="module")
def stack(lease30_stack: QemuStack) -> QemuStack:
    return lease30_stack


async def _counter(stack: QemuStack, vm_id: str) -> int:
    value = ram_counter.parse(await guest_sh(stack, vm_id, ram_counter.READ))
    assert value is not None, "the RAM counter is gone: the guest rebooted"
    return value


async def _mark(stack: QemuStack, vm_id: str, word: str) -> None:
    """The same word on all three disks (synced) and in RAM only (/run is a tmpfs)."""
    await guest_sh(
        stack,
        vm_id,
        f"echo {word} > /mnt/vda/marker && echo {word} > /mnt/vdb/marker && "
        f"printf '%-12s' {word} | dd of=/dev/vdc bs=512 seek={LOCAL_OFFSET // 512} "
        f"conv=notrunc 2>/dev/null && sync && echo {word} > /run/ram-marker",
    )


def _size(path: Path) -> int:
    """The file's size, -1 when it does not exist."""
    return path.stat().st_size if path.exists() else -1


def _local_bytes(stack: QemuStack, image: Path) -> bytes:
    raw = stack.work / f"local-{uuid.uuid4().hex[:6]}.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(raw)],
        check=True,
        timeout=60,
    )
    with open(raw, "rb") as f:
        f.seek(LOCAL_OFFSET)
        data = f.read(12)
    raw.unlink()
    return data


async def test_memory_snapshot_with_array_disks_round_trip(
    stack: QemuStack, host: HostClient
) -> None:
    disks = three_disks(stack, "ram")
    await host.define_vm(vm_of(stack, "ram", disks))
    await host.start_vm("ram")
    try:
        await wait_guest(stack, "ram")
        await guest_sh(stack, "ram", ram_counter.START)
        await _mark(stack, "ram", "before")
        low = await _counter(stack, "ram")

        op = await done(host, await host.create_vm_snapshot("ram", "with-ram", include_memory=True))
        assert op.succeeded, op.error
        high = await _counter(stack, "ram")
        snap = await host.get_vm_snapshot(op.vm_snapshot_id)
        assert snap.state is VMSnapshotState.READY and snap.include_memory, snap
        kinds = sorted((g.kind.name, g.disks) for g in snap.groups)
        assert kinds == [("DRIVER", ("vda",)), ("DRIVER", ("vdb",)), ("HYPERVISOR", ("vdc",))]
        assert snap.consistency is Consistency.APPLICATION, snap
        # The pause window, and the saved state recorded with the snapshot.
        assert snap.freeze_seconds is not None and 0 < snap.freeze_seconds < 30, snap
        assert snap.memory_state_bytes > 0, snap
        state_file = Path(snap.memory_state_location.removeprefix("file://"))
        assert _size(state_file) == snap.memory_state_bytes
        print(
            f"memory snapshot: paused {snap.freeze_seconds * 1000:.0f} ms, "
            f"state {snap.memory_state_bytes / (1 << 20):.1f} MiB"
        )

        # Change everything: the three disks, the RAM marker, the counter runs on.
        await _mark(stack, "ram", "after")
        later = await _counter(stack, "ram")
        # Far ahead (5 s of counting): the read after the revert, however slow on a
        # loaded machine, still finds the restored count below it.
        while later < high + 100:
            await asyncio.sleep(0.5)
            later = await _counter(stack, "ram")

        op = await done(host, await host.revert_vm_snapshot(snap.id))
        assert op.succeeded, op.error
        assert (await host.get_vm("ram")).state is VMState.RUNNING
        back = await _counter(stack, "ram")
        # From the saved RAM: not from zero (a reboot), not from "later" (no revert).
        assert low <= back < later, (low, high, back, later)
        assert (await guest_sh(stack, "ram", "cat /run/ram-marker")).strip() == "before"
        assert (await guest_sh(stack, "ram", "cat /mnt/vdb/marker")).strip() == "before"

        # The disks themselves, off the guest: each array's bytes and the local image.
        await host.stop_vm("ram", force=True)
        element = stack.element_image(disks.element, stack.work / "ram-vda.img")
        assert read_ext4_file(element, "marker") == "before\n"
        assert read_ext4_file(disks.ontap, "marker") == "before\n"
        assert _local_bytes(stack, disks.local).strip() == b"before"

        # Deleting the snapshot deletes its state file (nothing left behind).
        op = await done(host, await host.delete_vm_snapshot(snap.id))
        assert op.succeeded, op.error
        assert _size(state_file) < 0
    finally:
        await host.stop_vm("ram", force=True)
