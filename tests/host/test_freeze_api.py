"""The freeze API for third-party tools (FreezeVM / RenewFreeze / ThawVM and
``vmsnap vm freeze``): real host, sim agent and fake drivers over unix sockets."""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.host.e2e import Cluster, cluster, eventually
from tests.support.procs import Proc
from vmsnap_sdk._errors import from_rpc_error
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One stack for the tests that leave it as they found it (each its own VM):
    starting the four processes is most of a test's time."""
    sock = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    try:
        yield from cluster(sock, tmp_path_factory.mktemp("freeze"), {})
    finally:
        shutil.rmtree(sock, ignore_errors=True)


@pytest.fixture
def stack(sockdir: Path, tmp_path: Path) -> Iterator[Cluster]:
    yield from cluster(sockdir, tmp_path, {})


def _freeze(c: Cluster, request_id: str, lease: float, vm_id: str = "vm1") -> pb.FreezeVMResponse:
    request = pb.FreezeVMRequest(request_id=request_id, vm_id=vm_id)
    request.lease.FromNanoseconds(int(lease * 1e9))
    return c.host.FreezeVM(request, timeout=10)


def _refused(call: object) -> tuple[grpc.StatusCode, str]:
    assert isinstance(call, grpc.RpcError)
    error = from_rpc_error(call)  # type: ignore[arg-type]
    return error.code, error.reason


def _expect(code: grpc.StatusCode, reason: str, fn: object, *args: object) -> str:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, timeout=10)  # type: ignore[operator]
    assert _refused(info.value) == (code, reason), info.value
    return str(info.value.details())  # type: ignore[attr-defined]


def test_freeze_renew_thaw_round_trip_excludes_snapshots(shared: Cluster) -> None:
    c = shared
    c.define_vm("rt")
    frozen = _freeze(c, "f1", 3.0, "rt")
    assert frozen.token and frozen.operation_id
    assert frozen.consistency != common_pb2.CONSISTENCY_UNSPECIFIED
    assert c.frozen("rt")
    # A retry with the same request_id is the same freeze, not a second one.
    assert _freeze(c, "f1", 3.0, "rt").token == frozen.token

    # No take, revert or delete while the caller's freeze holds: refused, not queued.
    message = _expect(
        grpc.StatusCode.ABORTED,
        "VM_FROZEN",
        c.host.CreateVMSnapshot,
        pb.CreateVMSnapshotRequest(request_id="c1", vm_id="rt", name="s1"),
    )
    assert frozen.operation_id in message
    # Nor a second freeze.
    _expect(grpc.StatusCode.ABORTED, "VM_FROZEN", c.host.FreezeVM, _request("f2", 3.0, "rt"))

    renew = pb.RenewFreezeRequest(token=frozen.token)
    renew.lease.FromSeconds(3)
    renewed = c.host.RenewFreeze(renew, timeout=10)
    assert renewed.expire_time.ToNanoseconds() >= frozen.expire_time.ToNanoseconds()

    thawed = c.host.ThawVM(pb.ThawVMRequest(token=frozen.token), timeout=10)
    assert thawed.frozen.ToNanoseconds() > 0
    assert not c.frozen("rt")
    # Idempotent: thawing again says the same.
    c.host.ThawVM(pb.ThawVMRequest(token=frozen.token), timeout=10)
    op = c.host.GetOperation(pb.GetOperationRequest(id=frozen.operation_id), timeout=5).operation
    assert op.done and not op.HasField("error") and op.type == pb.OPERATION_TYPE_FREEZE

    # At once, the VM can be frozen again (the freeze's lease passes on).
    second = _freeze(c, "f3", 3.0, "rt")
    c.host.ThawVM(pb.ThawVMRequest(token=second.token), timeout=10)
    # The VM is free again: a take runs.
    taken = c.wait(c.create("rt", "after"))
    assert not taken.HasField("error"), taken.error

    # A wrong token is NOT_FOUND, never another freeze's.
    _expect(
        grpc.StatusCode.NOT_FOUND,
        "FREEZE_NOT_FOUND",
        c.host.ThawVM,
        pb.ThawVMRequest(token=frozen.operation_id + ".guess"),
    )


def _request(request_id: str, lease: float, vm_id: str) -> pb.FreezeVMRequest:
    request = pb.FreezeVMRequest(request_id=request_id, vm_id=vm_id)
    request.lease.FromNanoseconds(int(lease * 1e9))
    return request


def test_a_freeze_nobody_renews_lapses_and_thaw_says_so(shared: Cluster) -> None:
    c = shared
    c.define_vm("lapse")
    frozen = _freeze(c, "l1", 1.0, "lapse")
    assert c.frozen("lapse")
    eventually(lambda: not c.frozen("lapse"), 5, "the lease to thaw the VM")
    message = _expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        "FREEZE_EXPIRED",
        c.host.ThawVM,
        pb.ThawVMRequest(token=frozen.token),
    )
    assert "writes may have resumed" in message
    renew = pb.RenewFreezeRequest(token=frozen.token)
    renew.lease.FromSeconds(5)
    _expect(grpc.StatusCode.FAILED_PRECONDITION, "FREEZE_EXPIRED", c.host.RenewFreeze, renew)
    op = c.host.GetOperation(pb.GetOperationRequest(id=frozen.operation_id), timeout=5).operation
    assert op.done and op.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]


