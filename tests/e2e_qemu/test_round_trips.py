"""Data round trips through the host's public API on a real QEMU guest.

One VM with a disk on each emulated array (an Element volume over NBD, a file
in an ONTAP volume) plus a local qcow2 disk, driven by the reference drivers.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.qemu_stack import (
    QemuStack,
    StackOptions,
    fsck,
    read_ext4_file,
    replay_and_fsck,
)
from vmsnap_host.client import HostClient, QuiescePolicy, VMSnapshotState
from vmsnap_sdk import Consistency, VMState

from .conftest import (
    counter,
    done,
    guest_sh,
    start_stack,
    three_disks,
    vm_of,
    wait_counter,
    wait_guest,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(300)]

# A marker on the raw local disk, past anything else (the qcow2 disk has no file system).
LOCAL_OFFSET = 16 << 20


@pytest.fixture(scope="module")
def stack() -> Iterator[QemuStack]:
    yield from start_stack(StackOptions(lease_seconds=30))


async def _local_marker(stack: QemuStack, vm_id: str, text: str) -> None:
    await guest_sh(
        stack,
        vm_id,
        f"printf '{text}' | dd of=/dev/vdc bs=512 seek={LOCAL_OFFSET // 512} "
        "conv=notrunc 2>/dev/null && sync",
    )


def _read_local(stack: QemuStack, image: str, length: int) -> bytes:
    import subprocess

    raw = stack.work / "local-check.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, str(raw)],
        check=True,
        timeout=60,
    )
    with open(raw, "rb") as f:
        f.seek(LOCAL_OFFSET)
        data = f.read(length)
    raw.unlink()
    return data


async def test_quiesced_snapshot_round_trip_then_crash_consistent(
    stack: QemuStack, host: HostClient
) -> None:
    disks = three_disks(stack, "rt")
    await host.define_vm(vm_of(stack, "rt", disks, "vmsnap.writer=/dev/vda"))
    await host.start_vm("rt")
    await wait_guest(stack, "rt")
    await wait_counter(stack, "rt", 0)
    await guest_sh(stack, "rt", "echo before > /mnt/vdb/marker && sync")
    await _local_marker(stack, "rt", "LOCAL-BEFORE")

    # --- REQUIRED: the guest's file systems frozen (qemu-ga + hook) ---------------------
    low = await counter(stack, "rt")
    op = await host.create_vm_snapshot("rt", "quiesced", quiesce=QuiescePolicy.REQUIRED)
    op = await done(host, op)
    high = await counter(stack, "rt")
    assert op.succeeded, op.error
    snap = await host.get_vm_snapshot(op.vm_snapshot_id)
    assert snap.state is VMSnapshotState.READY
    assert snap.consistency >= Consistency.FILESYSTEM, snap
    assert snap.freeze_seconds is not None and snap.freeze_seconds > 0
    owners = {g.owner: (g.kind, g.disks) for g in snap.groups}
    kinds = sorted((kind.name, disks) for kind, disks in owners.values())
    assert kinds == [("DRIVER", ("vda",)), ("DRIVER", ("vdb",)), ("HYPERVISOR", ("vdc",))], snap

    # More writes, then a clean stop: the disks now hold later data.
    await wait_counter(stack, "rt", high + 3)
    await guest_sh(stack, "rt", "echo after > /mnt/vdb/marker && sync")
    await _local_marker(stack, "rt", "LOCAL-AFTER!")
    assert (await host.stop_vm("rt")).state is VMState.STOPPED
    later = stack.element_image(disks.element, stack.work / "rt-later.img")
    at_stop = int(read_ext4_file(later, "counter"))
    assert at_stop > high

    op = await done(host, await host.revert_vm_snapshot(snap.id))
    assert op.succeeded, op.error
    image = stack.element_image(disks.element, stack.work / "rt-reverted.img")
    clean, report = fsck(image)
    assert clean, report
    reverted = int(read_ext4_file(image, "counter"))
    assert low <= reverted <= high, (low, reverted, high)
    clean, report = fsck(disks.ontap)
    assert clean, report
    assert read_ext4_file(disks.ontap, "marker") == "before\n"
    assert _read_local(stack, str(disks.local), 12) == b"LOCAL-BEFORE"

    # --- OFF: no guest freeze; the arrays still cut at one instant (overlays) -----------
    await host.start_vm("rt")
    await wait_guest(stack, "rt")
    start = await wait_counter(stack, "rt", reverted)
    op = await done(host, await host.create_vm_snapshot("rt", "crash", quiesce=QuiescePolicy.OFF))
    assert op.succeeded, op.error
    crash = await host.get_vm_snapshot(op.vm_snapshot_id)
    assert crash.consistency is Consistency.CRASH, crash
    await wait_counter(stack, "rt", start + 3)
    await host.stop_vm("rt")
    op = await done(host, await host.revert_vm_snapshot(crash.id))
    assert op.succeeded, op.error
    image = stack.element_image(disks.element, stack.work / "rt-crash.img")
    as_cut, report = fsck(image)
    # What crash consistency gives: maybe a journal to replay, never worse.
    repaired, repair_report = replay_and_fsck(image)
    assert repaired, repair_report
    value = read_ext4_file(image, "counter").strip()
    assert value == "" or int(value) >= reverted, value
    print(f"crash-consistent cut: clean without replay={as_cut}")

    await host.stop_vm("rt", force=True)
