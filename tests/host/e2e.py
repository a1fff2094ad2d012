"""Real processes over unix sockets: the host, the sim agent, fake drivers."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tests.support.procs import Proc, stop_all, wait_serving
from vmsnap_agent.sim import load_state
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_sdk._proto.host.v1 import host_pb2_grpc

CONFIG = """
[host]
quiesce_lease_seconds = 2
take_timeout_seconds = 5
call_timeout_seconds = 3
health_interval_seconds = 0.2
reconcile_interval_seconds = 0.3
max_snapshots_per_vm = 3
queue_bound = 1

[[drivers]]
address = "unix://{sock}/a.sock"
order = 0

[[drivers]]
address = "unix://{sock}/b.sock"
order = 1

[[agents]]
address = "unix://{sock}/agent.sock"
"""


def eventually(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


@dataclass
class Cluster:
    sock: Path
    work: Path
    procs: dict[str, Proc] = field(default_factory=dict)
    channel: grpc.Channel | None = None
    #: Flags every process gets (e.g. --metrics-listen 127.0.0.1:0).
    common_flags: tuple[str, ...] = ()
    #: The host's configuration (``{sock}`` is the socket directory).
    config: str = CONFIG
    #: Environment every process gets on top of the test's (e.g. OTEL_*).
    env: dict[str, str] = field(default_factory=dict)
    #: Inside :meth:`together`: the started processes not yet waited for.
    _starting: list[tuple[str, str, Proc]] | None = None

    @property
    def host(self) -> host_pb2_grpc.VMSnapshotServiceStub:
        assert self.channel is not None
        return host_pb2_grpc.VMSnapshotServiceStub(self.channel)

    def start_agent(self) -> None:
        self._start(
            "agent",
            ["-m", "vmsnap_agent.cli", "--hypervisor", "sim", "--state", str(self.work / "agent")],
        )

    def start_driver(self, letter: str, *flags: str) -> None:
        self._start(
            letter,
            [
                "-m",
                "tests.fakes.driver",
                "--name",
                f"io.vmsnap.test.{letter}",
                "--scheme",
                letter,
                "--state",
                str(self.work / f"{letter}.json"),
                *flags,
            ],
        )

    def start_host(self) -> None:
        config = self.work / "host.toml"
        config.write_text(self.config.format(sock=self.sock))
        self._start(
            "host",
            [
                "-m",
                "vmsnap_host",
                "--db",
                str(self.work / "host.db"),
                "--config",
                str(config),
                "--instance-id",
                "test-host",
            ],
        )
        if self.channel is None:
            self.channel = grpc.insecure_channel(f"unix://{self.sock}/host.sock")

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Start the processes of the block at once and wait for all at its end: a
        start is mostly the interpreter's and the imports' time, so starting the
        agent and the drivers in turn made a cluster's set-up twice as long."""
        self._starting = []
        try:
            yield
        finally:
            starting, self._starting = self._starting, None
        for name, address, proc in starting:
            self._wait(name, address, proc)

    def _start(self, name: str, args: list[str]) -> None:
        address = f"unix://{self.sock}/{name}.sock"
        old = self.procs.pop(name, None)
        if old is not None:
            old.stop(5)  # reaps it and closes its log
        proc = Proc(
            [sys.executable, *args, *self.common_flags, "--listen", address],
            self.work / f"{name}.log",
            env=self.env,
        )
        self.procs[name] = proc
        if self._starting is not None:
            self._starting.append((name, address, proc))
        else:
            self._wait(name, address, proc)

    @staticmethod
    def _wait(name: str, address: str, proc: Proc) -> None:
        try:
            wait_serving(address)
        except TimeoutError:
            raise AssertionError(f"{name} did not start:\n{proc.output()}") from None

    def driver_state(self, letter: str) -> dict[str, Any]:
        path = self.work / f"{letter}.json"
        return json.loads(path.read_text()) if path.exists() else {"calls": [], "snapshots": {}}

    def agent_state(self) -> dict[str, Any]:
        # The sim agent's state, every VM, in one document (its version 1 shape).
        return load_state(self.work / "agent").to_json()

    def metrics_url(self, name: str) -> str:
        """The /metrics URL a process announced on its first stdout line."""
        for line in self.procs[name].output().splitlines():
            if line.startswith("{") and '"metrics"' in line:
                return str(json.loads(line)["metrics"])
        raise AssertionError(f"{name} announced no metrics URL:\n{self.procs[name].output()}")

    def frozen(self, vm_id: str) -> bool:
        return self.agent_state()["vms"][vm_id]["freeze"] is not None

    def define_vm(self, vm_id: str, *, start: bool = True) -> None:
        vm = common_pb2.VM(
            id=vm_id,
            name=vm_id,
            memory_mib=64,
            volumes=[
                common_pb2.Volume(disk="vda", locator="a://pool/1"),
                common_pb2.Volume(disk="vdb", locator="b://pool/2"),
                common_pb2.Volume(disk="vdc", locator="file:///var/lib/vms/3.img"),
            ],
        )
        self.host.DefineVM(pb.DefineVMRequest(vm=vm), timeout=10)
        if start:
            self.host.StartVM(pb.StartVMRequest(vm_id=vm_id), timeout=10)

    def create(self, vm_id: str, name: str, request_id: str = "", **kw: Any) -> pb.Operation:
        return self.host.CreateVMSnapshot(
            pb.CreateVMSnapshotRequest(
                request_id=request_id or f"r-{vm_id}-{name}", vm_id=vm_id, name=name, **kw
            ),
            timeout=10,
        ).operation

    def wait(self, op: pb.Operation, seconds: float = 20) -> pb.Operation:
        request = pb.WaitOperationRequest(id=op.id)
        request.timeout.FromSeconds(int(seconds))
        done = self.host.WaitOperation(request, timeout=seconds + 5).operation
        assert done.done, done
        return done

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        stop_all(list(self.procs.values()), 5)


def cluster(
    sockdir: Path,
    tmp_path: Path,
    driver_flags: dict[str, list[str]],
    common_flags: tuple[str, ...] = (),
    *,
    config: str = CONFIG,
    env: dict[str, str] | None = None,
) -> Iterator[Cluster]:
    c = Cluster(sockdir, tmp_path, common_flags=common_flags, config=config, env=env or {})
    try:
        with c.together():
            c.start_agent()
            for letter in ("a", "b"):
                c.start_driver(letter, *driver_flags.get(letter, []))
        c.start_host()
        yield c
    finally:
        c.close()


def module_cluster(
    tmp_path_factory: Any, name: str, driver_flags: dict[str, list[str]] | None = None
) -> Iterator[Cluster]:
    """A cluster for a module's tests that leave it as they found it, each with VMs
    (and request ids) of its own: starting the four processes is most of a test's
    time. ``tmp_path_factory`` is pytest's; the sockets go to a short /tmp dir."""
    sock = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    try:
        yield from cluster(sock, tmp_path_factory.mktemp(name), driver_flags or {})
    finally:
        shutil.rmtree(sock, ignore_errors=True)
