"""Real processes for the security tests: a host (with a config of the test's
choosing), the sim agent and a fake driver, over unix sockets; gRPC stubs that
carry a bearer token or none."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.rpc import error_details_pb2, status_pb2

from tests.support.procs import Proc, wait_serving
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_sdk._proto.host.v1 import host_pb2_grpc

BASE = """
[host]
health_interval_seconds = 0.2
reconcile_interval_seconds = 0.5
call_timeout_seconds = 3
take_timeout_seconds = 5
quiesce_lease_seconds = 2

[[drivers]]
address = "unix://{sock}/a.sock"

[[agents]]
address = "unix://{sock}/agent.sock"
"""

#: Tokens of the test principals: name → (token, role, projects).
PRINCIPALS: dict[str, tuple[str, str, list[str]]] = {
    "root": ("tok-root-0123456789abcdef", "admin", ["*"]),
    "alice": ("tok-alice-0123456789abcdef", "operator", ["proj-a"]),
    "bob": ("tok-bob-0123456789abcdef", "operator", ["proj-b"]),
    "vera": ("tok-vera-0123456789abcdef", "viewer", ["proj-a"]),
}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def auth_config(extra: str = "") -> str:
    """An [auth] table with the test principals, their tokens stored hashed."""
    lines = ["[auth]", "required = true", extra, ""]
    for name, (token, role, projects) in PRINCIPALS.items():
        lines += [
            "[[auth.principals]]",
            f'name = "{name}"',
            f'role = "{role}"',
            f"projects = {projects!r}".replace("'", '"'),
            f'token_sha256 = ["{token_hash(token)}"]',
            "",
        ]
    return "\n".join(lines)


def code_and_reason(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    reason = ""
    for key, value in exc.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason = info.reason
    return exc.code(), reason  # type: ignore[attr-defined]


@dataclass
class Stack:
    sock: Path
    work: Path
    procs: dict[str, Proc] = field(default_factory=dict)
    channel: grpc.Channel | None = None
    host_args: tuple[str, tuple[str, ...]] = ("", ())

    @property
    def address(self) -> str:
        return f"unix://{self.sock}/host.sock"

    def start_peer(self, name: str, args: list[str]) -> None:
        address = f"unix://{self.sock}/{name}.sock"
        (self.sock / f"{name}.sock").unlink(missing_ok=True)
        proc = Proc([sys.executable, *args, "--listen", address], self.work / f"{name}.log")
        self.procs[name] = proc
        try:
            if "--tls-cert" in args:  # no plaintext health check: wait for its line
                deadline = time.monotonic() + 30
                while '"serving"' not in proc.output():
                    if time.monotonic() > deadline or proc.popen.poll() is not None:
                        raise TimeoutError
                    time.sleep(0.05)
            else:
                wait_serving(address)
        except TimeoutError:
            raise AssertionError(f"{name} did not start:\n{proc.output()}") from None

    def restart_host(self) -> None:
        config, extra = self.host_args
        self.start_host(config, *extra)

    def start_host(self, config: str, *extra: str) -> None:
        self.host_args = (config, extra)
        path = self.work / "host.toml"
        path.write_text(BASE.format(sock=self.sock) + "\n" + config)
        old = self.procs.pop("host", None)
        if old is not None:
            old.stop(5)
        self.start_peer(
            "host",
            [
                "-m",
                "vmsnap_host",
                "--db",
                str(self.work / "host.db"),
                "--config",
                str(path),
                "--instance-id",
                "sec-host",
                *extra,
            ],
        )
        if self.channel is None:
            self.channel = grpc.insecure_channel(self.address)

    def stub(self) -> host_pb2_grpc.VMSnapshotServiceStub:
        assert self.channel is not None
        return host_pb2_grpc.VMSnapshotServiceStub(self.channel)

    def as_(self, who: str | None) -> Caller:
        token = PRINCIPALS[who][0] if who else None
        return Caller(self.stub(), token)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        for proc in reversed(list(self.procs.values())):
            proc.stop(5)


class Caller:
    """Calls the host with one principal's token (or none): ``caller.GetVM(request)``."""

    def __init__(self, stub: host_pb2_grpc.VMSnapshotServiceStub, token: str | None) -> None:
        self._stub = stub
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __getattr__(self, method: str):  # type: ignore[no-untyped-def]
        rpc = getattr(self._stub, method)

        def call(request, timeout: float = 10):  # type: ignore[no-untyped-def]
            return rpc(request, timeout=timeout, metadata=self._metadata)

        return call


def vm(vm_id: str) -> common_pb2.VM:
    return common_pb2.VM(
        id=vm_id,
        name=vm_id,
        memory_mib=64,
        volumes=[
            common_pb2.Volume(disk="vda", locator="a://pool/" + vm_id),
            common_pb2.Volume(disk="vdb", locator="file:///var/lib/vms/" + vm_id),
        ],
    )


def wait_op(caller: Caller, op: pb.Operation, seconds: int = 20) -> pb.Operation:
    request = pb.WaitOperationRequest(id=op.id)
    request.timeout.FromSeconds(seconds)
    done: pb.Operation = caller.WaitOperation(request, timeout=seconds + 5).operation
    assert done.done, done
    return done


def stack(sock: Path, work: Path, *, peers: bool = True) -> Iterator[Stack]:
    """A Stack with the sim agent and fake driver "a" running (``peers``), no host yet."""
    s = Stack(sock, work)
    try:
        if not peers:
            yield s
            return
        s.start_peer(
            "agent",
            ["-m", "vmsnap_agent.cli", "--hypervisor", "sim", "--state", str(work / "agent")],
        )
        s.start_peer(
            "a",
            [
                "-m",
                "tests.fakes.driver",
                "--name",
                "io.vmsnap.test.a",
                "--scheme",
                "a",
                "--state",
                str(work / "a.json"),
            ],
        )
        yield s
    finally:
        s.close()
