"""Run the stack's processes: start in order, wait for health, restart crashes, stop cleanly.

Components start by stage (array emulators, then drivers and the agent, then
the host), each stage once the previous one serves. Each child runs in its own process group (so a signal reaches whatever it
spawns) with its output in ``logs/<name>.log``, and gets SIGTERM from the
kernel if the supervising process dies without stopping it (Linux
``PR_SET_PDEATHSIG``); children a killed stack left anyway are stopped by the
next start in the same home. A child that exits while the
stack runs is restarted after a backoff (0.5 s doubling to 30 s, reset once it
has run for a minute). A component whose command is computed at spawn (a
driver's ``--url`` comes from its emulator's ``listen.json``) is restarted at
once, without backoff, when a restarted component comes back serving and that
command changed (an emulator that could not get its old port back). Stopping sends SIGTERM to every group (the host first,
so that it stops calling the others), waits for a grace period, then SIGKILLs
what is left. ``run/stack.json`` lists the pids for operators and tests, and a
lock on ``run/stack.lock`` keeps two stacks from sharing one home. Each
process's ``/metrics`` socket is bound here at start, held while the stack runs
and passed down (``--metrics-listen fd:N``), so that no other process can take
its port (:func:`vmsnap_stack._table.listen_metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vmsnap_sdk import ClientTLS, open_channel
from vmsnap_stack import _security as sec
from vmsnap_stack._table import (
    Component,
    Layout,
    build,
    host_config,
    listen_metrics,
    save_metrics_ports,
)

Events = Callable[[str], None]

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0
#: Seconds a follower restarted for a new command gets to stop before SIGKILL: its
#: calls in flight go to an address that is gone (a driver's blocked array call would
#: otherwise hold its exit until the vendor SDK's retries run out).
REPLACE_GRACE = 3.0


class StackError(RuntimeError):
    """The stack could not start; the message says which component and why."""


@dataclass
class _Child:
    component: Component
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    failures: int = 0
    restarts: int = 0
    replacing: bool = False
    argv: tuple[str, ...] = ()
    log: IO[bytes] | None = field(default=None, repr=False)


async def health_serving(address: str, timeout: float = 1.0, tls: ClientTLS | None = None) -> bool:
    """One grpc.health.v1 check of ``address`` (over TLS when ``tls`` is given)."""
    async with open_channel(address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Stack:
    """The embedded stack in one vmsnap home."""

    def __init__(
        self,
        layout: Layout,
        hypervisor: str = "sim",
        *,
        on_event: Events | None = None,
        grace_seconds: float = 10.0,
        durable: bool = True,
        replicas: int = 1,
        db: str = "sqlite",
        security: sec.Security | None = None,
    ) -> None:
        self.layout = layout
        self.replicas = replicas
        self.security = security = security or sec.Security()
        components = build(layout, hypervisor, durable=durable, replicas=replicas, db=db)
        if security.tls:
            components = [sec.with_tls(layout, c) for c in components]
        self.components = components
        self.grace_seconds = grace_seconds
        self._emit = on_event or (lambda _msg: None)
        self._children = [_Child(c) for c in self.components]
        self._stopping = False
        self._watchers: list[asyncio.Task[None]] = []
        self._lock_fd: int | None = None
        #: Each process's /metrics socket, bound by the stack (see _bind_metrics).
        self._metrics: dict[str, socket.socket] = {}

    @property
    def host_address(self) -> str:
        """The host's address; the replicas' separated by commas (what clients take)."""
        return ",".join(c.address for c in self.components if c.role == "host")

    def pids(self) -> dict[str, int]:
        return {
            c.component.name: c.process.pid
            for c in self._children
            if c.process is not None and c.process.returncode is None
        }

    def restarts(self) -> dict[str, int]:
        return {c.component.name: c.restarts for c in self._children}

    def addresses(self) -> dict[str, str]:
        """Where each component serves now (an emulator's URL once it runs)."""
        return {c.name: c.current_address() for c in self.components}

    # --- start -------------------------------------------------------------------

    def _prepare(self) -> None:
        for path in (self.layout.run, self.layout.logs, self.layout.agent_state):
            path.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.layout.run / "stack.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StackError(
                f"a vmsnap stack already runs in {self.layout.home} "
                f"(see {self.layout.stack_file}); stop it first or use another --home"
            ) from None
        self._stop_orphans()
        self._bind_metrics()
        for component in self.components:
            if component.prepare is not None:
                component.prepare()
        # Sockets left by a stack that was killed would make the binds fail.
        for component in self.components:
            if component.address.startswith("unix://"):
                Path(component.address.removeprefix("unix://")).unlink(missing_ok=True)
        # Only gRPC components are sockets the host reaches; emulators are the drivers' business.
        drivers = [c for c in self.components if c.role == "storage driver"]
        agents = [c for c in self.components if c.role == "hypervisor agent"]
        extra: list[str] = []
        if self.security.tls:
            sec.ensure_certs(self.layout, self.components)
        if self.security.auth:
            extra = sec.auth_toml(sec.ensure_tokens(self.layout), tls=self.security.tls)
        peer_tls = (lambda t, c: sec.peer_tls_toml(self.layout, t, c)) if self.security.tls else None
        self.layout.config.write_text(
            host_config(drivers, agents, replicas=self.replicas, peer_tls=peer_tls, extra=extra)
        )

    def _bind_metrics(self) -> None:
        """Bind every process's ``/metrics`` socket now (the planned port, else one
        the kernel picks) and hold it until the stack stops: the children serve on
        the socket they are passed, so another process that took a planned port
        after it was planned costs a new port, never a failed start, and a
        restarted child serves on its port again."""
        bound: dict[str, int] = {}
        for child in self._children:
            c = child.component
            if not c.metrics_port:
                continue
            sock = listen_metrics(c.metrics_port)
            self._metrics[c.name] = sock
            port = int(sock.getsockname()[1])
            if port != c.metrics_port:
                self._emit(f"{c.name}: /metrics port {c.metrics_port} is taken; using {port}")
                child.component = replace(c, metrics_port=port)
            bound[c.name] = port
        self.components = [child.component for child in self._children]
        if bound:
            save_metrics_ports(self.layout, bound)

    def _command(self, child: _Child) -> tuple[str, ...]:
        """The child's command now, serving /metrics on the socket the stack holds."""
        sock = self._metrics.get(child.component.name)
        return child.component.current_command(f"fd:{sock.fileno()}" if sock else "")

    def _stop_orphans(self) -> None:
        """Stop the children of a previous ``vmsnap up`` of this home that was killed.

        Holding the lock proves that stack is gone; a pid from its stack file is
        only signalled when its command line still names this home (every
        child's does: its socket, data directory or password file), so a
        recycled pid is never touched.
        """
        try:
            previous = json.loads(self.layout.stack_file.read_text())
        except (OSError, ValueError):
            return
        orphans = [
            pid
            for pid in (c.get("pid") for c in previous.get("components", []))
            if isinstance(pid, int) and f"{self.layout.home}/" in _cmdline(pid)
        ]
        for pid in orphans:
            self._emit(f"stopping pid {pid}, left running by a stack that was killed")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        while any(_cmdline(pid) for pid in orphans) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in orphans:
            if _cmdline(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        self.layout.stack_file.unlink(missing_ok=True)

    async def start(self, timeout: float = 60.0) -> None:
        """Start every component in order and wait until each serves; on failure stop all."""
        self._prepare()
        try:
            # Emulators, then the drivers and the agent together, then the host that lists them.
            for stage in sorted({c.component.stage for c in self._children}):
                batch = [c for c in self._children if c.component.stage == stage]
                for child in batch:
                    await self._spawn(child)
                await asyncio.gather(*(self._wait_serving(c, timeout) for c in batch))
        except BaseException:
            await self.stop()
            raise
        self._write_stack_file()
        self._watchers = [asyncio.create_task(self._watch(c)) for c in self._children]

    async def _spawn(self, child: _Child) -> None:
        if child.log is None:
            child.log = (self.layout.logs / f"{child.component.name}.log").open("ab")
        child.argv = self._command(child)
        sock = self._metrics.get(child.component.name)
        child.process = await asyncio.create_subprocess_exec(
            *_bound_to_us(child.argv),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=child.log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(sock.fileno(),) if sock else (),
        )
        child.started_at = time.monotonic()

    async def _wait_serving(self, child: _Child, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        name = child.component.name
        while True:
            process = child.process
            if process is not None and process.returncode is not None:
                raise StackError(
                    f"{name} exited with code {process.returncode} while starting; "
                    f"last lines of {self.layout.logs / (name + '.log')}:\n"
                    f"{_tail(self.layout.logs / (name + '.log'))}"
                )
            check = child.component.ready
            component = child.component
            serving = (
                await check()
                if check
                else await health_serving(component.address, tls=component.tls)
            )
            if serving:
                self._emit(f"{name} serving on {child.component.current_address()}")
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"{name} did not serve on {child.component.address} within {timeout:.0f} s; "
                    f"see {self.layout.logs / (name + '.log')}"
                )
            await asyncio.sleep(0.1)

    # --- supervision ----------------------------------------------------------------

    async def _watch(self, child: _Child) -> None:
        while not self._stopping:
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping:
                return
            if child.replacing:
                child.replacing = False
                delay = 0.0
            else:
                ran = time.monotonic() - child.started_at
                child.failures = 0 if ran >= STABLE_AFTER else child.failures + 1
                delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, child.failures - 1))
                self._emit(
                    f"{child.component.name} exited with code {code}; restarting in {delay:.1f} s"
                )
            await asyncio.sleep(delay)
            if self._stopping:
                return
            await self._spawn(child)
            child.restarts += 1
            self._write_stack_file()
            with contextlib.suppress(StackError):
                await self._wait_serving(child, timeout=30.0)
                self._write_stack_file()  # an emulator's URL is known now
                self._replace_outdated(child)

    def _replace_outdated(self, restarted: _Child) -> None:
        """Restart the running followers of ``restarted`` whose command changed.

        A driver's ``--url`` comes from its emulator's ``listen.json``: when the
        emulator came back on another port, the driver must be given the new one.
        """
        for child in self._children:
            process = child.process
            if child.component.follows != restarted.component.name or child.replacing:
                continue
            if process is None or process.returncode is not None:
                continue
            if self._command(child) != child.argv:
                self._emit(
                    f"{child.component.name}: {restarted.component.name} now serves on "
                    f"{restarted.component.current_address()}; restarting "
                    f"{child.component.name} with it"
                )
                child.replacing = True
                _signal_group(child, signal.SIGTERM)
                asyncio.get_running_loop().call_later(
                    REPLACE_GRACE, self._kill_lingering, child, process
                )

    def _kill_lingering(self, child: _Child, process: asyncio.subprocess.Process) -> None:
        if child.process is process and process.returncode is None and not self._stopping:
            self._emit(
                f"{child.component.name} did not stop within {REPLACE_GRACE:.0f} s; killing it"
            )
            _signal_group(child, signal.SIGKILL)

    def _write_stack_file(self) -> None:
        data = {
            "pid": os.getpid(),
            "home": str(self.layout.home),
            "host": self.host_address,
            "tls": self.security.tls,
            "auth": self.security.auth,
            "components": [
                {
                    "name": c.component.name,
                    "role": c.component.role,
                    "address": c.component.current_address(),
                    "metrics": c.component.metrics,
                    "pid": c.process.pid if c.process is not None else None,
                    "restarts": c.restarts,
                }
                for c in self._children
            ],
        }
        tmp = self.layout.stack_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.layout.stack_file)

    # --- stop -------------------------------------------------------------------------

    async def stop(self) -> None:
        """SIGTERM every child (host first), wait for the grace period, SIGKILL the rest."""
        self._stopping = True
        for task in self._watchers:
            task.cancel()
        for task in self._watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watchers = []
        running = [
            c for c in reversed(self._children) if c.process and c.process.returncode is None
        ]
        for child in running:
            _signal_group(child, signal.SIGTERM)
        waits = [c.process.wait() for c in running if c.process is not None]
        killed: list[str] = []
        try:
            await asyncio.wait_for(asyncio.gather(*waits), self.grace_seconds)
        except TimeoutError:
            for child in running:
                if child.process is not None and child.process.returncode is None:
                    self._emit(f"{child.component.name} ignored SIGTERM; killing it")
                    _signal_group(child, signal.SIGKILL)
                    killed.append(child.component.name)
            await asyncio.gather(*(c.process.wait() for c in running if c.process is not None))
        if running:
            # Said every time: a child that needs SIGKILL is a defect to see, not a
            # stop that is merely slow.
            self._emit(
                "every process exited on SIGTERM"
                if not killed
                else f"killed after the {self.grace_seconds:.0f} s grace: {', '.join(killed)}"
            )
        for child in self._children:
            # Whatever a child left in its group goes too.
            _signal_group(child, signal.SIGKILL)
            if child.log is not None:
                child.log.close()
                child.log = None
        for sock in self._metrics.values():
            sock.close()
        self._metrics.clear()
        self.layout.stack_file.unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


# Runs in the child before the real command: ask the kernel for SIGTERM when the
# stack's process dies (even by SIGKILL), so that no child outlives it; exit if
# it already died before the request was made. execvp keeps the pid and the
# request. Inline code, so that nothing heavy is imported before the exec.
_LAUNCH = (
    "import ctypes,os,signal,sys;"
    "ctypes.CDLL(None).prctl(1,signal.SIGTERM);"
    "os.getppid()==int(sys.argv[1]) or sys.exit(1);"
    "os.execvp(sys.argv[2],sys.argv[2:])"
)


def _bound_to_us(command: tuple[str, ...]) -> list[str]:
    """The command, wrapped so that it gets SIGTERM if this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return list(command)
    return [sys.executable, "-c", _LAUNCH, str(os.getpid()), *command]


def _signal_group(child: _Child, sig: int) -> None:
    if child.process is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.process.pid, sig)


def _cmdline(pid: int) -> str:
    """The command line of a live process ("" when gone or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return ""
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, IndexError):
        return ""
