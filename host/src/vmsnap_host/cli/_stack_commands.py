"""``vmsnap up`` and ``vmsnap demo``: the embedded stack's commands.

The stack itself (array emulators, reference drivers, agent, supervisor) is the
``vmsnap-stack`` distribution; this host distribution imports no emulator, so
the commands import :mod:`vmsnap_stack` only when they run and say how to
install it when it is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

from vmsnap_host.cli._common import Exit, fail, options
from vmsnap_host.client import vmsnap_home

#: The one line a command of the stack prints when ``vmsnap-stack`` is not installed.
MISSING = (
    "`vmsnap {command}` runs the embedded stack, which is not installed: pip install vmsnap-stack"
)


def load_stack(command: str) -> ModuleType:
    """:mod:`vmsnap_stack`, imported now (never when the CLI starts), or a usage
    failure that names the distribution to install."""
    try:
        import vmsnap_stack
    except ImportError as exc:
        # Only the stack's own absence: a broken dependency inside it is a bug to show.
        if exc.name != "vmsnap_stack":
            raise
        fail(MISSING.format(command=command), Exit.USAGE)
    return vmsnap_stack


def up(
    home: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="vmsnap home (default: $VMSNAP_HOME or ~/.vmsnap)."),
    ] = None,
    hypervisor: Annotated[
        str,
        typer.Option(
            metavar="sim|qemu",
            help="Hypervisor agent to run: sim, or qemu (real guests on the Element and "
            "ONTAP emulators with the reference drivers).",
        ),
    ] = "sim",
    replicas: Annotated[
        int,
        typer.Option(
            min=1,
            max=9,
            metavar="N",
            help="Host replicas to run (more than one needs --db postgres); clients "
            "reach them all and fail over.",
        ),
    ] = 1,
    db: Annotated[
        str,
        typer.Option(
            metavar="sqlite|postgres",
            help="The catalog: sqlite (a file in the home), or postgres (a PostgreSQL "
            "server of the stack's own, from Debian's postgresql package).",
        ),
    ] = "sqlite",
    auth: Annotated[
        bool,
        typer.Option(
            "--auth",
            help="Require authentication: tokens for admin, demo-a and demo-b (operators) in "
            "$VMSNAP_HOME/secrets/token-<name>; the CLI uses the admin one.",
        ),
    ] = False,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="Every process on mutual TLS, with a development CA in $VMSNAP_HOME/certs "
            "(vmsnap certs init); drivers and agent pinned by name and fingerprint.",
        ),
    ] = False,
) -> None:
    """Run the embedded stack until Ctrl-C or SIGTERM: array emulators, drivers, agent, host.

    Every process serves Prometheus /metrics on a loopback port; the table shows each URL.

    Example: vmsnap up --home /tmp/vs   (then, elsewhere: VMSNAP_HOME=/tmp/vs vmsnap demo)
    """
    stack = load_stack("up")
    sys.exit(
        stack.run_up(
            (home or vmsnap_home()).expanduser().resolve(),
            hypervisor,
            replicas,
            db,
            auth=auth,
            tls=tls,
        )
    )


def demo(
    hypervisor: Annotated[
        str,
        typer.Option(
            metavar="sim|qemu",
            help="Hypervisor agent of a stack started for the demo: sim, or qemu (a real "
            "guest writes on its disks).",
        ),
    ] = "sim",
    memory: Annotated[
        bool,
        typer.Option(
            "--memory",
            help="Include the VM's RAM: paused with its memory saved while the arrays cut, "
            "reverted back to RUNNING.",
        ),
    ] = False,
) -> None:
    """Tell the story of one VM snapshot across two vendors and a local disk; exit 0 if all went right."""
    sys.exit(load_stack("demo").run_demo(options.host, hypervisor, memory))
