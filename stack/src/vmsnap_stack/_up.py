"""``vmsnap up``: run the embedded stack in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from rich.table import Table

from vmsnap_host.cli import _output as out
from vmsnap_host.client import vmsnap_home
from vmsnap_stack._security import Security, certs_dir, token_path
from vmsnap_stack._supervisor import Stack, StackError
from vmsnap_stack._table import Layout


def stack_table(stack: Stack) -> Table:
    pids = stack.pids()
    addresses = stack.addresses()
    table = Table("component", "role", "address", "metrics", "pid", "what", title="vmsnap stack")
    for c in stack.components:
        table.add_row(
            c.name,
            c.role,
            addresses[c.name],
            c.metrics or "-",
            str(pids.get(c.name, "-")),
            c.description,
        )
    return table


def run_up(
    home: Path,
    hypervisor: str,
    replicas: int = 1,
    db: str = "sqlite",
    *,
    auth: bool = False,
    tls: bool = False,
) -> int:
    """Start, supervise until a signal, stop; the exit code of ``vmsnap up``."""
    return asyncio.run(_up(home, hypervisor, replicas, db, Security(auth=auth, tls=tls)))


async def _up(home: Path, hypervisor: str, replicas: int, db: str, security: Security) -> int:
    try:
        layout = Layout(home)
        stack = Stack(
            layout,
            hypervisor,
            on_event=lambda m: out.console.print(f"[dim]{m}[/]"),
            replicas=replicas,
            db=db,
            security=security,
        )
    except ValueError as exc:
        out.errors.print(f"[red]error:[/] {exc}")
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    out.console.print(f"starting the vmsnap stack in {home} …")
    starting = asyncio.create_task(stack.start())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        # Interrupted while starting: start() stops what it started when cancelled.
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, StackError):
            await starting
        return 130
    stopped.cancel()
    try:
        starting.result()
    except StackError as exc:
        out.errors.print(f"[red]error:[/] {exc}", highlight=False)
        return 1

    out.console.print(stack_table(stack))
    out.console.print(f"logs in {layout.logs}; the host's configuration is {layout.config}")
    out.console.print(
        f"arrays' data in {layout.arrays}; their generated passwords in {layout.secrets} (0600)"
    )
    if security.auth:
        out.console.print(
            f"authentication on: tokens in {token_path(layout, 'admin')} (admin, used by the "
            "CLI), token-demo-a and token-demo-b (operators of projects demo-a, demo-b)"
        )
    if security.tls:
        out.console.print(
            f"every process on mutual TLS: CA and certificates in {certs_dir(layout)}"
        )
    default_home = vmsnap_home().resolve() == home
    hint = "" if default_home else f"VMSNAP_HOME={home} "
    out.console.print(
        f"try: {hint}vmsnap demo   |   {hint}vmsnap drivers list   |   Ctrl-C stops the stack"
    )
    await stop.wait()
    out.console.print("stopping the vmsnap stack …")
    await stack.stop()
    out.console.print(f"stopped (pid {os.getpid()})")
    return 0
