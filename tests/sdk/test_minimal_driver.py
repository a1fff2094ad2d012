"""The example driver as a user meets it: its own process, found by address."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.procs import ROOT, Proc, python_proc, wait_serving
from vmsnap_sdk import VM, Capability, DriverClient, Operation, Priority, TakeRequest, Volume


@pytest.fixture
def minimal_driver(sockdir: Path, tmp_path: Path) -> Iterator[str]:
    address = f"unix://{sockdir}/mem.sock"
    proc: Proc = python_proc(
        [str(ROOT / "sdk/examples/minimal_driver.py"), "--listen", address], tmp_path / "driver.log"
    )
    try:
        wait_serving(address)
        yield address
    finally:
        proc.stop()


def test_health_reports_serving(minimal_driver: str) -> None:
    with grpc.insecure_channel(minimal_driver) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "vmsnap.driver.v1.StorageDriver"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_driver_service(minimal_driver: str) -> None:
    with grpc.insecure_channel(minimal_driver) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert "vmsnap.driver.v1.StorageDriver" in names
    assert "grpc.health.v1.Health" in names


async def test_driver_info_and_a_take_over_the_socket(minimal_driver: str) -> None:
    client = DriverClient.connect(minimal_driver, timeout=5)
    try:
        info = await client.get_info()
        assert info.name == "io.vmsnap.example.memory"
        assert info.vendor_version == "1.0.0"
        assert info.contract_versions == ("v1",)
        assert Capability.CONSISTENT_GROUP in info.capabilities

        vm = VM(id="vm-1", volumes=(Volume("vda", "mem://a"), Volume("vdb", "file:///x")))
        decisions = await client.can_handle(vm, vm.volumes, Operation.TAKE, {})
        assert [d.priority for d in decisions] == [Priority.PLUGIN, Priority.CANT_HANDLE]

        request = TakeRequest("snap-1", vm, (vm.volumes[0],))
        first = await client.take_snapshot(request)
        again = await client.take_snapshot(request)
        assert first == again
        assert first.disks == {"vda"}
    finally:
        await client.close()
