"""End-to-end: host, sim agent and two fake drivers as processes over unix sockets."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.host.e2e import CONFIG, Cluster, cluster, eventually
from vmsnap_sdk._errors import from_rpc_error
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_sdk._proto.host.v1 import host_pb2_grpc


@pytest.fixture
def parallel(sockdir: Path, tmp_path: Path) -> Iterator[Cluster]:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    flags = ["--behaviour", "barrier", "--barrier", str(barrier), "--peers", "2"]
    yield from cluster(sockdir, tmp_path, {"a": flags, "b": flags})


def test_take_fans_out_in_parallel_then_revert_and_delete(parallel: Cluster) -> None:
    """Each driver blocks in TakeVMSnapshot until the other was called: the take
    can only succeed when the host calls both at once."""
    c = parallel
    c.define_vm("vm1")
    op = c.wait(c.create("vm1", "first"))
    assert not op.HasField("error"), op.error
    snap = op.vm_snapshot
    assert snap.state == pb.VM_SNAPSHOT_STATE_READY
    assert [(g.kind, g.owner, list(g.disks)) for g in snap.groups] == [
        (pb.GROUP_KIND_DRIVER, "io.vmsnap.test.a", ["vda"]),
        (pb.GROUP_KIND_DRIVER, "io.vmsnap.test.b", ["vdb"]),
        (pb.GROUP_KIND_HYPERVISOR, "sim-1", ["vdc"]),
    ]
    assert snap.HasField("freeze_start_time") and snap.HasField("freeze_duration")
    assert snap.current and all(g.ready and g.reasons for g in snap.groups)
    assert not c.frozen("vm1")

    listed = c.host.ListVMSnapshots(pb.ListVMSnapshotsRequest(vm_id="vm1"), timeout=5)
    assert [s.id for s in listed.vm_snapshots] == [snap.id]
    drivers = c.host.ListDrivers(pb.ListDriversRequest(), timeout=5).drivers
    assert {(d.name, d.health, d.contract_version) for d in drivers} == {
        ("io.vmsnap.test.a", pb.HEALTH_SERVING, "v1"),
        ("io.vmsnap.test.b", pb.HEALTH_SERVING, "v1"),
    }

    revert = c.host.RevertVMSnapshot(
        pb.RevertVMSnapshotRequest(request_id="rv1", id=snap.id, stop_vm=True), timeout=10
    ).operation
    revert = c.wait(revert)
    assert not revert.HasField("error"), revert.error
    assert c.agent_state()["vms"]["vm1"]["state"] == "STOPPED"
    assert snap.id in c.driver_state("a")["reverted"]

    delete = c.host.DeleteVMSnapshot(
        pb.DeleteVMSnapshotRequest(request_id="d1", id=snap.id), timeout=10
    ).operation
    delete = c.wait(delete)
    assert not delete.HasField("error")
    assert delete.vm_snapshot.state == pb.VM_SNAPSHOT_STATE_REMOVED
    assert c.driver_state("a")["snapshots"] == {} and c.driver_state("b")["snapshots"] == {}
    assert c.agent_state()["snapshots"].get("vm1", {}) == {}


@pytest.fixture
def plain(sockdir: Path, tmp_path: Path) -> Iterator[Cluster]:
    yield from cluster(sockdir, tmp_path, {})


def _code(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        error = from_rpc_error(exc)  # type: ignore[arg-type]
        return error.code, error.message
    raise AssertionError("the call succeeded")


def test_every_sanity_check_has_its_code_and_says_what_to_fix(plain: Cluster) -> None:
    c = plain
    c.define_vm("vm1")
    c.define_vm("off", start=False)
    cases = [
        (lambda: c.create("vm1", ""), grpc.StatusCode.INVALID_ARGUMENT, "name: is required"),
        (
            lambda: c.create("vm1", "x" * 256, request_id="long"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "name: is 256 chars; at most 255",
        ),
        (
            lambda: c.create("vm1", "s", request_id="bad id!"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "request_id",
        ),
        (lambda: c.create("ghost", "s"), grpc.StatusCode.NOT_FOUND, "DefineVM"),
        (
            lambda: c.create("off", "m", include_memory=True),
            grpc.StatusCode.FAILED_PRECONDITION,
            "start it",
        ),
        (lambda: c.create("vm1", "s", quiesce=7), grpc.StatusCode.INVALID_ARGUMENT, "quiesce"),
    ]
    for call, code, text in cases:
        got, message = _code(call)
        assert got == code and text in message, (got, message)

    first = c.wait(c.create("vm1", "s1"))
    assert first.vm_snapshot.state == pb.VM_SNAPSHOT_STATE_READY
    got, message = _code(lambda: c.create("vm1", "s1", request_id="another"))
    assert got == grpc.StatusCode.ALREADY_EXISTS and "choose another name" in message
    assert c.create("vm1", "s1").id == first.id  # same request_id: same operation
    c.wait(c.create("vm1", "s2"))
    c.wait(c.create("vm1", "s3"))
    got, message = _code(lambda: c.create("vm1", "s4"))
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED and "delete old ones" in message
    got, message = _code(
        lambda: c.host.RevertVMSnapshot(
            pb.RevertVMSnapshotRequest(request_id="rv", id=first.vm_snapshot_id), timeout=5
        )
    )
    assert got == grpc.StatusCode.FAILED_PRECONDITION and "stop_vm=true" in message
    got, message = _code(
        lambda: c.host.GetVMSnapshot(pb.GetVMSnapshotRequest(id="nope"), timeout=5)
    )
    assert got == grpc.StatusCode.NOT_FOUND and "ListVMSnapshots" in message


@pytest.fixture
def hanging_b(sockdir: Path, tmp_path: Path) -> Iterator[Cluster]:
    yield from cluster(sockdir, tmp_path, {"b": ["--behaviour", "hang"]})


def test_driver_killed_mid_call_is_compensated_when_it_is_back(hanging_b: Cluster) -> None:
    c = hanging_b
    c.define_vm("vm1")
    op = c.create("vm1", "s1")
    eventually(
        lambda: ["take", op.vm_snapshot_id] in c.driver_state("b")["calls"], what="take on b"
    )
    assert c.frozen("vm1")
    c.procs["b"].kill()
    done = c.wait(op)
    assert done.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert done.vm_snapshot.state == pb.VM_SNAPSHOT_STATE_ERROR
    assert "io.vmsnap.test.b" in done.error.message
    assert not c.frozen("vm1")
    assert ["delete", op.vm_snapshot_id] in c.driver_state("a")["calls"]
    assert c.driver_state("a")["snapshots"] == {}
    # b holds the cut it made before it died; once it is back, the host deletes it.
    assert op.vm_snapshot_id in c.driver_state("b")["snapshots"]
    c.start_driver("b")
    eventually(lambda: c.driver_state("b")["snapshots"] == {}, what="the owed delete on b")
    assert ["delete", op.vm_snapshot_id] in c.driver_state("b")["calls"]
    assert c.agent_state()["snapshots"].get("vm1", {}) == {}


@pytest.fixture
def hanging_a(sockdir: Path, tmp_path: Path) -> Iterator[Cluster]:
    yield from cluster(sockdir, tmp_path, {"a": ["--behaviour", "hang"]})


def test_host_killed_mid_take_agent_thaws_and_restart_resolves(hanging_a: Cluster) -> None:
    c = hanging_a
    c.define_vm("vm1")
    op = c.create("vm1", "s1")
    eventually(
        lambda: ["take", op.vm_snapshot_id] in c.driver_state("a")["calls"], what="take on a"
    )
    assert c.frozen("vm1")
    c.procs["host"].signal(signal.SIGKILL)
    c.procs["host"].popen.wait()
    # No host to thaw it: the agent thaws when the lease (2 s) runs out.
    eventually(lambda: not c.frozen("vm1"), timeout=10, what="the agent's lease thaw")
    assert op.vm_snapshot_id in c.driver_state("a")["snapshots"]

    c.start_host()
    done = c.wait(op)
    assert done.error.code == grpc.StatusCode.ABORTED.value[0]
    assert "restarted" in done.error.message
    assert done.vm_snapshot.state == pb.VM_SNAPSHOT_STATE_ERROR
    assert not c.frozen("vm1")
    assert c.driver_state("a")["snapshots"] == {} and c.driver_state("b")["snapshots"] == {}
    assert c.agent_state()["snapshots"].get("vm1", {}) == {}
    running = c.host.ListOperations(pb.ListOperationsRequest(only_running=True), timeout=5)
    assert list(running.operations) == []


@pytest.fixture
def slow_a(sockdir: Path, tmp_path: Path) -> Iterator[Cluster]:
    """Driver a hangs, and the take may last 30 s: an operation that stays running."""
    config = CONFIG.replace("quiesce_lease_seconds = 2", "quiesce_lease_seconds = 60").replace(
        "take_timeout_seconds = 5", "take_timeout_seconds = 30"
    )
    yield from cluster(sockdir, tmp_path, {"a": ["--behaviour", "hang"]}, config=config)


def test_the_host_serves_hundreds_of_waiting_calls_at_once(slow_a: Cluster) -> None:
    """A control plane keeps hundreds of calls waiting (a Create with wait, a
    WaitOperation, a watch): 300 waits on a take in flight are each answered with
    the operation as it stands, none RESOURCE_EXHAUSTED (a server of 256 calls at
    once refused the bench's 256 creates with wait)."""
    c = slow_a
    c.define_vm("vm1")
    op = c.create("vm1", "s1")

    async def waits() -> list[grpc.StatusCode | bool]:
        async with grpc.aio.insecure_channel(f"unix://{c.sock}/host.sock") as channel:
            stub = host_pb2_grpc.VMSnapshotServiceStub(channel)

            async def one() -> grpc.StatusCode | bool:
                request = pb.WaitOperationRequest(id=op.id)
                request.timeout.FromSeconds(2)
                try:
                    reply = await stub.WaitOperation(request, timeout=20)
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return reply.operation.done

            return list(await asyncio.gather(*(one() for _ in range(300))))

    answers = asyncio.run(waits())
    assert answers == [False] * 300, {str(a) for a in answers}


def test_registration_and_vm_passthrough(plain: Cluster) -> None:
    c = plain
    c.define_vm("vm1", start=False)
    assert c.host.GetVM(pb.GetVMRequest(vm_id="vm1"), timeout=5).vm.state == 1  # STOPPED
    assert [v.id for v in c.host.ListVMs(pb.ListVMsRequest(), timeout=5).vms] == ["vm1"]
    agents = c.host.ListAgents(pb.ListAgentsRequest(), timeout=5).agents
    assert [(a.name, a.hypervisor, a.health) for a in agents] == [
        ("sim-1", "sim", pb.HEALTH_SERVING)
    ]
    c.host.RemoveDriver(pb.RemoveDriverRequest(name="io.vmsnap.test.b"), timeout=5)
    c.host.RemoveDriver(pb.RemoveDriverRequest(name="io.vmsnap.test.b"), timeout=5)  # idempotent
    names = [d.name for d in c.host.ListDrivers(pb.ListDriversRequest(), timeout=5).drivers]
    assert names == ["io.vmsnap.test.a"]
    got, message = _code(
        lambda: c.host.RegisterDriver(
            pb.RegisterDriverRequest(address=f"unix://{c.sock}/missing.sock"), timeout=10
        )
    )
    assert got == grpc.StatusCode.UNAVAILABLE and "register again" in message
    registered = c.host.RegisterDriver(
        pb.RegisterDriverRequest(address=f"unix://{c.sock}/b.sock", order=5), timeout=10
    ).driver
    assert (registered.name, registered.health, registered.order) == (
        "io.vmsnap.test.b",
        pb.HEALTH_SERVING,
        5,
    )
    assert "CAPABILITY_CONSISTENT_GROUP" in registered.capabilities
    c.host.StopVM(pb.StopVMRequest(vm_id="vm1"), timeout=5)
    op = c.wait(c.create("vm1", "stopped"))
    assert op.vm_snapshot.state == pb.VM_SNAPSHOT_STATE_READY
    assert not op.vm_snapshot.HasField("freeze_start_time")  # a stopped VM needs no freeze
