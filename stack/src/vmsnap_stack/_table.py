"""What the embedded stack runs: the one table to edit to add or swap a process.

Components start in stages: the array emulators (and, with ``--db postgres``,
a PostgreSQL server of the stack's own) first, then the storage drivers and the
hypervisor agent, the host last — or several host replicas sharing the
PostgreSQL catalog — with a generated configuration that lists them. Every gRPC component listens on a unix socket under
``$VMSNAP_HOME/run/``; everything logs to ``$VMSNAP_HOME/logs/<name>.log``.

Each reference driver (:data:`DRIVERS`) runs next to its vendor's array
emulator: ``vmsnap-emulator KIND`` on ``127.0.0.1`` with its state in
``$VMSNAP_HOME/arrays/<array>/`` and a password generated at the first start in
``$VMSNAP_HOME/secrets/<array>.password`` (0600, never printed). The emulator
picks a free port at its first start and is given the same port again at every
later start (read back from its ``listen.json``) while that port is free; the
driver's ``--url`` is computed from ``listen.json`` at each spawn, and the
supervisor restarts a driver whose command changed because its emulator came
back on another port.

``--hypervisor qemu`` runs the same table with two differences, both for real
guests that read and write the arrays' bytes: the Element emulator also exports
its volumes over NBD (``--nbd-listen``, its port pinned the same way, from
``listen.json``'s ``nbd.port``: VMs hold it in their disks' urls), and the agent
is ``vmsnap-agent --hypervisor qemu`` with a locator map computed at each spawn
(:func:`qemu_maps`), restarted like a driver when its emulator's port changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from vmsnap_sdk import ClientTLS

#: Longest unix socket path the kernel accepts (sun_path is 108 bytes with the NUL).
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class Component:
    """One supervised child process.

    ``ready`` tells whether it serves; None means the grpc.health.v1 check on
    ``address`` (a process that is no gRPC server, such
    as an array emulator speaking HTTP, brings its own check). ``argv``, when
    set, computes the command at every spawn (``command`` is then what it was
    at build time, for display); ``endpoint`` is the address to show when it is
    only known once the process runs (an emulator's URL); ``prepare`` runs once
    before the first spawn (e.g. to generate a password file). Components start
    by ``stage``, each stage once the previous one serves. ``follows`` names the
    component this one's ``argv`` depends on: when that one was restarted and
    serves again, this one is restarted too if its command changed.
    """

    name: str
    role: str
    description: str
    command: tuple[str, ...]
    address: str
    ready: Callable[[], Awaitable[bool]] | None = field(default=None, compare=False)
    argv: Callable[[], tuple[str, ...]] | None = field(default=None, compare=False)
    endpoint: Callable[[], str] | None = field(default=None, compare=False)
    prepare: Callable[[], None] | None = field(default=None, compare=False)
    stage: int = 1
    follows: str | None = None
    #: How to reach it when it serves TLS (``vmsnap up --tls``); None: plaintext.
    tls: ClientTLS | None = field(default=None, compare=False)
    #: Its Prometheus ``/metrics`` port (loopback), when it serves one (0: none).
    metrics_port: int = 0

    @property
    def metrics(self) -> str:
        """Its ``/metrics`` URL ("" when it serves none)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else ""

    def current_command(self, metrics_listen: str = "") -> tuple[str, ...]:
        """The command to spawn now. With a ``metrics_port`` it ends with
        ``--metrics-listen``: ``metrics_listen`` when given (the supervisor's
        ``fd:N``, a socket it holds), else ``127.0.0.1:PORT``."""
        base = self.argv() if self.argv is not None else self.command
        if not self.metrics_port:
            return base
        return (*base, "--metrics-listen", metrics_listen or f"127.0.0.1:{self.metrics_port}")

    def current_address(self) -> str:
        return self.endpoint() if self.endpoint is not None else self.address


@dataclass(frozen=True)
class DriverEntry:
    """A reference storage driver of the stack and the array emulator it drives.

    The driver gets ``--url https://localhost:PORT`` (the Element SDK verifies
    TLS for host names only), ``--user``, ``--password-file``, ``--ca-file``
    (the emulator's self-signed certificate) and ``--conformance-fixture``
    (the demo writes and reads bytes through it), then ``arguments``. The
    emulator gets ``emulator_arguments`` after its own flags.
    """

    name: str
    description: str
    module: str
    array: str
    emulator_kind: str
    arguments: tuple[str, ...] = ()
    emulator_arguments: tuple[str, ...] = ()


#: The Element cluster and ONTAP SVM the emulators serve (the locators' authorities).
ELEMENT_CLUSTER = "vmsnap-element"
ONTAP_SVM = "svm0"
#: Local qcow2 disks of a QEMU guest: this prefix maps to ``$VMSNAP_HOME/disks/``.
LOCAL_DISKS = "file:///var/lib/vmsnap/"

#: The storage drivers of the embedded stack, in tie-break order.
DRIVERS: tuple[DriverEntry, ...] = (
    DriverEntry(
        "driver-element",
        "element:// volumes — NetApp SolidFire Element reference driver",
        "vmsnap_driver_solidfire",
        array="element",
        emulator_kind="element",
        arguments=("--cluster", ELEMENT_CLUSTER),
        emulator_arguments=("--cluster", ELEMENT_CLUSTER),
    ),
    DriverEntry(
        "driver-ontap",
        "ontap:// files — NetApp ONTAP reference driver",
        "vmsnap_driver_netapp",
        array="ontap",
        emulator_kind="ontap",
        arguments=("--svm", ONTAP_SVM, "--job-poll-interval", "0.1"),
        emulator_arguments=("--svm", ONTAP_SVM, "--cluster", "vmsnap-ontap"),
    ),
)

#: The user the emulators accept and the drivers log in as.
ARRAY_USER = "vmsnap"

#: Hypervisor kinds ``vmsnap up --hypervisor`` accepts.
HYPERVISORS = ("sim", "qemu")


@dataclass(frozen=True)
class Layout:
    """Where a stack keeps its sockets, logs, database and configuration."""

    home: Path

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def config(self) -> Path:
        return self.home / "host.toml"

    @property
    def database(self) -> Path:
        return self.home / "vmsnap.sqlite"

    @property
    def postgres(self) -> Path:
        """The stack's own PostgreSQL cluster (``--db postgres``)."""
        return self.home / "postgres"

    @property
    def agent_state(self) -> Path:
        return self.home / "agent"

    @property
    def arrays(self) -> Path:
        return self.home / "arrays"

    @property
    def secrets(self) -> Path:
        return self.home / "secrets"

    def array_data(self, array: str) -> Path:
        return self.arrays / array

    def password_file(self, array: str) -> Path:
        return self.secrets / f"{array}.password"

    @property
    def stack_file(self) -> Path:
        """JSON written by ``vmsnap up``: its pid and each child's pid and address."""
        return self.run / "stack.json"

    @property
    def metrics_ports(self) -> Path:
        """The ``/metrics`` port of each process, kept across starts while free."""
        return self.home / "metrics-ports.json"

    def socket(self, name: str) -> str:
        path = self.run / f"{name}.sock"
        if len(str(path)) > MAX_SOCKET_PATH:
            raise ValueError(
                f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes; "
                "choose a shorter --home"
            )
        return f"unix://{path}"


def executable(script: str, module: str) -> list[str]:
    """The console script next to this Python (a venv's bin/), else ``python -c``."""
    beside = Path(sys.executable).parent / script
    if beside.exists():
        return [str(beside)]
    found = shutil.which(script)
    if found:
        return [found]
    return [sys.executable, "-c", f"from {module} import main; main()"]


def python_module(module: str) -> list[str]:
    return [sys.executable, "-m", module]


# --- array emulators ------------------------------------------------------------------


def ensure_password(path: Path) -> None:
    """Generate a random password into ``path`` (0600, in a 0700 directory) unless there."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        if path.read_text(encoding="utf-8").strip():
            return
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_urlsafe(32))


def listen_info(data: Path) -> dict[str, object]:
    """The emulator's ``listen.json`` in ``data`` ({} when missing or unreadable)."""
    try:
        info = json.loads((data / "listen.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: The roles whose processes serve ``/metrics`` (``--metrics-listen``): every gRPC
#: server of the stack; emulators and PostgreSQL are not vmsnap's.
METRICS_ROLES = ("storage driver", "hypervisor agent", "host")


def metrics_ports(layout: Layout, names: Sequence[str]) -> dict[str, int]:
    """A loopback port per process for ``/metrics``: the one of the last start while it
    is free (a Prometheus configured once keeps scraping), else a new free one.

    A plan only: another process may take a port before it is bound. The
    supervisor binds each with :func:`listen_metrics` (another port when it was
    taken) and saves what it bound (:func:`save_metrics_ports`).
    """
    path = layout.metrics_ports
    try:
        saved = {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        saved = {}
    ports = {n: saved[n] if n in saved and _port_free(saved[n]) else _free_port() for n in names}
    if ports != saved:
        save_metrics_ports(layout, ports)
    return ports


def save_metrics_ports(layout: Layout, ports: Mapping[str, int]) -> None:
    """Keep each process's ``/metrics`` port for the next start."""
    layout.metrics_ports.parent.mkdir(parents=True, exist_ok=True)
    layout.metrics_ports.write_text(json.dumps(dict(ports)))


def listen_metrics(port: int) -> socket.socket:
    """A listening loopback socket for one process's ``/metrics``: on ``port`` when
    it is free, else on one the kernel picks.

    The supervisor binds it and passes it down (``--metrics-listen fd:N``) rather
    than let the child bind the port it was told: the bind is the check, so no
    other process (another stack on the machine) can take the port in between,
    and the supervisor holds it while the stack runs, across restarts of the child.
    """
    for candidate in (port, 0) if port else (0,):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # As HTTPServer does: a port whose last listener is in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", candidate))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE and candidate:
                continue
            raise
        return sock
    raise AssertionError("unreachable: binding port 0 either works or raises")


def with_metrics(layout: Layout, components: Sequence[Component]) -> list[Component]:
    """``components`` with a ``/metrics`` port planned for every gRPC server."""
    serving = [c.name for c in components if c.role in METRICS_ROLES]
    ports = metrics_ports(layout, serving)
    return [replace(c, metrics_port=ports[c.name]) if c.name in ports else c for c in components]


def _listen_port(data: Path) -> int:
    port = listen_info(data).get("port")
    return port if isinstance(port, int) else 0


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pinned_port(data: Path) -> int:
    """The port of the emulator's last start when it is free now, else 0 (any free port)."""
    port = _listen_port(data)
    return port if port and _port_free(port) else 0


def _nbd_port(data: Path) -> int:
    nbd = listen_info(data).get("nbd")
    port = nbd.get("port") if isinstance(nbd, dict) else None
    return port if isinstance(port, int) else 0


def pinned_nbd_port(data: Path) -> int:
    """The Element emulator's NBD port of its last start when free now, else 0."""
    port = _nbd_port(data)
    return port if port and _port_free(port) else 0


def _runs_on(pid: object, data: Path) -> bool:
    """Whether ``pid`` is a live (not zombie) emulator of ``data``.

    One emulator runs per data dir (it locks it), and the supervisor reaps a dead
    one before it starts the next: a ``listen.json`` naming such a process was
    written by the emulator that runs now, not by one that crashed.
    """
    if not isinstance(pid, int):
        return False
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return False
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    return any(a == b"--data" and b == str(data).encode() for a, b in itertools.pairwise(argv))


def _emulator_ready(data: Path) -> Callable[[], Awaitable[bool]]:
    async def ready() -> bool:
        info = listen_info(data)
        port = info.get("port")
        if not _runs_on(info.get("pid"), data) or not isinstance(port, int):
            return False  # not yet written by the emulator that runs now
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), 1.0
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    return ready


def _emulator(layout: Layout, d: DriverEntry, durable: bool, nbd: bool = False) -> Component:
    """``nbd``: export the volumes over NBD too (Element, for QEMU guests)."""
    data = layout.array_data(d.array)
    password = layout.password_file(d.array)
    nbd = nbd and d.emulator_kind == "element"

    def argv(port: int | None = None) -> tuple[str, ...]:
        nbd_port = pinned_nbd_port(data) if port is None else port
        return (
            *python_module("vmsnap_emulators"),
            d.emulator_kind,
            "--listen",
            f"127.0.0.1:{pinned_port(data) if port is None else port}",
            "--data",
            str(data),
            "--user",
            ARRAY_USER,
            "--password-file",
            str(password),
            *(() if durable else ("--no-fsync",)),
            *(("--nbd-listen", f"127.0.0.1:{nbd_port}") if nbd else ()),
            *d.emulator_arguments,
        )

    def prepare() -> None:
        data.mkdir(parents=True, exist_ok=True)
        ensure_password(password)

    def endpoint() -> str:
        url = listen_info(data).get("url")
        return str(url) if url else "https://127.0.0.1 (port chosen at start)"

    return Component(
        name=f"emulator-{d.array}",
        role="array emulator",
        description=f"{d.emulator_kind} API emulator, data in {data}"
        + (", volumes over NBD" if nbd else ""),
        command=argv(0),
        address=f"https://127.0.0.1 ({data})",
        ready=_emulator_ready(data),
        argv=argv,
        endpoint=endpoint,
        prepare=prepare,
        stage=0,
    )


def _driver(layout: Layout, d: DriverEntry) -> Component:
    data = layout.array_data(d.array)

    def argv(port: int | None = None) -> tuple[str, ...]:
        return (
            *python_module(d.module),
            "--listen",
            layout.socket(d.name),
            # A host name, not 127.0.0.1: the Element SDK verifies TLS for names only.
            "--url",
            f"https://localhost:{_listen_port(data) if port is None else port}",
            "--user",
            ARRAY_USER,
            "--password-file",
            str(layout.password_file(d.array)),
            "--ca-file",
            str(data / "tls-cert.pem"),
            "--conformance-fixture",
            *d.arguments,
        )

    return Component(
        name=d.name,
        role="storage driver",
        description=d.description,
        command=argv(0),
        address=layout.socket(d.name),
        argv=argv,
        follows=f"emulator-{d.array}",
    )


DATABASES = ("sqlite", "postgres")
MAX_REPLICAS = 9


def _postgres(layout: Layout, durable: bool) -> Component:
    """The catalog's PostgreSQL server, in the foreground under the supervisor."""
    from vmsnap_stack.pgcluster import PgCluster, PgClusterError

    cluster = PgCluster(layout.postgres)

    def prepare() -> None:
        try:
            cluster.init(fast=not durable)
        except PgClusterError as exc:
            raise ValueError(str(exc)) from None

    async def ready() -> bool:
        if not await asyncio.to_thread(cluster.accepts):
            return False
        await asyncio.to_thread(cluster.create_database, "vmsnap")
        return True

    try:
        command = tuple(cluster.server_command(fast=not durable))
    except PgClusterError as exc:
        raise ValueError(str(exc)) from None
    return Component(
        name="postgres",
        role="catalog database",
        description=f"PostgreSQL, data in {cluster.data}",
        command=command,
        address=f"unix://{cluster.socket_dir}/.s.PGSQL.5432",
        ready=ready,
        prepare=prepare,
        stage=0,
    )


def catalog_url(layout: Layout, db: str) -> str:
    """The ``--db`` the stack's hosts get."""
    if db == "postgres":
        from vmsnap_stack.pgcluster import PgCluster

        return PgCluster(layout.postgres).url("vmsnap")
    return str(layout.database)


def _hosts(layout: Layout, replicas: int, db: str) -> list[Component]:
    url = catalog_url(layout, db)
    catalog = layout.database.name if db == "sqlite" else "on the stack's PostgreSQL"
    hosts = []
    for i in range(1, replicas + 1):
        name = "host" if replicas == 1 else f"host-{i}"
        hosts.append(
            Component(
                name=name,
                role="host",
                description=f"control API, catalog {catalog}"
                + (f" (replica {i} of {replicas})" if replicas > 1 else ""),
                command=(
                    *executable("vmsnap-host", "vmsnap_host.main"),
                    "--listen",
                    layout.socket(name),
                    "--db",
                    url,
                    "--config",
                    str(layout.config),
                    *(("--instance-id", name) if replicas > 1 else ()),
                ),
                address=layout.socket(name),
                stage=2,
            )
        )
    return hosts


def build(
    layout: Layout,
    hypervisor: str = "sim",
    *,
    durable: bool = True,
    replicas: int = 1,
    db: str = "sqlite",
) -> list[Component]:
    """The components of the stack, in start order (hosts last).

    ``durable=False`` runs the emulators (and PostgreSQL) without fsync (a
    throw-away demo home). ``replicas`` host processes share the catalog, which
    needs ``db="postgres"`` when there is more than one.
    """
    if hypervisor not in HYPERVISORS:
        raise ValueError(f"hypervisor {hypervisor!r} is not available (choose: {HYPERVISORS})")
    if db not in DATABASES:
        raise ValueError(f"--db {db!r} is not available (choose: {DATABASES})")
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"--replicas must be within 1..{MAX_REPLICAS}")
    if replicas > 1 and db != "postgres":
        raise ValueError(
            "several host replicas share one PostgreSQL catalog: add --db postgres "
            "(SQLite serves one host)"
        )
    database = [_postgres(layout, durable)] if db == "postgres" else []
    components = [
        *(_emulator(layout, d, durable, nbd=hypervisor == "qemu") for d in DRIVERS),
        *(_driver(layout, d) for d in DRIVERS),
    ]
    hosts = _hosts(layout, replicas, db)
    return with_metrics(layout, [*database, *components, _agent(layout, hypervisor), *hosts])


def qemu_maps(layout: Layout, nbd_port: int | None = None) -> tuple[str, ...]:
    """The QEMU agent's locator map (``--map PREFIX=TARGET``): Element volumes over
    the emulator's NBD export, ONTAP files in its export directory, local disks
    under ``$VMSNAP_HOME/disks``. ``nbd_port`` None: the one in ``listen.json``."""
    element = layout.array_data("element")
    ontap_export = layout.array_data("ontap") / "export" / ONTAP_SVM
    port = _nbd_port(element) if nbd_port is None else nbd_port
    return (
        f"element://{ELEMENT_CLUSTER}/=nbd://127.0.0.1:{port}/",
        f"ontap://{ONTAP_SVM}/={ontap_export}/",
        f"{LOCAL_DISKS}={layout.home / 'disks'}/",
    )


def _agent(layout: Layout, hypervisor: str) -> Component:
    """The hypervisor agent; QEMU's gets the locator map, computed at each spawn."""
    qemu = hypervisor == "qemu"

    def argv(nbd_port: int | None = None) -> tuple[str, ...]:
        maps = qemu_maps(layout, nbd_port) if qemu else ()
        return (
            *executable("vmsnap-agent", "vmsnap_agent.cli"),
            "--hypervisor",
            hypervisor,
            "--listen",
            layout.socket("agent"),
            "--state",
            str(layout.agent_state),
            "--name",
            f"{hypervisor}-1",
            *(arg for m in maps for arg in ("--map", m)),
        )

    accel = " (TCG unless VMSNAP_QEMU_ACCEL=kvm)" if qemu else ""
    return Component(
        name="agent",
        role="hypervisor agent",
        description=f"{hypervisor} hypervisor{accel}, state in {layout.agent_state}",
        command=argv(0) if qemu else argv(),
        address=layout.socket("agent"),
        argv=argv if qemu else None,
        # A new NBD port changes the map: restarted when the Element emulator was.
        follows="emulator-element" if qemu else None,
    )


#: The VM lease of replicas in the stack: a killed replica's operation is taken
#: over by another within seconds (the default, 30 s, suits a real deployment).
REPLICA_LEASE_SECONDS = 5


def host_config(
    drivers: Sequence[Component],
    agents: Sequence[Component],
    *,
    replicas: int = 1,
    peer_tls: Callable[[str, Component], list[str]] | None = None,
    extra: Sequence[str] = (),
) -> str:
    """The host's TOML configuration listing the stack's drivers and agents
    (``peer_tls(table, component)``: the TLS table of each; ``extra``: more lines,
    such as ``[auth]``)."""
    lines = [
        "# Generated by `vmsnap up`; rewritten at every start.",
        "[host]",
        "health_interval_seconds = 1",
        *([f"lease_seconds = {REPLICA_LEASE_SECONDS}"] if replicas > 1 else []),
        "",
    ]
    for order, driver in enumerate(drivers):
        lines += ["[[drivers]]", f'address = "{driver.address}"', f"order = {order}"]
        lines += [*(peer_tls("drivers", driver) if peer_tls else []), ""]
    for agent in agents:
        lines += ["[[agents]]", f'address = "{agent.address}"']
        lines += [*(peer_tls("agents", agent) if peer_tls else []), ""]
    return "\n".join([*lines, *extra])
