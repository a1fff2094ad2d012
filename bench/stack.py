"""Real processes for the benchmarks: the sim agent, no-op drivers, the host.

Every process serves on a unix socket in one short temporary directory (the
embedded deployment's transport) and announces itself with the SDK's
``{"serving": [...]}`` line on stdout; its log goes to a file beside it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
START_TIMEOUT = 60.0


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[str]
    address: str
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


#: Rewrites a process's argv before it starts (``bench.profile`` runs each under
#: cProfile); None: as given.
WRAP: Callable[[str, list[str]], list[str]] | None = None


def start(name: str, argv: Sequence[str], workdir: Path, *, timeout: float = START_TIMEOUT) -> Proc:
    """Start a server process and wait for its ``serving`` line."""
    log = workdir / f"{name}.log"
    argv = WRAP(name, list(argv)) if WRAP is not None else list(argv)
    with log.open("ab") as err:
        popen = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
    assert popen.stdout is not None
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        line = popen.stdout.readline()
        if not line:
            break
        with contextlib.suppress(ValueError):
            served = json.loads(line).get("serving")
            if served:
                return Proc(name, popen, served[0], log)
    popen.kill()
    popen.wait(5)
    popen.stdout.close()
    raise RuntimeError(f"{name} did not start; its log:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def workdir(prefix: str = "vsb-", base: str = "/tmp") -> Iterator[Path]:
    """A short directory for sockets (unix socket paths are limited to 107 bytes),
    catalogs and state files; ``base`` /dev/shm puts them in memory (no fsync cost)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sock(directory: Path, name: str) -> str:
    return f"unix://{directory / name}.sock"


def start_agent(directory: Path, name: str = "agent") -> Proc:
    state = directory / f"{name}-state"
    state.mkdir(exist_ok=True)
    return start(
        name,
        [
            str(BIN / "vmsnap-agent"),
            "--hypervisor",
            "sim",
            "--listen",
            sock(directory, name),
            "--state",
            str(state),
            "--log-level",
            "warning",
        ],
        directory,
    )


def start_driver(directory: Path, scheme: str, *, delay_ms: float = 0.0, name: str = "") -> Proc:
    label = name or f"driver-{scheme}"
    return start(
        label,
        [
            sys.executable,
            "-m",
            "bench.noop_driver",
            "--listen",
            sock(directory, label),
            "--name",
            f"io.vmsnap.bench.{scheme}",
            "--scheme",
            scheme,
            "--delay-ms",
            str(delay_ms),
            "--counts",
            str(directory / f"{label}.counts.json"),
        ],
        directory,
    )


def start_agent_and_drivers(directory: Path, procs: list[Proc]) -> tuple[Proc, list[Proc]]:
    """The create benchmarks' peers: a sim agent and two no-op drivers (schemes ``a``
    and ``b``), each appended to ``procs`` as soon as it serves (the caller stops
    them all, in reverse, however the start ends)."""
    agent = start_agent(directory)
    procs.append(agent)
    drivers = [start_driver(directory, "a"), start_driver(directory, "b")]
    procs += drivers
    return agent, drivers


def read_counts(directory: Path, driver: Proc) -> dict[str, int]:
    """Ask a no-op driver for its call counts so far (SIGUSR1, then read the file)."""
    path = directory / f"{driver.name}.counts.json"
    before = path.stat().st_mtime_ns if path.exists() else 0
    driver.popen.send_signal(signal.SIGUSR1)
    give_up = time.monotonic() + 10
    while time.monotonic() < give_up:
        if path.exists() and path.stat().st_mtime_ns != before:
            with contextlib.suppress(ValueError):
                return {k: int(v) for k, v in json.loads(path.read_text()).items()}
        time.sleep(0.01)
    raise RuntimeError(f"{driver.name} wrote no counts")


@dataclass
class HostConfig:
    drivers: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)
    settings: dict[str, float | int] = field(default_factory=dict)

    def toml(self) -> str:
        lines = ["[host]"]
        lines += [f"{k} = {v}" for k, v in self.settings.items()]
        for i, address in enumerate(self.drivers):
            lines += ["", "[[drivers]]", f'address = "{address}"', f"order = {i}"]
        for address in self.agents:
            lines += ["", "[[agents]]", f'address = "{address}"']
        return "\n".join(lines) + "\n"


def start_host(
    directory: Path,
    config: HostConfig,
    *,
    db: Path | str | None = None,
    name: str = "host",
    instance: str = "bench",
    timeout: float = START_TIMEOUT,
) -> Proc:
    """A host on ``db`` (a SQLite path or any ``--db`` URL; default: SQLite beside it)."""
    path = directory / f"{name}.toml"
    path.write_text(config.toml())
    argv = [
        str(BIN / "vmsnap-host"),
        "--listen",
        sock(directory, name),
        "--db",
        str(db or directory / f"{name}.db"),
        "--config",
        str(path),
        "--instance-id",
        instance,
        "--log-level",
        "warning",
    ]
    proc = start(name, argv, directory, timeout=timeout)
    try:
        wait_peers_serving(proc.address, timeout)
    except BaseException:
        proc.stop()
        raise
    return proc


def wait_peers_serving(address: str, timeout: float = START_TIMEOUT) -> None:
    """Wait until the host sees every registered driver and agent SERVING (its first
    check may fail on a loaded machine; the health loop then brings them back)."""
    import asyncio

    import grpc

    from vmsnap_sdk._proto.host.v1 import host_pb2, host_pb2_grpc

    async def wait() -> None:
        give_up = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(address) as channel:
            stub = host_pb2_grpc.VMSnapshotServiceStub(channel)
            while True:
                drivers = (
                    await stub.ListDrivers(host_pb2.ListDriversRequest(), timeout=10)
                ).drivers
                agents = (await stub.ListAgents(host_pb2.ListAgentsRequest(), timeout=10)).agents
                healths = [d.health for d in drivers] + [a.health for a in agents]
                if all(h == host_pb2.HEALTH_SERVING for h in healths):
                    return
                if time.monotonic() > give_up:
                    raise RuntimeError(f"the host's peers are not all serving: {healths}")
                await asyncio.sleep(0.1)

    asyncio.run(wait())
