"""HostClient against a real stack: typed results, waiting with progress, errors as classes."""

from __future__ import annotations

import pytest

from tests.cli.stack_support import Up
from vmsnap_host.client import (
    VM,
    GroupKind,
    Health,
    HostClient,
    Operation,
    OperationType,
    QuiescePolicy,
    VMSnapshotState,
    VMState,
    Volume,
)
from vmsnap_sdk import DriverClient
from vmsnap_sdk.errors import InvalidArgument, NotFound


async def test_the_client_round_trip(shared_up: Up) -> None:
    element = DriverClient.connect(shared_up.address("driver-element"), timeout=30)
    try:
        disk = await element.create_test_volume("client-a", 1 << 20)
    finally:
        await element.close()
    async with HostClient.connect(shared_up.stack["host"], timeout=30) as host:
        assert await host.serving()
        drivers = await host.list_drivers()
        assert {d.health for d in drivers} <= {Health.SERVING, Health.UNSPECIFIED}
        assert all("CONFORMANCE_FIXTURE" in d.capabilities for d in drivers)
        agents = await host.list_agents()
        assert [a.name for a in agents] == ["sim-1"]
        assert "OVERLAY" in agents[0].quiesce_methods

        vm = await host.define_vm(
            VM(
                id="vm-client",
                name="client test",
                memory_mib=256,
                volumes=(
                    Volume("vda", disk.locator),
                    Volume("vdb", "file:///var/lib/client.qcow2", format="qcow2"),
                ),
            )
        )
        assert vm.state is VMState.STOPPED
        assert (await host.start_vm("vm-client")).state is VMState.RUNNING
        assert "vm-client" in [v.id for v in await host.list_vms()]

        started = await host.create_vm_snapshot(
            "vm-client", "one", quiesce=QuiescePolicy.BEST_EFFORT, request_id="req-one"
        )
        assert started.type is OperationType.CREATE
        again = await host.create_vm_snapshot("vm-client", "one", request_id="req-one")
        assert again.id == started.id  # a retry with the same request id

        seen: list[Operation] = []
        done = await host.wait(started.id, timeout=120, on_progress=seen.append)
        assert done.succeeded
        assert seen and seen[-1].done
        snapshot = await host.get_vm_snapshot(done.vm_snapshot_id)
        assert snapshot.state is VMSnapshotState.READY
        assert {g.kind for g in snapshot.groups} == {GroupKind.DRIVER, GroupKind.HYPERVISOR}
        assert snapshot.freeze_start_time is not None
        assert snapshot.freeze_seconds is not None
        assert [s.id for s in await host.all_vm_snapshots("vm-client")] == [snapshot.id]

        operations = await host.list_operations("vm-client")
        assert started.id in [o.id for o in operations.items]
        assert (await host.get_operation(started.id)).succeeded

        deleted = await host.wait((await host.delete_vm_snapshot(snapshot.id)).id, timeout=120)
        assert deleted.succeeded

        with pytest.raises(NotFound):
            await host.get_vm("no-such-vm")
        with pytest.raises(InvalidArgument):
            await host.create_vm_snapshot("vm-client", "")


async def test_create_waits_for_its_result_in_the_same_call(shared_up: Up) -> None:
    # One round trip for a take: the host answers the Create once the operation is done.
    async with HostClient.connect(shared_up.stack["host"], timeout=30) as host:
        await host.define_vm(
            VM(
                id="vm-wait",
                name="wait test",
                memory_mib=256,
                volumes=(Volume("vda", "file:///var/lib/wait.qcow2", format="qcow2"),),
            )
        )
        await host.start_vm("vm-wait")
        done = await host.create_vm_snapshot(
            "vm-wait", "one", quiesce=QuiescePolicy.OFF, request_id="req-wait", wait=120
        )
        assert done.done and done.succeeded
        snapshot = await host.get_vm_snapshot(done.vm_snapshot_id)
        assert snapshot.state is VMSnapshotState.READY
        # A retry with the same request id (and the same arguments: issue 12) answers
        # with the same, finished, operation.
        again = await host.create_vm_snapshot(
            "vm-wait", "one", quiesce=QuiescePolicy.OFF, request_id="req-wait", wait=120
        )
        assert again.id == done.id and again.done
        with pytest.raises(InvalidArgument, match="wait"):
            await host.create_vm_snapshot("vm-wait", "two", wait=601)
        await host.stop_vm("vm-wait", force=True)
