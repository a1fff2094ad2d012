"""Adopt round trip (issue 14): a group snapshot made directly on the Element
emulator (through the vendor's SDK, as the driver does) is discovered by the host
without any change on the array, adopted as a READY snapshot, and a revert to it
restores its bytes. Real processes: emulator, SolidFire driver, sim agent, host."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.drivers.conftest import DriverProcess, run_driver
from tests.drivers.test_with_host import Stack
from vmsnap_emulators.pytest_fixtures import element_client
from vmsnap_emulators.testing import EmulatorProcess, start_emulator
from vmsnap_sdk import DriverClient, Page
from vmsnap_sdk._errors import from_rpc_error
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_sdk._proto.host.v1 import host_pb2_grpc

# The emulator's certificate is not verified by this test's own SDK client.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

MIB = 1 << 20
A, B = b"\xaa" * 65536, b"\xbb" * 65536


@pytest.fixture(scope="module")
def element_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Stack, EmulatorProcess, DriverProcess]]:
    """One stack for the module (each test its own VM and volumes): starting the
    five processes is most of a test's time."""
    tmp_path = tmp_path_factory.mktemp("adopt")
    sockdir = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    with (
        start_emulator("element", tmp_path / "element", durable=False) as element,
        run_driver(
            "solidfire", element, "--conformance-fixture", "--cluster", "vmsnap-element"
        ) as solidfire,
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
                f'[[drivers]]\naddress = "{solidfire.address}"\n\n'
                f'[[agents]]\naddress = "{agent}"\n'
            )
            s.start(
                "host",
                ["-m", "vmsnap_host", "--db", str(tmp_path / "host.db"), "--config", str(config)],
            )
            yield s, element, solidfire
        finally:
            s.close()
            shutil.rmtree(sockdir, ignore_errors=True)


def _element(emu: EmulatorProcess) -> Any:
    """The vendor's SDK client, as the driver makes it (API 12.3; TLS not verified,
    hence the warning filter of this module)."""
    return element_client(emu)


def _array_snapshots(sdk: Any) -> list[tuple[Any, ...]]:
    """Everything the cluster holds about snapshots, to compare before and after."""
    groups = [
        (g.group_snapshot_id, g.group_snapshot_uuid, g.name, str(g.attributes), len(g.members))
        for g in sdk.list_group_snapshots().group_snapshots
    ]
    snaps = [
        (s.snapshot_id, s.volume_id, s.name, str(s.attributes), s.group_id)
        for s in sdk.list_snapshots().snapshots
    ]
    return sorted(groups) + sorted(snaps)


async def test_a_group_snapshot_made_on_the_array_is_discovered_adopted_and_reverted_to(
    element_stack: tuple[Stack, EmulatorProcess, DriverProcess],
) -> None:
    s, emu, solidfire = element_stack
    sf = DriverClient.connect(solidfire.address, timeout=30)
    channel = grpc.aio.insecure_channel(f"unix://{s.sock}/host.sock")
    try:
        host = host_pb2_grpc.VMSnapshotServiceStub(channel)
        root = await sf.create_test_volume("vm1-root", 4 * MIB)
        data = await sf.create_test_volume("vm1-data", 4 * MIB)
        other = await sf.create_test_volume("other", 4 * MIB)
        for disk in (root, data):
            await sf.write_volume(disk.locator, 0, A)

        # Made on the array by someone else: a group snapshot of the VM's two
        # volumes, and one that also holds a volume the VM does not have.
        sdk = _element(emu)
        ids = [int(v.locator.rsplit("/", 1)[1]) for v in (root, data, other)]
        made = sdk.create_group_snapshot(volumes=ids[:2], name="backup-tool-nightly")
        sdk.create_group_snapshot(volumes=ids, name="spans-another-vm")

        deadline = time.monotonic() + 20
        while not all(
            d.health == pb.HEALTH_SERVING
            for d in (await host.ListDrivers(pb.ListDriversRequest(), timeout=5)).drivers
        ):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        vm = common_pb2.VM(
            id="vm1",
            name="vm1",
            memory_mib=64,
            volumes=[
                common_pb2.Volume(disk="vda", locator=root.locator),
                common_pb2.Volume(disk="vdb", locator=data.locator),
            ],
        )
        await host.DefineVM(pb.DefineVMRequest(vm=vm), timeout=10)

        # A vmsnap snapshot of the same VM is not "unmanaged".
        take = await host.CreateVMSnapshot(
            pb.CreateVMSnapshotRequest(
                request_id="t1", vm_id="vm1", name="ours", wait=_seconds(30)
            ),
            timeout=40,
        )
        assert take.operation.done and not take.operation.HasField("error"), take

        for disk in (root, data):
            await sf.write_volume(disk.locator, 0, B)

        before = _array_snapshots(sdk)
        found = await host.DiscoverSnapshots(pb.DiscoverSnapshotsRequest(vm_id="vm1"), timeout=20)
        assert _array_snapshots(sdk) == before, "discovery changed the array"
        assert [x.object_id for x in found.sets] == [str(made.group_snapshot_id)]
        chosen = found.sets[0]
        assert chosen.complete and chosen.name == "backup-tool-nightly"
        assert chosen.consistency == common_pb2.CONSISTENCY_CRASH
        assert sorted(v.disk for v in chosen.volumes) == ["vda", "vdb"]

        adopted = (
            await host.AdoptSnapshot(
                pb.AdoptSnapshotRequest(
                    request_id="a1", vm_id="vm1", set_id=chosen.id, name="nightly"
                ),
                timeout=20,
            )
        ).vm_snapshot
        assert adopted.state == pb.VM_SNAPSHOT_STATE_READY
        assert adopted.consistency == common_pb2.CONSISTENCY_CRASH
        # Idempotent on request_id; and once adopted, not offered again.
        again = await host.AdoptSnapshot(
            pb.AdoptSnapshotRequest(request_id="a1", vm_id="vm1", set_id=chosen.id, name="nightly"),
            timeout=20,
        )
        assert again.vm_snapshot.id == adopted.id
        listed = await host.DiscoverSnapshots(pb.DiscoverSnapshotsRequest(vm_id="vm1"), timeout=20)
        assert list(listed.sets) == []

        revert = await host.RevertVMSnapshot(
            pb.RevertVMSnapshotRequest(request_id="r1", id=adopted.id, stop_vm=True), timeout=10
        )
        request = pb.WaitOperationRequest(id=revert.operation.id)
        request.timeout.FromSeconds(30)
        done = (await host.WaitOperation(request, timeout=40)).operation
        assert done.done and not done.HasField("error"), done
        for disk in (root, data):
            assert await sf.read_volume(disk.locator, 0, len(A)) == A

        # The driver's own listing still shows only what vmsnap tagged.
        tagged = await sf.list_snapshots(Page(size=100), vm_id="vm1")
        assert [r.vm_snapshot_id for r in tagged.snapshots] == [take.operation.vm_snapshot_id]

        # Deleting the adopted snapshot deletes that group on the array, and no other.
        delete = await host.DeleteVMSnapshot(
            pb.DeleteVMSnapshotRequest(request_id="d1", id=adopted.id), timeout=10
        )
        request = pb.WaitOperationRequest(id=delete.operation.id)
        request.timeout.FromSeconds(30)
        done = (await host.WaitOperation(request, timeout=40)).operation
        assert done.done and not done.HasField("error"), done
        names = sorted(g.name for g in sdk.list_group_snapshots().group_snapshots)
        assert "backup-tool-nightly" not in names and "spans-another-vm" in names, names
    finally:
        await channel.close(None)
        await sf.close()


