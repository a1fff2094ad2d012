"""What the embedded stack runs: the one table to edit to add or swap a process.

Every component listens on a unix socket under ``$VMSNAP_HOME/run/`` and logs
to ``$VMSNAP_HOME/logs/<name>.log``. Drivers and the agent start first; the host
starts last with a generated configuration that lists them.

To swap a stand-in for a reference driver, change its :data:`DRIVERS` entry;
a driver that needs an array emulator next to it adds that emulator as one
more :class:`Component` in :func:`build` (role "array emulator", with its own
``ready`` check), listed before the driver.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Longest unix socket path the kernel accepts (sun_path is 108 bytes with the NUL).
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class Component:
    """One supervised child process.

    ``ready`` tells whether it serves; None means the grpc.health.v1 check on
    ``address`` (a process that is no gRPC server, such as an array emulator
    speaking HTTP, brings its own check).
    """

    name: str
    role: str
    description: str
    command: tuple[str, ...]
    address: str
    ready: Callable[[], Awaitable[bool]] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class DriverEntry:
    """A storage driver of the stack (the reference drivers will replace the stand-ins)."""

    name: str
    description: str
    module: str
    arguments: tuple[str, ...] = ()


#: The storage drivers of the embedded stack, in tie-break order.
DRIVERS: tuple[DriverEntry, ...] = (
    DriverEntry(
        "driver-ontap",
        "ontap:// volumes — in-memory stand-in for the NetApp ONTAP driver",
        "vmsnap_host.cli.stack.standin_driver",
        ("--scheme", "ontap"),
    ),
    DriverEntry(
        "driver-element",
        "element:// volumes — in-memory stand-in for the SolidFire Element driver",
        "vmsnap_host.cli.stack.standin_driver",
        ("--scheme", "element"),
    ),
)

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
    def agent_state(self) -> Path:
        return self.home / "agent"

    @property
    def stack_file(self) -> Path:
        """JSON written by ``vmsnap up``: its pid and each child's pid and address."""
        return self.run / "stack.json"

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


def build(layout: Layout, hypervisor: str = "sim") -> list[Component]:
    """The components of the stack, in start order (host last)."""
    if hypervisor not in HYPERVISORS:
        raise ValueError(f"hypervisor {hypervisor!r} is not available (choose: {HYPERVISORS})")
    components = [
        Component(
            name=d.name,
            role="storage driver",
            description=d.description,
            command=(*python_module(d.module), "--listen", layout.socket(d.name), *d.arguments),
            address=layout.socket(d.name),
        )
        for d in DRIVERS
    ]
    agent = Component(
        name="agent",
        role="hypervisor agent",
        description=f"{hypervisor} hypervisor, state in {layout.agent_state}",
        command=(
            *executable("vmsnap-agent", "vmsnap_agent.cli"),
            "--hypervisor",
            hypervisor,
            "--listen",
            layout.socket("agent"),
            "--state",
            str(layout.agent_state),
            "--name",
            f"{hypervisor}-1",
        ),
        address=layout.socket("agent"),
    )
    host = Component(
        name="host",
        role="host",
        description=f"control API, catalog {layout.database.name}",
        command=(
            *executable("vmsnap-host", "vmsnap_host.main"),
            "--listen",
            layout.socket("host"),
            "--db",
            str(layout.database),
            "--config",
            str(layout.config),
        ),
        address=layout.socket("host"),
    )
    if hypervisor == "qemu":  # real guests need the arrays' bytes: see _qemu.py
        from vmsnap_host.cli.stack._qemu import qemu_components

        return [*qemu_components(layout), host]
    return [*components, agent, host]


def host_config(drivers: Sequence[Component], agents: Sequence[Component]) -> str:
    """The host's TOML configuration listing the stack's drivers and agents."""
    lines = [
        "# Generated by `vmsnap up`; rewritten at every start.",
        "[host]",
        "health_interval_seconds = 1",
        "",
    ]
    for order, driver in enumerate(drivers):
        lines += ["[[drivers]]", f'address = "{driver.address}"', f"order = {order}", ""]
    for agent in agents:
        lines += ["[[agents]]", f'address = "{agent.address}"', ""]
    return "\n".join(lines)
