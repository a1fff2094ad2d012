"""The harness's own process control: start the stack, SIGKILL one process, restart it.

The components (commands, sockets, readiness checks) are the embedded stack's
own (``vmsnap_stack._table.build``), so the harness runs exactly what
``vmsnap up`` runs; the supervision is not, because ``vmsnap up`` restarts a
crashed child on its own schedule while the harness decides when each process
dies and for how long it stays down.

Each child runs in its own process group (a SIGKILL reaches whatever it
spawned) and asks the kernel for SIGTERM when the harness dies (Linux
``PR_SET_PDEATHSIG``), so that nothing outlives a harness that was killed;
:meth:`Cluster.stop` and the ``atexit`` hook stop the rest. Every server binds
a unix socket under the run's home or, for the array emulators, 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from tests.chaos import journals
from tests.chaos.knobs import Knobs
from vmsnap_stack import Component, Layout, health_serving
from vmsnap_stack._table import build

# Runs in the child before the real command: SIGTERM when the harness dies, and
# exit at once if it died before the request was made. Same as ``vmsnap up``.
_LAUNCH = (
    "import ctypes,os,signal,sys;"
    "ctypes.CDLL(None).prctl(1,signal.SIGTERM);"
    "os.getppid()==int(sys.argv[1]) or sys.exit(1);"
    "os.execvp(sys.argv[2],sys.argv[2:])"
)

#: Every process group any cluster of this process started and has not reaped.
_LIVE_GROUPS: set[int] = set()


def _kill_leftovers() -> None:
    for pid in list(_LIVE_GROUPS):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


atexit.register(_kill_leftovers)


class StartFailed(RuntimeError):
    """A process did not serve in time, or exited while starting; the message says which."""


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Child:
    """One process of the stack, as the harness controls it."""

    def __init__(self, component: Component, logs: Path) -> None:
        self.component = component
        self.name = component.name
        self.log_path = logs / f"{component.name}.log"
        self.process: asyncio.subprocess.Process | None = None
        self.argv: tuple[str, ...] = ()
        #: Spawned and not killed by the harness since (it may still be starting).
        self.up = False
        #: When it last served after a (re)start, on the monotonic clock.
        self.serving_since = 0.0
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def spawn(self) -> None:
        self.serving_since = 0.0  # not until this process serves
        self.argv = self.component.current_command()
        with self.log_path.open("ab") as log:
            log.write(f"\n--- chaos harness: start #{self.starts + 1}\n".encode())
            log.flush()
            command = [sys.executable, "-c", _LAUNCH, str(os.getpid()), *self.argv]
            self.process = await asyncio.create_subprocess_exec(
                *(command if sys.platform.startswith("linux") else self.argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **journals.ENV},  # the "not_running" invariant's
            )
        _LIVE_GROUPS.add(self.process.pid)
        self.starts += 1
        self.up = True

    async def serving(self) -> bool:
        check = self.component.ready
        if check is not None:
            return await check()
        return await health_serving(self.component.address, timeout=1.0)

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                code = self.process.returncode if self.process else None
                raise StartFailed(
                    f"{self.name} exited with code {code} while starting; last lines of "
                    f"{self.log_path}:\n{_tail(self.log_path)}"
                )
            if await self.serving():
                self.serving_since = time.monotonic()
                return
            if time.monotonic() > deadline:
                raise StartFailed(
                    f"{self.name} did not serve within {timeout:.0f} s; see {self.log_path}"
                )
            await asyncio.sleep(0.1)

    def signal(self, sig: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    async def _reap(self, timeout: float) -> bool:
        if self.process is None:
            return True
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            return False
        _LIVE_GROUPS.discard(self.process.pid)
        return True

    async def kill(self) -> None:
        """SIGKILL its whole group, now, and reap it."""
        self.up = False
        self.serving_since = 0.0
        self.signal(signal.SIGKILL)
        await self._reap(10.0)

    async def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace``; whatever is left in its group goes too."""
        self.up = False
        if self.running:
            self.signal(signal.SIGTERM)
            if not await self._reap(grace):
                self.signal(signal.SIGKILL)
                await self._reap(10.0)
        self.signal(signal.SIGKILL)
        if self.process is not None:
            _LIVE_GROUPS.discard(self.process.pid)


