"""The stack's /metrics ports: no other process can make a start fail.

Before, the stack picked each process's ``/metrics`` port when it was free and
the child bound it later: another process (another stack on the same machine)
could bind it in between, and the child exited "cannot serve metrics: [Errno
98] Address already in use" (``make demo`` failed so while CI ran). The stack
now binds every ``/metrics`` socket itself and passes it down
(``--metrics-listen fd:N``): the bind is the check, and it holds the port for
as long as it runs, across restarts of the child. docs/design.md, "`vmsnap up`
and /metrics".
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.support.procs import wait_serving
from vmsnap_sdk.metrics import check_address, start_metrics_server
from vmsnap_stack import Layout, Stack

#: Holds the given loopback ports (listening) until its stdin closes.
_HOLDER = """
import socket, sys
held = []
for port in sys.argv[1:]:
    s = socket.socket()
    s.bind(("127.0.0.1", int(port)))
    s.listen()
    held.append(s)
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def _held(ports: list[int]) -> Iterator[None]:
    """Another process listening on ``ports`` (returns once it does)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, *map(str, ports)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return str(reply.read().decode())


def _ports(stack: Stack) -> dict[str, int]:
    """The /metrics port of each process that serves one, as the stack shows it."""
    return {
        c.name: int(c.metrics.removeprefix("http://127.0.0.1:").removesuffix("/metrics"))
        for c in stack.components
        if c.metrics
    }


async def test_a_stack_starts_while_another_process_holds_the_ports_it_picked() -> None:
    """The ports are picked (and saved) when the stack is built, then taken by
    another process before the children start. Every child still serves
    /metrics (on a port the stack bound instead), the stack says where, and a
    child restarted later serves on the same port again.
    Fails on main: the stack does not start ("cannot serve metrics: [Errno 98]
    Address already in use")."""
    home = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    layout = Layout(home)
    stack = Stack(layout, durable=False)
    picked = _ports(stack)
    assert set(picked) == {"driver-element", "driver-ontap", "agent", "host"}
    assert json.loads(layout.metrics_ports.read_text()) == picked
    with _held(sorted(picked.values())):
        try:
            await stack.start()
            served = _ports(stack)
            assert set(served) == set(picked)
            assert not set(served.values()) & set(picked.values()), served
            assert json.loads(layout.metrics_ports.read_text()) == served
            listed = {
                c["name"]: c["metrics"]
                for c in json.loads(layout.stack_file.read_text())["components"]
            }
            for name, port in served.items():
                assert listed[name] == f"http://127.0.0.1:{port}/metrics"
                assert "vmsnap_rpc_server_handled_total" in _scrape(listed[name])
            # A restarted child serves on the port the stack holds for it.
            host = stack.pids()["host"]
            os.kill(host, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while stack.pids().get("host", host) == host:
                assert time.monotonic() < deadline, "the host was not restarted"
                await asyncio.sleep(0.1)
            wait_serving(stack.host_address, timeout=60)
            assert "vmsnap_rpc_server_handled_total" in _scrape(listed["host"])
        finally:
            await stack.stop()
            shutil.rmtree(home, ignore_errors=True)


def test_metrics_listen_fd_serves_on_a_listening_loopback_socket_only() -> None:
    """``--metrics-listen fd:N`` (what the stack passes down): served on that socket;
    one that does not listen, or stdio's numbers, are refused saying why."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        fd = os.dup(held.fileno())
        with pytest.raises(ValueError, match="not a listening TCP socket"):
            start_metrics_server(f"fd:{fd}", CollectorRegistry())
        os.close(fd)  # refused, so left to its owner
        held.listen()
        server = start_metrics_server(f"fd:{os.dup(held.fileno())}", CollectorRegistry())
        try:
            assert server.url == f"http://127.0.0.1:{held.getsockname()[1]}/metrics"
            _scrape(server.url)
        finally:
            server.close()
    for wrong in ("fd:2", "fd:x"):
        with pytest.raises(ValueError, match="expected fd:N"):
            check_address(wrong)