def _seconds(value: int) -> Any:
    from google.protobuf import duration_pb2

    return duration_pb2.Duration(seconds=value)


async def test_adopting_a_set_that_misses_a_disk_is_refused(
    element_stack: tuple[Stack, EmulatorProcess, DriverProcess],
) -> None:
    s, emu, solidfire = element_stack
    sf = DriverClient.connect(solidfire.address, timeout=30)
    channel = grpc.aio.insecure_channel(f"unix://{s.sock}/host.sock")
    try:
        host = host_pb2_grpc.VMSnapshotServiceStub(channel)
        root = await sf.create_test_volume("vm2-root", 4 * MIB)
        data = await sf.create_test_volume("vm2-data", 4 * MIB)
        sdk = _element(emu)
        made = sdk.create_group_snapshot(
            volumes=[int(root.locator.rsplit("/", 1)[1])], name="root-only"
        )
        vm = common_pb2.VM(
            id="vm2",
            name="vm2",
            memory_mib=64,
            volumes=[
                common_pb2.Volume(disk="vda", locator=root.locator),
                common_pb2.Volume(disk="vdb", locator=data.locator),
            ],
        )
        await asyncio.sleep(0.5)
        await host.DefineVM(pb.DefineVMRequest(vm=vm), timeout=10)
        found = await host.DiscoverSnapshots(pb.DiscoverSnapshotsRequest(vm_id="vm2"), timeout=20)
        assert [(x.object_id, x.complete) for x in found.sets] == [
            (str(made.group_snapshot_id), False)
        ]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await host.AdoptSnapshot(
                pb.AdoptSnapshotRequest(
                    request_id="a2", vm_id="vm2", set_id=found.sets[0].id, name="x"
                ),
                timeout=20,
            )
        error = from_rpc_error(info.value)
        assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SET_INCOMPLETE")
        assert "vdb" in error.message

        # The same through the CLI.
        cli = [sys.executable, "-m", "vmsnap_host.cli", "--host", f"unix://{s.sock}/host.sock"]
        shown = await asyncio.to_thread(
            subprocess.run,
            [*cli, "snapshot", "discover", "vm2", "--json"],
            check=False,
            capture_output=True,
            text=True,
        )
        assert shown.returncode == 0, shown.stderr
        assert [x["id"] for x in json.loads(shown.stdout)["sets"]] == [found.sets[0].id]
        refused = await asyncio.to_thread(
            subprocess.run,
            [*cli, "snapshot", "adopt", "vm2", found.sets[0].id, "--name", "x"],
            check=False,
            capture_output=True,
            text=True,
        )
        assert refused.returncode == 4 and "FAILED_PRECONDITION" in refused.stderr
    finally:
        await channel.close(None)
        await sf.close()
