"""Send generated and mutated requests to every RPC of the host, a driver served by
the SDK (the test suite's fake driver) and the sim agent, as real processes.

For each request the answer must be a status a client can act on: never
INTERNAL or UNKNOWN (a well-formed request is never a bug's business), never
DEADLINE_EXCEEDED (a hang). After the run every process still serves, and its
resident memory is back within 10 % of what it was after a warm-up.
"""

from __future__ import annotations

import collections
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import descriptor as d
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.fuzz.strategies import requests
from tests.security.harness import Stack, stack
from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._proto.host.v1 import host_pb2
from vmsnap_sdk._proto.hypervisor.v1 import hypervisor_pb2

#: Answers that mean a bug or a hang, for a request that parses.
#: A follow-forever stream is hung up after this long (then the process must serve).
STREAM_TIMEOUT = 1.0
BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
#: Per call: far more than any RPC of the stack needs on a made-up request.
CALL_TIMEOUT = 10.0
#: Resident memory after the run may exceed the one after the warm-up by this much.
RSS_SLACK = 0.10

SERVICES = {
    "host": [host_pb2.DESCRIPTOR.services_by_name["VMSnapshotService"]],
    "driver": [driver_pb2.DESCRIPTOR.services_by_name["StorageDriver"]],
    "agent": [hypervisor_pb2.DESCRIPTOR.services_by_name["HypervisorAgent"]],
}
SOCKETS = {"host": "host", "driver": "a", "agent": "agent"}


class Bad(AssertionError):
    """A request got INTERNAL, UNKNOWN or no answer in time."""


@dataclass
class Target:
    name: str
    address: str
    pid: int
    channel: grpc.Channel
    methods: list[d.MethodDescriptor]
    codes: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def sent(self) -> int:
        return sum(self.codes.values())

    def call(self, method: d.MethodDescriptor, request: Message) -> grpc.StatusCode:
        path = f"/{method.containing_service.full_name}/{method.name}"
        if method.server_streaming:
            return self._stream(path, request)
        rpc = self.channel.unary_unary(
            path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None
        )
        try:
            rpc(request, timeout=CALL_TIMEOUT)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
        self.codes[code.name] += 1
        return code

    def _stream(self, path: str, request: Message) -> grpc.StatusCode:
        """A server stream: read a few messages, then hang up. A stream that follows
        changes (WatchOperations) may stay open and silent: its deadline is no hang
        as long as the process still answers its health check."""
        rpc = self.channel.unary_stream(
            path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None
        )
        stream = rpc(request, timeout=STREAM_TIMEOUT)
        try:
            for n, _ in enumerate(stream):
                if n >= 3:
                    stream.cancel()  # type: ignore[attr-defined]
                    break
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.CANCELLED:
                code = grpc.StatusCode.OK  # we hung up
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED and self.serving():
                self.codes["STREAM_LEFT_OPEN"] += 1
                return grpc.StatusCode.OK
        self.codes[code.name] += 1
        return code

    def serving(self) -> bool:
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"{self.name}: no VmRSS for pid {self.pid}")


@contextmanager
def targets() -> Iterator[list[Target]]:
    """The host (auth off), the fake driver and the sim agent, each its own process."""
    sock = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="vmsnap-fuzz-"))
    try:
        for s in stack(sock, work):
            s.start_host("")
            yield [_target(s, name) for name in SERVICES]
    finally:
        shutil.rmtree(sock, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _target(s: Stack, name: str) -> Target:
    address = f"unix://{s.sock}/{SOCKETS[name]}.sock"
    methods = [m for service in SERVICES[name] for m in service.methods]
    return Target(name, address, s.procs[SOCKETS[name]].pid, grpc.insecure_channel(address), methods)


def fuzz(target: Target, count: int, random_seed: int) -> None:
    """Send ``count`` requests to ``target``; raises Bad (shrunk to a small request)."""

    @seed(random_seed)
    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def one(data: st.DataObject) -> None:
        method = data.draw(st.sampled_from(target.methods), label="method")
        request = data.draw(requests(method.input_type), label="request")
        code = target.call(method, request)
        if code in BAD:
            raise Bad(f"{target.name}.{method.name} answered {code.name} to {request!r}"[:4000])

    one()


@dataclass
class Report:
    sent: dict[str, int]
    codes: dict[str, dict[str, int]]
    rss_kib: dict[str, tuple[int, int]]
    seconds: float

    def lines(self) -> list[str]:
        out = [f"{sum(self.sent.values())} requests in {self.seconds:.1f} s"]
        for name, sent in self.sent.items():
            before, after = self.rss_kib[name]
            codes = ", ".join(f"{c} {n}" for c, n in sorted(self.codes[name].items()))
            out.append(
                f"  {name}: {sent} requests; RSS {before} → {after} KiB "
                f"({(after - before) / before:+.1%}); {codes}"
            )
        return out


def run(counts: dict[str, int], random_seed: int = 12) -> Report:
    """Fuzz each target with its count; checks health and memory; the report."""
    started = time.monotonic()
    with targets() as all_targets:
        by_name = {t.name: t for t in all_targets}
        before: dict[str, int] = {}
        for name, count in counts.items():
            target = by_name[name]
            warm = max(50, count // 10)
            fuzz(target, warm, random_seed)  # caches, pools and code paths warm
            before[name] = target.rss_kib()
            fuzz(target, count - warm, random_seed + 1)
        rss: dict[str, tuple[int, int]] = {}
        for name in counts:
            target = by_name[name]
            assert target.serving(), f"{name} stopped serving after the fuzz run"
            rss[name] = (before[name], target.rss_kib())
        report = Report(
            sent={n: by_name[n].sent for n in counts},
            codes={n: dict(by_name[n].codes) for n in counts},
            rss_kib=rss,
            seconds=time.monotonic() - started,
        )
        for name, (b, a) in rss.items():
            assert a <= b * (1 + RSS_SLACK), "\n".join(
                [f"{name}: RSS grew from {b} to {a} KiB", *report.lines()]
            )
        return report


__all__ = ["BAD", "Bad", "Report", "Target", "fuzz", "run", "targets"]
