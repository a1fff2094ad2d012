"""Acceptance of clone to a new VM (issue 14, part 3) on both reference drivers.

The whole chain as real processes: host, sim agent, the SolidFire and ONTAP
drivers on their emulators (real bytes). A VM with a disk on each array: write
A, snapshot, write B, clone (through HostClient, and again through the CLI) →
the clone reads A, the source still reads B; the two stay independent; the new
VM is defined STOPPED and can itself be snapshotted (its drivers claim the new
volumes).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from tests.drivers.conftest import DriverProcess
from tests.drivers.test_with_host import MIB, Stack, stack  # noqa: F401 - the fixture
from tests.support.procs import ROOT
from vmsnap_host.client import HostClient, OperationType, VMSnapshotState
from vmsnap_sdk import VM, DriverClient, Volume

A, B, C = b"\xaa" * 65536, b"\xbb" * 65536, b"\xcc" * 65536


async def _serving(host: HostClient) -> None:
    deadline = time.monotonic() + 20
    while True:
        drivers = await host.list_drivers()
        if len(drivers) == 2 and all(d.health.name == "SERVING" for d in drivers):
            return
        assert time.monotonic() < deadline, "the host never saw both drivers serving"
        await asyncio.sleep(0.1)


async def test_clone_reads_the_snapshot_and_the_source_keeps_its_writes(
    stack: tuple[Stack, DriverProcess, DriverProcess],  # noqa: F811
) -> None:
    s, solidfire, netapp = stack
    sf = DriverClient.connect(solidfire.address, timeout=30)
    na = DriverClient.connect(netapp.address, timeout=30)
    host = HostClient.connect(f"unix://{s.sock}/host.sock", timeout=30)
    try:
        element_disk = await sf.create_test_volume("src-root", 4 * MIB)
        ontap_disk = await na.create_test_volume("src-data", 4 * MIB)
        array = {"vda": sf, "vdb": na}
        await _serving(host)
        await host.define_vm(
            VM(
                id="src",
                name="src",
                memory_mib=64,
                volumes=(
                    Volume("vda", element_disk.locator, format="raw"),
                    Volume("vdb", ontap_disk.locator, format="raw"),
                ),
            )
        )
        source = {"vda": element_disk.locator, "vdb": ontap_disk.locator}
        for disk, locator in source.items():
            await array[disk].write_volume(locator, 0, A)
        taken = await host.wait((await host.create_vm_snapshot("src", "before")).id, timeout=60)
        assert taken.succeeded, taken
        for disk, locator in source.items():
            await array[disk].write_volume(locator, 0, B)

        op = await host.create_vm_from_snapshot(taken.vm_snapshot_id, "copy", wait=30)
        done = await host.wait(op.id, timeout=60)
        assert done.succeeded and done.type is OperationType.CLONE, done
        assert done.new_vm_id == "copy"

        copy = await host.get_vm("copy")
        assert copy.state.name == "STOPPED" and copy.memory_mib == 64
        cloned = {v.disk: v.locator for v in copy.volumes}
        assert set(cloned) == {"vda", "vdb"}
        assert cloned["vda"].startswith("element://") and cloned["vdb"].startswith("ontap://")
        assert not set(cloned.values()) & set(source.values())
        for disk in ("vda", "vdb"):
            assert await array[disk].read_volume(cloned[disk], 0, len(A)) == A, disk
            assert await array[disk].read_volume(source[disk], 0, len(B)) == B, disk
            # Independent: a write to the clone does not reach the source.
            await array[disk].write_volume(cloned[disk], 0, C)
            assert await array[disk].read_volume(source[disk], 0, len(B)) == B, disk
        # The source VM is untouched.
        assert {v.disk: v.locator for v in (await host.get_vm("src")).volumes} == source

        # The new VM's volumes are claimed by their drivers: it can be snapshotted.
        again = await host.wait((await host.create_vm_snapshot("copy", "first")).id, timeout=60)
        assert again.succeeded, again
        snap = await host.get_vm_snapshot(again.vm_snapshot_id)
        assert snap.state is VMSnapshotState.READY

        # The CLI's `vm clone`, from the same snapshot, to another VM.
        cli = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "vmsnap_host.cli",
                "--host",
                f"unix://{s.sock}/host.sock",
                "vm",
                "clone",
                taken.vm_snapshot_id,
                "copy2",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "NO_COLOR": "1"},
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert "VM copy2 defined" in cli.stdout
        copy2 = {v.disk: v.locator for v in (await host.get_vm("copy2")).volumes}
        assert await array["vda"].read_volume(copy2["vda"], 0, len(A)) == A
        assert await array["vdb"].read_volume(copy2["vdb"], 0, len(A)) == A
    finally:
        await host.close()
        await sf.close()
        await na.close()
