"""UndefineVM over real processes: the host, the sim agent and two fake drivers.

Refused while the VM has live snapshots (nothing touched) unless asked to delete
them; then the deletes run as operations, the VM is undefined, and a retry with
the same request_id answers the same. `vmsnap vm undefine` does the same from
the command line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.cli.stack_support import vmsnap
from tests.fakes.driver import Options
from tests.host.conftest import make_rig
from tests.host.e2e import Cluster, module_cluster
from vmsnap_sdk._errors import from_rpc_error
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_sdk.errors import NotFound


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from module_cluster(tmp_path_factory, "undefine")


def _refused(call: object) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    error = from_rpc_error(caught.value)  # type: ignore[arg-type]
    return error.code, error.reason, error.message


def _undefine(c: Cluster, vm_id: str, request_id: str, delete: bool) -> pb.UndefineVMResponse:
    request = pb.UndefineVMRequest(request_id=request_id, vm_id=vm_id, delete_snapshots=delete)
    return c.host.UndefineVM(request, timeout=30)


def _states(c: Cluster, vm_id: str) -> list[int]:
    request = pb.ListVMSnapshotsRequest(vm_id=vm_id, show_removed=True)
    return [s.state for s in c.host.ListVMSnapshots(request, timeout=5).vm_snapshots]


def test_undefine_refuses_live_snapshots_then_deletes_them_first(plain: Cluster) -> None:
    c = plain
    c.define_vm("vm1", start=False)
    first = c.wait(c.create("vm1", "s1"))
    c.wait(c.create("vm1", "s2"))
    assert _states(c, "vm1") == [pb.VM_SNAPSHOT_STATE_READY] * 2

    code, reason, message = _refused(lambda: _undefine(c, "vm1", "u0", False))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "VM_HAS_SNAPSHOTS")
    assert "s1" in message and "delete_snapshots" in message
    c.host.StartVM(pb.StartVMRequest(vm_id="vm1"), timeout=10)
    code, reason, _ = _refused(lambda: _undefine(c, "vm1", "u1", True))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "VM_NOT_STOPPED")
    assert _states(c, "vm1") == [pb.VM_SNAPSHOT_STATE_READY] * 2  # nothing deleted
    c.host.StopVM(pb.StopVMRequest(vm_id="vm1"), timeout=10)

    done = _undefine(c, "vm1", "u1", True)
    assert done.undefined
    deletes = done.delete_operations
    assert len(deletes) == 2
    assert {op.type for op in deletes} == {pb.OPERATION_TYPE_DELETE}
    assert all(op.done and not op.HasField("error") for op in deletes)
    assert _states(c, "vm1") == [pb.VM_SNAPSHOT_STATE_REMOVED] * 2
    for letter in ("a", "b"):
        assert first.vm_snapshot_id not in c.driver_state(letter)["snapshots"]
    assert "vm1" not in c.agent_state()["vms"]
    code, reason, _ = _refused(lambda: c.host.GetVM(pb.GetVMRequest(vm_id="vm1"), timeout=5))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "VM_NOT_FOUND")

    # Idempotent by request_id: the same answer, the same operations, nothing run again.
    again = _undefine(c, "vm1", "u1", True)
    assert again.undefined
    assert [op.id for op in again.delete_operations] == [op.id for op in deletes]
    code, reason, _ = _refused(lambda: _undefine(c, "other", "u1", True))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    listed = c.host.ListOperations(pb.ListOperationsRequest(vm_id="vm1"), timeout=5).operations
    undefines = [op for op in listed if op.type == pb.OPERATION_TYPE_UNDEFINE_VM]
    assert len(undefines) == 1 and undefines[0].done and undefines[0].request_id == "u1"

    # A VM without snapshots needs no flag; one the host does not know is NOT_FOUND.
    c.define_vm("vm2", start=False)
    assert _undefine(c, "vm2", "u2", False).undefined
    code, reason, _ = _refused(lambda: _undefine(c, "vm2", "u3", False))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "VM_NOT_FOUND")


def test_vmsnap_vm_undefine(plain: Cluster, tmp_path: Path) -> None:
    c = plain
    host = f"unix://{c.sock}/host.sock"
    c.define_vm("vm3", start=False)
    c.wait(c.create("vm3", "s1"))

    refused = vmsnap(tmp_path, "--host", host, "vm", "undefine", "vm3", check=False)
    assert refused.returncode == 4  # refused (vmsnap --help, exit codes)
    assert "FAILED_PRECONDITION" in refused.stderr and "--delete-snapshots" in refused.stderr
    assert "vm3" in c.agent_state()["vms"]

    done = vmsnap(tmp_path, "--host", host, "vm", "undefine", "vm3", "--delete-snapshots")
    assert "VM vm3 undefined (1 snapshots deleted)" in done.stdout
    assert "vm3" not in c.agent_state()["vms"]
    assert _states(c, "vm3") == [pb.VM_SNAPSHOT_STATE_REMOVED]


async def test_undefine_passes_start_the_deletes_the_vms_queue_admits(tmp_path: Path) -> None:
    """More snapshots than the VM's queue takes (1 running + 1 waiting here): each
    pass starts what fits, and the VM is undefined once every delete is done."""
    rig = await make_rig(
        tmp_path,
        Options(name="io.vmsnap.test.a", scheme="a"),
        Options(name="io.vmsnap.test.b", scheme="b"),
    )
    try:
        await rig.define(running=False)
        for name in ("s1", "s2", "s3"):
            await rig.wait(await rig.create(name))
        passes = 0
        while True:
            passes += 1
            undefined, ops = await rig.manager.undefine_vm("u1", "vm1", delete_snapshots=True)
            if undefined:
                break
            assert passes < 10
            for op in ops:
                await rig.manager.wait_operation(op.id, 10.0)
        assert passes >= 2 and len(ops) == 3 and all(op.done for op in ops)
        assert not rig.store.live_snapshots("vm1")
        with pytest.raises(NotFound):
            await rig.agent.describe_vm("vm1")
    finally:
        await rig.close()
