"""Live events, cancel and traces with real processes over unix sockets: the host,
the sim agent, fake drivers, and the `vmsnap` CLI (in a pseudo-terminal for Ctrl-C).
docs/design.md, "Live events, cancel and traces"."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pexpect
import pytest

from tests.host.e2e import CONFIG, Cluster, cluster, eventually
from tests.support.procs import ROOT
from vmsnap_host.client import SyncHostClient
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb

#: Takes may wait on the test's barrier for a while: no take deadline in the way.
SLOW_CONFIG = CONFIG.replace("take_timeout_seconds = 5", "take_timeout_seconds = 30").replace(
    "call_timeout_seconds = 3", "call_timeout_seconds = 30"
)
CANCELLED = grpc.StatusCode.CANCELLED.value[0]


@pytest.fixture
def held(sockdir: Path, tmp_path: Path) -> Iterator[tuple[Cluster, Path]]:
    """Driver a holds every take (the cut made, the answer held back) until the
    test adds a file to the barrier directory; driver b answers at once."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    flags = ["--behaviour", "barrier", "--barrier", str(barrier), "--peers", "2"]
    for c in cluster(sockdir, tmp_path, {"a": flags}, config=SLOW_CONFIG):
        yield c, barrier


def _define(c: Cluster, vm_id: str, *locators: str, start: bool = False) -> None:
    volumes = [
        common_pb2.Volume(disk=f"vd{chr(97 + i)}", locator=loc) for i, loc in enumerate(locators)
    ]
    c.host.DefineVM(
        pb.DefineVMRequest(vm=common_pb2.VM(id=vm_id, name=vm_id, memory_mib=64, volumes=volumes)),
        timeout=10,
    )
    if start:
        c.host.StartVM(pb.StartVMRequest(vm_id=vm_id), timeout=10)


def _cli(c: Cluster) -> list[str]:
    return [sys.executable, "-m", "vmsnap_host.cli", "--host", f"unix://{c.sock}/host.sock"]