def test_a_freeze_outlives_a_host_restart_within_its_lease(shared: Cluster) -> None:
    """The host restarts while a caller's freeze holds: recovery holds it on (the
    caller may still renew), and the caller's token renews and thaws it."""
    c = shared
    c.define_vm("restart")
    frozen = _freeze(c, "r1", 20.0, "restart")
    c.procs["host"].signal(signal.SIGKILL)
    c.start_host()
    assert c.frozen("restart")
    renew = pb.RenewFreezeRequest(token=frozen.token)
    renew.lease.FromSeconds(20)
    eventually(lambda: _renewed(c, renew), 10, "the restarted host to serve RenewFreeze")
    c.host.ThawVM(pb.ThawVMRequest(token=frozen.token), timeout=10)
    assert not c.frozen("restart")
    op = c.host.GetOperation(pb.GetOperationRequest(id=frozen.operation_id), timeout=5).operation
    assert op.done and not op.HasField("error"), op


def _renewed(c: Cluster, request: pb.RenewFreezeRequest) -> bool:
    try:
        c.host.RenewFreeze(request, timeout=5)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
            return False
        raise
    return True


def _cli(c: Cluster, tmp_path: Path, lease: str, script: str, name: str, vm_id: str) -> Proc:
    return Proc(
        [
            sys.executable,
            "-m",
            "vmsnap_host.cli",
            "--host",
            f"unix://{c.sock}/host.sock",
            "vm",
            "freeze",
            vm_id,
            "--lease",
            lease,
            "--",
            sys.executable,
            "-c",
            script,
        ],
        tmp_path / f"{name}.log",
    )


def test_cli_runs_the_command_inside_the_freeze_with_its_exit_code(
    shared: Cluster, tmp_path: Path
) -> None:
    c = shared
    c.define_vm("cli")
    seen = tmp_path / "seen"
    script = (
        "import os, sys; from pathlib import Path; "
        f"Path({str(seen)!r}).write_text(os.environ['VMSNAP_FREEZE_CONSISTENCY']); sys.exit(3)"
    )
    cli = _cli(c, tmp_path, "2s", script, "cli", "cli")
    try:
        assert cli.popen.wait(60) == 3, cli.output()
    finally:
        cli.stop(5)
    assert seen.read_text() in ("CRASH", "FILESYSTEM", "APPLICATION")
    assert not c.frozen("cli")
    assert "thawed after" in cli.output()


def test_cli_freeze_lapses_when_renewals_stop_and_the_command_is_told(
    stack: Cluster, tmp_path: Path
) -> None:
    """The acceptance test: `vmsnap vm freeze VM --lease 5s -- sleep 60`, then the
    host is killed so that no renewal gets through: the agent thaws the VM ~5 s
    after the last renewal, the command gets SIGTERM, the CLI exits 75, and the
    restarted host records the freeze as lapsed."""
    c = stack
    c.define_vm("vm1")
    started, told = tmp_path / "started", tmp_path / "told"
    script = (
        "import signal, sys, time; from pathlib import Path\n"
        "def term(*_):\n"
        f"    Path({str(told)!r}).write_text('SIGTERM'); sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        f"Path({str(started)!r}).write_text('x')\n"
        "time.sleep(60)\n"
    )
    cli = _cli(c, tmp_path, "5s", script, "cli", "vm1")
    try:
        _lapse(c, cli, started)
    finally:
        cli.stop(5)
    assert told.read_text() == "SIGTERM"
    assert "writes may" in cli.output()

    # Recovery records the lapse; the VM takes snapshots again.
    c.start_host()
    op = eventually(
        lambda: next(
            (
                o
                for o in c.host.ListOperations(
                    pb.ListOperationsRequest(vm_id="vm1"), timeout=5
                ).operations
                if o.type == pb.OPERATION_TYPE_FREEZE and o.done
            ),
            None,
        ),
        10,
        "recovery to end the freeze",
    )
    assert op.HasField("error")
    taken = c.wait(c.create("vm1", "after"))
    assert not taken.HasField("error"), taken.error


def _lapse(c: Cluster, cli: Proc, started: Path) -> None:
    eventually(started.exists, 30, "the command to start")
    assert c.frozen("vm1")
    time.sleep(2.0)  # at least one renewal got through
    assert c.frozen("vm1")
    c.procs["host"].signal(signal.SIGKILL)
    killed = time.monotonic()
    eventually(lambda: not c.frozen("vm1"), 10, "the agent's lease to thaw the VM")
    thawed_after = time.monotonic() - killed
    # The last renewal was at most 5/3 s before the kill: the lease ends 3.3..5 s after it.
    assert 3.0 <= thawed_after <= 7.0, thawed_after
    assert cli.popen.wait(20) == 75, cli.output()
