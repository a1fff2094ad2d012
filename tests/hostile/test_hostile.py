"""The hostile-driver suite: one misbehaving driver must not hurt the host or other VMs.

Real processes over unix sockets (``tests/host/e2e.py``): the host, the sim
agent, one good fake driver (``io.vmsnap.test.a``, scheme ``a``) and one
hostile driver (``io.vmsnap.test.h``, scheme ``h``, ``tests/hostile/drivers.py``).

For each mode: a VM on the good driver alone keeps working (its snapshot is
READY, without waiting on the hostile driver); a VM with disks on both drivers
gets a failed take — an ERROR snapshot whose cause names the hostile driver
and the rule it broke (or, for a driver that cannot answer CanHandle, a create
refused with an error naming it) — its VM is thawed, nothing of that take is
left on either driver, and every client can still list operations, snapshots
and drivers with gRPC's default message limits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.host.e2e import Cluster, eventually
from tests.hostile.drivers import MODES, held
from vmsnap_sdk._errors import from_rpc_error
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_sdk._proto.host.v1 import host_pb2_grpc

GOOD = "io.vmsnap.test.a"
HOSTILE = "io.vmsnap.test.h"
#: A cause is the host's sentence around the driver's: bounded, whatever the driver sent.
MAX_CAUSE = 4096
#: The good VM's create must not wait on the hostile driver (the host's per-call
#: timeout in this stack is 3 s; a hang used to delay every create by it, or fail it).
GOOD_VM_SECONDS = 10.0


@dataclass(frozen=True)
class Expect:
    """What the failed take's cause must say besides the hostile driver's name."""

    says: str
    #: The create may be refused before a snapshot exists (the plan needs CanHandle).
    may_refuse: bool = False


EXPECT: dict[str, Expect] = {
    "extra-volume": Expect("take.covers_requested_volumes"),
    "missing-volume": Expect("take.covers_requested_volumes"),
    "no-volumes": Expect("take.covers_requested_volumes"),
    "swap-on-poll": Expect("take.retry_same_result"),
    "huge-handle": Expect("take.size_limits"),
    "huge-labels": Expect("take.size_limits"),
    "huge-reason": Expect("can_handle.size_limits", may_refuse=True),
    "canhandle-fails": Expect("CanHandle", may_refuse=True),
    "canhandle-hangs": Expect("CanHandle", may_refuse=True),
    "garbage-details": Expect("malformed error details"),
    "huge-error": Expect("size limits"),
    "unavailable-after-cut": Expect("the array stopped answering after the cut"),
}
# Modes with a test of their own below.
OWN_TEST = {"impostor", "huge-info", "garbage-health"}


def test_every_mode_is_tested() -> None:
    assert set(EXPECT) | OWN_TEST == set(MODES)


def start_hostile(c: Cluster, mode: str, slot: str = "b") -> str:
    """Start the hostile driver in a slot of the host's config; returns its address."""
    c._start(
        slot,
        [
            "-m",
            "tests.hostile.drivers",
            "--mode",
            mode,
            "--name",
            HOSTILE,
            "--scheme",
            "h",
            "--state",
            str(c.work / "h.json"),
            "--grace",
            "0",
        ],
    )
    return f"unix://{c.sock}/{slot}.sock"


def define(c: Cluster, vm_id: str, *locators: str) -> None:
    volumes = [
        common_pb2.Volume(disk=f"vd{chr(ord('a') + i)}", locator=loc)
        for i, loc in enumerate(locators)
    ]
    c.host.DefineVM(
        pb.DefineVMRequest(vm=common_pb2.VM(id=vm_id, name=vm_id, memory_mib=64, volumes=volumes)),
        timeout=10,
    )
    c.host.StartVM(pb.StartVMRequest(vm_id=vm_id), timeout=10)


@pytest.fixture
def base(sockdir: Path, tmp_path: Path) -> Iterator[Cluster]:
    """Agent and good driver running; the test starts the hostile one and the host."""
    c = Cluster(sockdir, tmp_path)
    try:
        with c.together():
            c.start_agent()
            c.start_driver("a")
        yield c
    finally:
        c.close()


def every_client_can_still_list(c: Cluster) -> None:
    """A client with gRPC's default limits (4 MiB answers) lists everything."""
    with grpc.insecure_channel(f"unix://{c.sock}/host.sock") as channel:
        host = host_pb2_grpc.VMSnapshotServiceStub(channel)
        ops = host.ListOperations(pb.ListOperationsRequest(page_size=1000), timeout=10)
        assert ops.operations
        for vm_id in ("good", "bad"):
            host.ListVMSnapshots(pb.ListVMSnapshotsRequest(vm_id=vm_id), timeout=10)
        host.ListDrivers(pb.ListDriversRequest(), timeout=10)
        for op in ops.operations:
            assert len(op.SerializeToString()) < 256 * 1024, op.id


def failed_take(c: Cluster, expect: Expect) -> str:
    """Create a snapshot of the VM with disks on both drivers; returns the failure's text."""
    try:
        op = c.create("bad", "s1")
    except grpc.RpcError as exc:
        error = from_rpc_error(exc)  # type: ignore[arg-type]
        assert expect.may_refuse, f"the create was refused: {error}"
        # Not UNKNOWN: that is a client that could not read the host's answer.
        assert error.code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.INTERNAL,
        ), error
        return error.message
    done = c.wait(op, 60)
    assert done.HasField("error"), done
    snapshot = c.host.GetVMSnapshot(pb.GetVMSnapshotRequest(id=op.vm_snapshot_id), timeout=10)
    snap = snapshot.vm_snapshot
    assert snap.state == pb.VM_SNAPSHOT_STATE_ERROR, snap
    assert snap.error.message == done.error.message
    return str(snap.error.message)


