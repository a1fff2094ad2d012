"""Start real server processes for tests and wait until they serve.

Every process is started in its own process group and killed at teardown, so
no test leaves one behind, whatever it did to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent.parent


def wait_serving(address: str, timeout: float = 20.0, service: str = "") -> None:
    """Block until the grpc.health.v1 check on ``address`` says SERVING."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{address} did not serve within {timeout} s: {last}")


class Proc:
    """A child process with its output captured to a file."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.log = log
        self._log_file = log.open("ab")
        self.popen = subprocess.Popen(
            self.args,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        self.signal(signal.SIGTERM)
        return self.reap(timeout)

    def reap(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the exit (SIGKILL after), close the log."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.popen.wait()
        self._log_file.close()
        return code

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait()


def stop_all(procs: Sequence[Proc], timeout: float = 10.0) -> None:
    """:meth:`Proc.stop` for several at once: SIGTERM to all, then one shared
    ``timeout`` (in turn, each one slow to stop added its own timeout)."""
    for proc in procs:
        proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.reap(max(0.0, deadline - time.monotonic()))


def python_proc(module_or_script: Sequence[str], log: Path) -> Proc:
    return Proc([sys.executable, *module_or_script], log)