class Cluster:
    """The embedded stack's processes in one home, each killable and restartable."""

    def __init__(
        self,
        layout: Layout,
        knobs: Knobs,
        hypervisor: str = "sim",
        *,
        replicas: int = 1,
        db: str = "sqlite",
    ) -> None:
        self.layout = layout
        self.knobs = knobs
        self.hypervisor = hypervisor
        # durable=False: no fsync in the emulators (nor PostgreSQL); their writes
        # still survive a SIGKILL (the page cache outlives the process), which is all
        # a run does.
        self.components = build(layout, hypervisor, durable=False, replicas=replicas, db=db)
        layout.logs.mkdir(parents=True, exist_ok=True)
        self.children = {c.name: Child(c, layout.logs) for c in self.components}
        self._restart_locks = {name: asyncio.Lock() for name in self.children}

    def by_role(self, role: str) -> list[Child]:
        return [c for c in self.children.values() if c.component.role == role]

    @property
    def hosts(self) -> list[Child]:
        """The host, or every replica."""
        return self.by_role("host")

    @property
    def host(self) -> Child:
        return self.hosts[0]

    @property
    def host_address(self) -> str:
        """What clients take: every replica's address, separated by commas."""
        return ",".join(h.component.address for h in self.hosts)

    @property
    def drivers(self) -> list[Child]:
        return self.by_role("storage driver")

    @property
    def agent(self) -> Child:
        return self.by_role("hypervisor agent")[0]

    def _prepare(self) -> None:
        for path in (self.layout.run, self.layout.logs, self.layout.agent_state):
            path.mkdir(parents=True, exist_ok=True)
        for component in self.components:
            if component.prepare is not None:
                component.prepare()
            if component.address.startswith("unix://"):
                Path(component.address.removeprefix("unix://")).unlink(missing_ok=True)
        self.layout.config.write_text(
            self.knobs.host_toml(
                [d.component.address for d in self.drivers], [self.agent.component.address]
            )
        )

    async def start(self) -> None:
        """Start every process by stage and wait until each serves; on failure stop all."""
        self._prepare()
        try:
            for stage in sorted({c.stage for c in self.components}):
                batch = [self.children[c.name] for c in self.components if c.stage == stage]
                for child in batch:
                    await child.spawn()
                await asyncio.gather(*(c.wait_ready(self.knobs.start_timeout) for c in batch))
        except BaseException:
            await self.stop()
            raise

    async def restart(self, name: str) -> None:
        """Start a killed process again and wait until it serves.

        A driver's ``--url`` comes from its emulator's ``listen.json``: when an
        emulator came back on another port, its driver is restarted with the new one.
        """
        child = self.children[name]
        async with self._restart_locks[name]:
            if child.up and child.running:
                return
            await child.spawn()
            await child.wait_ready(self.knobs.start_timeout)
        for follower in self.children.values():
            if follower.component.follows != name or not follower.up:
                continue
            if follower.component.current_command() != follower.argv:
                await follower.stop(3.0)
                await self.restart(follower.name)

    async def ensure_all_up(self) -> list[str]:
        """Restart whatever is down (in stage order); the names restarted."""
        restarted = []
        for component in sorted(self.components, key=lambda c: c.stage):
            child = self.children[component.name]
            if not (child.up and child.running):
                await self.restart(child.name)
                restarted.append(child.name)
        return restarted

    async def stop(self, grace: float = 5.0) -> None:
        """Stop everything, the host first (so that it stops calling the others)."""
        for component in reversed(self.components):
            with contextlib.suppress(Exception):
                await self.children[component.name].stop(grace)

    def stop_now(self) -> None:
        """SIGKILL every group at once (from a signal handler or at exit)."""
        for child in self.children.values():
            child.signal(signal.SIGKILL)
