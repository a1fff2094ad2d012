"""Host replicas sharing one PostgreSQL catalog, as real processes: work is shared
safely, a replica that dies mid-operation is taken over, every replica answers
for every operation (docs/design.md, "Replicas")."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.host.e2e import eventually
from tests.host.replicas import LEASE_SECONDS, Replicas, replicas
from vmsnap_host.client._convert import failure
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb

ABORTED = grpc.StatusCode.ABORTED


@pytest.fixture
def hanging_a(sockdir: Path, tmp_path: Path, pg_url: str) -> Iterator[Replicas]:
    yield from replicas(sockdir, tmp_path, pg_url, 2, {"a": ["--behaviour", "hang"]})


def test_a_replica_killed_mid_take_is_taken_over_within_the_lease(hanging_a: Replicas) -> None:
    c = hanging_a
    c.use("host-1")
    c.define_vm("vm1")
    op = c.create("vm1", "s1")
    eventually(
        lambda: ["take", op.vm_snapshot_id] in c.driver_state("a")["calls"], what="take on a"
    )
    assert c.frozen("vm1")
    c.procs["host-1"].signal(signal.SIGKILL)
    c.procs["host-1"].popen.wait()
    killed = time.monotonic()

    # The other replica answers for the operation and resolves it: rolled back, the
    # VM thawed, nothing left on either array or in the agent.
    c.use("host-2")
    done = c.wait(op, seconds=LEASE_SECONDS + 10)
    assert time.monotonic() - killed < LEASE_SECONDS + 5
    assert done.error.code == ABORTED.value[0], done
    # ... with the reason clients retry on (the demo does: take it again).
    assert failure(done.error).reason == "HOST_RESTARTED"
    assert done.vm_snapshot.state == pb.VM_SNAPSHOT_STATE_ERROR
    assert not c.frozen("vm1")
    assert c.driver_state("a")["snapshots"] == {} and c.driver_state("b")["snapshots"] == {}
    assert c.agent_state()["snapshots"].get("vm1", {}) == {}
    running = c.host.ListOperations(pb.ListOperationsRequest(only_running=True), timeout=5)
    assert list(running.operations) == []
    # The periodic jobs moved to the survivor with the leader lock.
    eventually(lambda: "leading" in c.procs["host-2"].output(), timeout=10, what="leadership")


@pytest.fixture
def three_hanging(sockdir: Path, tmp_path: Path, pg_url: str) -> Iterator[Replicas]:
    yield from replicas(
        sockdir, tmp_path, pg_url, 3, {"a": ["--behaviour", "hang"]}, queue_bound=1,
        take_timeout=30,
    )


def test_the_per_vm_queue_bound_holds_across_replicas(three_hanging: Replicas) -> None:
    c = three_hanging
    c.use("host-1")
    c.define_vm("vm1")
    names = [f"host-{1 + i % 3}" for i in range(9)]
    outcomes: list[str] = []
    start = threading.Barrier(len(names))

    def create(i: int, replica: str) -> None:
        start.wait()
        request = pb.CreateVMSnapshotRequest(request_id=f"r{i}", vm_id="vm1", name=f"s{i}")
        try:
            c.on(replica).CreateVMSnapshot(request, timeout=20)
            outcomes.append("admitted")
        except grpc.RpcError as exc:
            assert exc.code() is ABORTED, exc.details()
            assert "VM_QUEUE_FULL" in str(exc.trailing_metadata()) or "bound" in str(exc.details())
            outcomes.append("aborted")

    threads = [threading.Thread(target=create, args=(i, r)) for i, r in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One running (its take hangs) and one waiting: the bound is 1 + queue_bound
    # across every replica, not per replica.
    assert Counter(outcomes) == {"admitted": 2, "aborted": 7}
    running = c.host.ListOperations(
        pb.ListOperationsRequest(vm_id="vm1", only_running=True), timeout=5
    )
    assert len(running.operations) == 2


@pytest.fixture(params=[2, 3])
def hammered(
    request: pytest.FixtureRequest, sockdir: Path, tmp_path: Path, pg_url: str
) -> Iterator[Replicas]:
    yield from replicas(sockdir, tmp_path, pg_url, request.param, queue_bound=20)


def test_replicas_hammering_the_same_vms_run_each_operation_once(hammered: Replicas) -> None:
    c = hammered
    names = sorted(c.channels)
    c.use(names[0])
    vms = ["vm1", "vm2"]
    for vm in vms:
        c.define_vm(vm, start=False)
    rng = random.Random(7)
    ops: list[tuple[str, pb.Operation]] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        for i in range(6):
            replica, vm = rng.choice(names), rng.choice(vms)
            stub = c.on(replica)
            try:
                if i % 3 == 2:
                    snaps = stub.ListVMSnapshots(
                        pb.ListVMSnapshotsRequest(vm_id=vm), timeout=10
                    ).vm_snapshots
                    ready = [s for s in snaps if s.state == pb.VM_SNAPSHOT_STATE_READY]
                    if not ready:
                        continue
                    target = rng.choice(ready).id
                    if rng.random() < 0.5:
                        op = stub.RevertVMSnapshot(
                            pb.RevertVMSnapshotRequest(
                                request_id=f"rv-{w}-{i}", id=target, stop_vm=True
                            ),
                            timeout=10,
                        ).operation
                    else:
                        op = stub.DeleteVMSnapshot(
                            pb.DeleteVMSnapshotRequest(request_id=f"d-{w}-{i}", id=target),
                            timeout=10,
                        ).operation
                else:
                    request_id = f"c-{w}-{i}"
                    op = stub.CreateVMSnapshot(
                        pb.CreateVMSnapshotRequest(request_id=request_id, vm_id=vm, name=request_id),
                        timeout=10,
                    ).operation
                    # The same request again, on another replica: the same operation.
                    again = c.on(rng.choice(names)).CreateVMSnapshot(
                        pb.CreateVMSnapshotRequest(request_id=request_id, vm_id=vm, name=request_id),
                        timeout=10,
                    ).operation
                    assert again.id == op.id
            except grpc.RpcError as exc:
                # Reverting or deleting a snapshot another worker is deleting is refused.
                assert exc.code() is grpc.StatusCode.FAILED_PRECONDITION, exc.details()
                continue
            with lock:
                ops.append((replica, op))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ops
    # Every operation is answered by every replica, whichever ran it.
    for i, (_replica, op) in enumerate(ops):
        c.use(names[i % len(names)])
        done = c.wait(op, seconds=30)
        if done.HasField("error") and done.error.code:
            assert done.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0], done.error

    # No take ran twice, on either array.
    for letter in ("a", "b"):
        takes = Counter(
            call[1] for call in c.driver_state(letter)["calls"] if call[0] == "take"
        )
        assert all(n == 1 for n in takes.values()), takes
    for vm in vms:
        snaps = c.host.ListVMSnapshots(pb.ListVMSnapshotsRequest(vm_id=vm), timeout=10).vm_snapshots
        assert sum(1 for s in snaps if s.current) <= 1
        assert all(s.state in (pb.VM_SNAPSHOT_STATE_READY, pb.VM_SNAPSHOT_STATE_ERROR) for s in snaps)
    running = c.host.ListOperations(pb.ListOperationsRequest(only_running=True), timeout=5)
    assert list(running.operations) == []
    # The arrays hold exactly what the catalog says is READY (nothing lost, nothing left).
    ready = {
        s.id
        for vm in vms
        for s in c.host.ListVMSnapshots(pb.ListVMSnapshotsRequest(vm_id=vm), timeout=10).vm_snapshots
        if s.state == pb.VM_SNAPSHOT_STATE_READY
    }
    eventually(
        lambda: set(c.driver_state("a")["snapshots"]) == ready
        and set(c.driver_state("b")["snapshots"]) == ready,
        timeout=10,
        what="the arrays to hold exactly the READY snapshots",
    )


async def test_the_client_fails_over_to_another_replica(hanging_a: Replicas) -> None:
    from vmsnap_host.client import HostClient, VMSnapshotState

    c = hanging_a
    c.use("host-1")
    c.define_vm("vm1")
    addresses = [f"unix://{c.sock}/{name}.sock" for name in ("host-1", "host-2")]
    # A dead address first: skipped.
    async with HostClient.connect(f"unix://{c.sock}/gone.sock," + ",".join(addresses)) as host:
        started = await host.create_vm_snapshot("vm1", "s1", request_id="req-s1")
        assert host.replica == addresses[0]
        eventually(
            lambda: ["take", started.vm_snapshot_id] in c.driver_state("a")["calls"],
            what="take on a",
        )
        c.procs["host-1"].signal(signal.SIGKILL)
        c.procs["host-1"].popen.wait()
        # The same request again reaches the other replica: the same operation.
        again = await host.create_vm_snapshot("vm1", "s1", request_id="req-s1")
        assert again.id == started.id and host.replica == addresses[1]
        done = await host.wait(started.id, timeout=LEASE_SECONDS + 10)
        assert done.done and done.vm_snapshot is not None
        assert done.vm_snapshot.state is VMSnapshotState.ERROR


@pytest.fixture
def hanging_revert(sockdir: Path, tmp_path: Path, pg_url: str) -> Iterator[Replicas]:
    yield from replicas(
        sockdir, tmp_path, pg_url, 2, {"a": ["--behaviour", "hang", "--fail-on", "revert"]}
    )


def test_a_replica_killed_mid_revert_is_settled_by_another(hanging_revert: Replicas) -> None:
    c = hanging_revert
    c.use("host-1")
    c.define_vm("vm1", start=False)
    sid = c.wait(c.create("vm1", "s1")).vm_snapshot_id
    request = pb.RevertVMSnapshotRequest(request_id="rv1", id=sid, stop_vm=True)
    op = c.host.RevertVMSnapshot(request, timeout=10).operation
    eventually(lambda: sid in c.driver_state("a")["reverted"], what="the revert on a")
    c.procs["host-1"].signal(signal.SIGKILL)
    c.procs["host-1"].popen.wait()
    killed = time.monotonic()

    c.use("host-2")
    done = c.wait(op, seconds=LEASE_SECONDS + 10)
    assert time.monotonic() - killed < LEASE_SECONDS + 5
    # Settled on one side, and it says which; the snapshot is READY either way.
    assert done.vm_snapshot.state == pb.VM_SNAPSHOT_STATE_READY, done
    if done.error.code:
        assert "put back" in done.error.message, done.error
    # The states kept for undoing it are gone from the arrays; the snapshot stays.
    eventually(
        lambda: set(c.driver_state("a")["snapshots"]) == {sid}
        and set(c.driver_state("b")["snapshots"]) == {sid},
        timeout=10,
        what="the kept states deleted",
    )
    running = c.host.ListOperations(pb.ListOperationsRequest(only_running=True), timeout=5)
    assert list(running.operations) == []



def test_a_driver_registered_through_one_replica_reaches_the_others(
    hanging_a: Replicas,
) -> None:
    c = hanging_a
    c.start_driver("c")
    address = f"unix://{c.sock}/c.sock"
    c.on("host-1").RegisterDriver(pb.RegisterDriverRequest(address=address, order=2), timeout=10)

    def names(replica: str) -> set[str]:
        drivers = c.on(replica).ListDrivers(pb.ListDriversRequest(), timeout=5).drivers
        return {d.name for d in drivers}

    eventually(lambda: "io.vmsnap.test.c" in names("host-2"), timeout=10, what="c on host-2")
    c.on("host-2").RemoveDriver(pb.RemoveDriverRequest(name="io.vmsnap.test.c"), timeout=10)
    eventually(lambda: "io.vmsnap.test.c" not in names("host-1"), timeout=10, what="c gone")