@pytest.mark.parametrize("mode", sorted(EXPECT))
def test_a_hostile_driver_fails_only_its_own_take(base: Cluster, mode: str) -> None:
    c = base
    start_hostile(c, mode)
    c.start_host()
    define(c, "good", "a://pool/1")
    define(c, "bad", "h://pool/1", "h://pool/2", "a://pool/3")

    cause = failed_take(c, EXPECT[mode])
    assert HOSTILE in cause, cause
    assert EXPECT[mode].says in cause, cause
    assert len(cause) <= MAX_CAUSE, len(cause)

    started = time.monotonic()
    good = c.wait(c.create("good", "s1"), 60)
    assert not good.HasField("error"), good.error
    assert good.vm_snapshot.state == pb.VM_SNAPSHOT_STATE_READY
    assert time.monotonic() - started < GOOD_VM_SECONDS

    eventually(lambda: not c.frozen("bad"), what="the bad VM thawed")
    assert not c.frozen("good")
    hostile = f"unix://{c.sock}/b.sock"
    eventually(lambda: held(hostile) == {}, what="nothing left on the hostile driver")
    eventually(
        lambda: set(c.driver_state("a")["snapshots"]) == {good.vm_snapshot_id},
        what="only the good VM's snapshot left on the good driver",
    )
    every_client_can_still_list(c)


def test_a_driver_with_huge_labels_is_not_served_and_every_client_can_list(
    base: Cluster,
) -> None:
    c = base
    address = start_hostile(c, "huge-info")
    c.start_host()
    define(c, "good", "a://pool/1")
    good = c.wait(c.create("good", "s1"), 60)
    assert good.vm_snapshot.state == pb.VM_SNAPSHOT_STATE_READY

    with grpc.insecure_channel(f"unix://{c.sock}/host.sock") as channel:
        host = host_pb2_grpc.VMSnapshotServiceStub(channel)
        drivers = host.ListDrivers(pb.ListDriversRequest(), timeout=10).drivers
    hostile = [d for d in drivers if d.address == address]
    assert all(d.health != pb.HEALTH_SERVING for d in hostile), hostile
    assert all("info.size_limits" in d.health_message for d in hostile), hostile
    assert all(len(d.SerializeToString()) < 64 * 1024 for d in drivers)
    every_client_can_still_list(c)


def health(c: Cluster) -> dict[str, tuple[int, str]]:
    drivers = c.host.ListDrivers(pb.ListDriversRequest(), timeout=10).drivers
    return {d.address: (d.health, d.health_message) for d in drivers}


def test_garbage_in_one_drivers_health_check_does_not_stop_the_others(base: Cluster) -> None:
    """Malformed error details used to kill the health loop for every driver and agent:
    later a dead driver stayed SERVING."""
    c = base
    address = start_hostile(c, "garbage-health")
    c.start_host()
    good = f"unix://{c.sock}/a.sock"
    eventually(
        lambda: (
            health(c)[address][0] == pb.HEALTH_NOT_SERVING
            and "malformed error details" in health(c)[address][1]
        ),
        what="the hostile driver reported not serving, saying why",
    )
    assert health(c)[good][0] == pb.HEALTH_SERVING
    c.procs["a"].kill()
    eventually(
        lambda: health(c)[good][0] == pb.HEALTH_NOT_SERVING,
        timeout=10,
        what="the dead good driver noticed by the health loop",
    )


def test_an_impostor_cannot_take_over_a_live_drivers_name(base: Cluster) -> None:
    c = base
    c.start_driver("b")
    c.start_host()
    impostor = start_hostile(c, "impostor", slot="impostor")  # announces io.vmsnap.test.a

    with pytest.raises(grpc.RpcError) as caught:
        c.host.RegisterDriver(pb.RegisterDriverRequest(address=impostor), timeout=10)
    error = from_rpc_error(caught.value)  # type: ignore[arg-type]
    assert error.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS)
    assert GOOD in error.message and f"unix://{c.sock}/a.sock" in error.message, error.message

    drivers = c.host.ListDrivers(pb.ListDriversRequest(), timeout=10).drivers
    named = [(d.address, d.health) for d in drivers if d.name == GOOD]
    assert named == [(f"unix://{c.sock}/a.sock", pb.HEALTH_SERVING)]

    # The real driver keeps receiving the calls for its name; the impostor none.
    define(c, "good", "a://pool/1")
    op = c.wait(c.create("good", "s1"), 60)
    assert op.vm_snapshot.state == pb.VM_SNAPSHOT_STATE_READY
    assert ["take", op.vm_snapshot_id] in c.driver_state("a")["calls"]
    delete = c.host.DeleteVMSnapshot(
        pb.DeleteVMSnapshotRequest(request_id="d1", id=op.vm_snapshot_id), timeout=10
    ).operation
    assert c.wait(delete).vm_snapshot.state == pb.VM_SNAPSHOT_STATE_REMOVED
    assert ["delete", op.vm_snapshot_id] in c.driver_state("a")["calls"]
    assert c.driver_state("a")["snapshots"] == {}
    assert c.driver_state("h")["calls"] == [], "the impostor was called"