def test_ctrl_c_names_the_operation_and_cancel_rolls_the_take_back(
    held: tuple[Cluster, Path],
) -> None:
    c, barrier = held
    _define(c, "vm1", "a://pool/1")  # stopped, one group: no freeze, the take waits
    command = _cli(c)
    child = pexpect.spawn(
        command[0],
        [*command[1:], "snapshot", "create", "vm1", "s1"],
        cwd=str(ROOT),
        env={**os.environ, "COLUMNS": "200"},
        encoding="utf-8",
        timeout=30,
        dimensions=(24, 200),
    )
    try:
        eventually((barrier / "io.vmsnap.test.a").exists, what="the take on a")
        # The CLI has the host's answer once it shows the operation's progress: the
        # take can reach the array before that answer reaches the CLI (then a
        # Ctrl-C is "interrupted before the host answered", also right).
        child.expect(r"\d+%")
        shown = child.before or ""
        child.sendintr()
        child.expect(pexpect.EOF)
        printed = shown + (child.before or "")
    finally:
        child.close(force=True)
    assert child.exitstatus == 130, printed
    found = re.search(r"operation ([0-9a-f]{32}) goes on", printed)
    assert found, printed
    op_id = found.group(1)
    assert f"events --follow --operation {op_id}" in printed
    assert f"operations show {op_id}" in printed
    assert f"operations cancel {op_id}" in printed

    cancel = subprocess.run(
        [*command, "operations", "cancel", op_id],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cancel.returncode == 0, cancel.stderr
    assert f"cancel of operation {op_id} recorded" in cancel.stdout

    (barrier / "release").touch()  # the take answers; the host rolls it back
    done = c.wait(pb.Operation(id=op_id))
    assert done.error.code == CANCELLED, done.error
    assert "rolled back" in done.error.message
    # Nothing left on the array (the driver's own record), the catalog says ERROR.
    assert c.driver_state("a")["snapshots"] == {}
    listed = c.host.ListVMSnapshots(pb.ListVMSnapshotsRequest(vm_id="vm1"), timeout=5)
    assert [s.state for s in listed.vm_snapshots] == [pb.VM_SNAPSHOT_STATE_ERROR]

    # Refusals name what to fix, with the contract's reasons.
    with pytest.raises(grpc.RpcError) as unknown:
        list(c.host.WatchOperations(pb.WatchOperationsRequest(operation_id="nope"), timeout=10))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as bad:
        c.host.CancelOperation(pb.CancelOperationRequest(operation_id="no such id!"), timeout=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    again = subprocess.run(
        [*command, "operations", "cancel", op_id],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 4  # refused: FAILED_PRECONDITION (vmsnap --help, exit codes)
    assert "FAILED_PRECONDITION" in again.stderr and "finished already" in again.stderr


class _Lines:
    """A process's stdout lines as they come (a reader thread)."""

    def __init__(self, popen: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._popen = popen
        self._thread = threading.Thread(target=self._read, args=(popen,), daemon=True)
        self._thread.start()

    def _read(self, popen: subprocess.Popen[str]) -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            self.lines.append(line)

    def close(self) -> None:
        """After the process ended: the reader saw the end of its output."""
        self._thread.join(10)
        assert self._popen.stdout is not None
        self._popen.stdout.close()

    def finished(self, operation_id: str) -> bool:
        return any(e["done"] for e in self.events(operation_id))

    def events(self, operation_id: str) -> list[dict[str, object]]:
        out = []
        for line in list(self.lines):
            event = json.loads(line)
            if event["id"] == operation_id:
                out.append(event)
        return out


def _take_trace(spans_file: Path) -> list[dict[str, Any]]:
    """The spans of the trace that holds a take, once it has the agent's and the
    drivers' server spans (spans are batched: they come a little after)."""
    if not spans_file.exists():
        return []
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    takes = [s for s in spans if s["name"] == "vmsnap.take"]
    if not takes:
        return []
    trace = [s for s in spans if s["trace_id"] == takes[0]["trace_id"]]
    names = {(s["service"], s["name"], s["kind"]) for s in trace}
    wanted = {
        ("vmsnap-agent.SimAgent", "/vmsnap.hypervisor.v1.HypervisorAgent/Quiesce", "SERVER"),
        ("vmsnap-driver.FakeDriver", "/vmsnap.driver.v1.StorageDriver/TakeVMSnapshot", "SERVER"),
    }
    return trace if wanted <= names else []


def test_a_take_streams_its_steps_in_order_and_is_one_trace(sockdir: Path, tmp_path: Path) -> None:
    """`vmsnap events --follow` shows a take's steps as they happen, in order; the
    same take is one trace across the host, the agent and both drivers (one
    stack for both: the CI budget)."""
    spans_file = tmp_path / "spans.jsonl"
    env = {
        "OTEL_TRACES_EXPORTER": "vmsnap_jsonl",
        "VMSNAP_TRACES_FILE": str(spans_file),
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    for c in cluster(sockdir, tmp_path, {}, env=env):
        c.define_vm("vm1")
        first = c.wait(c.create("vm1", "s0"))
        follower = subprocess.Popen(
            [*_cli(c), "events", "--follow", "--vm", "vm1", "--since", "600", "--json"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        out = _Lines(follower)
        try:
            # Subscribed: the operations since --since come after the subscription.
            eventually(partial(out.finished, first.id), what="s0 replayed")
            op = c.wait(c.create("vm1", "s1"))
            assert not op.HasField("error"), op.error
            eventually(partial(out.finished, op.id), what="s1 streamed")
            seen = out.events(op.id)
        finally:
            follower.terminate()
            follower.wait(10)
            out.close()
        steps = [e["step"] for e in seen]
        # Started at once: its first step commits with its admission (never queued).
        assert steps == ["quiescing and taking 3 groups", "done"], steps
        progress = [int(str(e["progress_percent"])) for e in seen]
        assert progress == sorted(progress) and progress[-1] == 100
        assert seen[-1]["error"] is None

        # Without --follow: the operations changed lately, as they stand, then exit.
        recent = subprocess.run(
            [*_cli(c), "events", "--vm", "vm1", "--json"],
            check=True,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        listed = [json.loads(line) for line in recent.stdout.splitlines()]
        assert [(e["id"], e["step"]) for e in listed] == [(first.id, "done"), (op.id, "done")]

        # The blocking client: a watch of one operation ends after its final state.
        with SyncHostClient.connect(f"unix://{c.sock}/host.sock") as host:
            watched = list(host.watch_operations(operation_id=op.id))
            assert [o.id for o in watched] == [op.id] and watched[-1].succeeded
            assert host.follow(op.id, timeout=10).succeeded

        trace = eventually(lambda: _take_trace(spans_file), what="one trace in every process")
        services = {s["service"] for s in trace}
        assert {"vmsnap-host", "vmsnap-agent.SimAgent", "vmsnap-driver.FakeDriver"} <= services
        takes = [
            s
            for s in trace
            if s["name"] == "/vmsnap.driver.v1.StorageDriver/TakeVMSnapshot"
            and s["kind"] == "SERVER"
        ]
        assert len(takes) == 2  # both drivers, in the same trace
        take_span = next(s for s in trace if s["name"] == "vmsnap.take")
        assert take_span["attributes"]["vmsnap.operation_id"] in (first.id, op.id)
