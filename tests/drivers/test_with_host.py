"""The whole chain with the reference drivers: host, sim agent, both drivers, both emulators.

One VM with a disk on each array: the host must freeze it (two drivers cannot
cut at one instant), fan the take out to both drivers, thaw, and later revert
both disks. The bytes written before the snapshot come back on both arrays.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.drivers.conftest import DriverProcess, run_driver
from tests.support.procs import Proc, wait_serving
from vmsnap_emulators.testing import start_emulator
from vmsnap_sdk import DriverClient, Page
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_sdk._proto.host.v1 import host_pb2_grpc

MIB = 1 << 20
A, B = b"\xaa" * 65536, b"\xbb" * 65536


class Stack:
    def __init__(self, sock: Path, work: Path) -> None:
        self.sock = sock
        self.work = work
        self.procs: list[Proc] = []

    def start(self, name: str, args: list[str]) -> str:
        address = f"unix://{self.sock}/{name}.sock"
        proc = Proc([sys.executable, *args, "--listen", address], self.work / f"{name}.log")
        self.procs.append(proc)
        try:
            wait_serving(address, timeout=30)
        except TimeoutError:
            raise AssertionError(f"{name} did not start:\n{proc.output()}") from None
        return address

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(5)


@pytest.fixture
def stack(sockdir: Path, tmp_path: Path) -> Iterator[tuple[Stack, DriverProcess, DriverProcess]]:
    with (
        start_emulator("element", tmp_path / "element", durable=False) as element,
        start_emulator("ontap", tmp_path / "ontap", durable=False) as ontap,
        run_driver(
            "solidfire", element, "--conformance-fixture", "--cluster", "vmsnap-element"
        ) as solidfire,
        run_driver(
            "netapp", ontap, "--conformance-fixture", "--job-poll-interval", "0.05"
        ) as netapp,
    ):
        s = Stack(sockdir, tmp_path)
        try:
            agent = s.start(
                "agent",
                ["-m", "vmsnap_agent.cli", "--hypervisor", "sim", "--state", str(tmp_path / "a")],
            )
            config = tmp_path / "host.toml"
            config.write_text(
                "[host]\nhealth_interval_seconds = 0.2\nreconcile_interval_seconds = 0.5\n\n"
                f'[[drivers]]\naddress = "{solidfire.address}"\norder = 0\n\n'
                f'[[drivers]]\naddress = "{netapp.address}"\norder = 1\n\n'
                f'[[agents]]\naddress = "{agent}"\n'
            )
            s.start(
                "host",
                [
                    "-m",
                    "vmsnap_host",
                    "--db",
                    str(tmp_path / "host.db"),
                    "--config",
                    str(config),
                    "--instance-id",
                    "drivers-test",
                ],
            )
            yield s, solidfire, netapp
        finally:
            s.close()


async def _wait(host: host_pb2_grpc.VMSnapshotServiceStub, op: pb.Operation) -> pb.Operation:
    request = pb.WaitOperationRequest(id=op.id)
    request.timeout.FromSeconds(30)
    done = (await host.WaitOperation(request, timeout=40)).operation
    assert done.done and not done.HasField("error"), done
    return done


async def _drivers_serving(host: host_pb2_grpc.VMSnapshotServiceStub) -> bool:
    drivers = (await host.ListDrivers(pb.ListDriversRequest(), timeout=5)).drivers
    return len(drivers) == 2 and all(d.health == pb.HEALTH_SERVING for d in drivers)


async def test_host_takes_and_reverts_a_vm_across_both_arrays(
    stack: tuple[Stack, DriverProcess, DriverProcess],
) -> None:
    s, solidfire, netapp = stack
    sf = DriverClient.connect(solidfire.address, timeout=30)
    na = DriverClient.connect(netapp.address, timeout=30)
    channel = grpc.aio.insecure_channel(f"unix://{s.sock}/host.sock")
    try:
        host = host_pb2_grpc.VMSnapshotServiceStub(channel)
        element_disk = await sf.create_test_volume("vm1-root", 4 * MIB)
        ontap_disk = await na.create_test_volume("vm1-data", 4 * MIB)
        await sf.write_volume(element_disk.locator, 0, A)
        await na.write_volume(ontap_disk.locator, 0, A)

        deadline = time.monotonic() + 20
        while not await _drivers_serving(host):
            assert time.monotonic() < deadline, "the host never saw both drivers serving"
            await asyncio.sleep(0.1)
        vm = common_pb2.VM(
            id="vm1",
            name="vm1",
            memory_mib=64,
            volumes=[
                common_pb2.Volume(disk="vda", locator=element_disk.locator),
                common_pb2.Volume(disk="vdb", locator=ontap_disk.locator),
            ],
        )
        await host.DefineVM(pb.DefineVMRequest(vm=vm), timeout=10)
        await host.StartVM(pb.StartVMRequest(vm_id="vm1"), timeout=10)

        take = (
            await host.CreateVMSnapshot(
                pb.CreateVMSnapshotRequest(request_id="r1", vm_id="vm1", name="before"),
                timeout=10,
            )
        ).operation
        snap = (await _wait(host, take)).vm_snapshot
        assert snap.state == pb.VM_SNAPSHOT_STATE_READY
        owners = {g.owner: list(g.disks) for g in snap.groups}
        assert owners == {"com.netapp.solidfire": ["vda"], "com.netapp.ontap": ["vdb"]}
        assert snap.HasField("freeze_start_time"), "two drivers: the host must freeze"

        # What the arrays hold is tagged with the host's id.
        for client in (sf, na):
            listed = await client.list_snapshots(Page(size=100), vm_id="vm1")
            assert [r.vm_snapshot_id for r in listed.snapshots] == [snap.id]

        await sf.write_volume(element_disk.locator, 0, B)
        await na.write_volume(ontap_disk.locator, 0, B)
        revert = (
            await host.RevertVMSnapshot(
                pb.RevertVMSnapshotRequest(request_id="r2", id=snap.id, stop_vm=True), timeout=10
            )
        ).operation
        await _wait(host, revert)
        assert await sf.read_volume(element_disk.locator, 0, len(A)) == A
        assert await na.read_volume(ontap_disk.locator, 0, len(A)) == A

        delete = (
            await host.DeleteVMSnapshot(
                pb.DeleteVMSnapshotRequest(request_id="r3", id=snap.id), timeout=10
            )
        ).operation
        await _wait(host, delete)
        for client in (sf, na):
            listed = await client.list_snapshots(Page(size=100), vm_id="vm1")
            assert snap.id not in [r.vm_snapshot_id for r in listed.snapshots]
    finally:
        await channel.close(None)
        await sf.close()
        await na.close()
