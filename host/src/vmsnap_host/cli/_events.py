"""``vmsnap events`` and ``vmsnap operations cancel``: live operations, and stopping one.

Events are pushed by the host (WatchOperations) as each step is journaled; one
line per change, or one JSON object per line with ``--json``.
docs/design.md, "Live events, cancel and traces".
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from vmsnap_host.cli import _output as out
from vmsnap_host.cli._common import hint_host, run
from vmsnap_host.client import HostClient, Operation


def line(op: Operation) -> str:
    """One change, one line: time, operation, type, VM, progress, step, outcome."""
    when = (op.update_time or datetime.now(UTC)).astimezone().strftime("%H:%M:%S")
    if not op.done:
        state = "cancelling" if op.cancel_requested else "running"
    elif op.error is None:
        state = "succeeded"
    else:
        state = f"failed {op.error.code.name}: {op.error.message}"
    return (
        f"{when}  {op.id}  {op.type.name.lower():<7} {op.vm_id}  "
        f"{op.progress_percent:>3}%  {op.step or '-'}  [{state}]"
    )


def _emit(op: Operation, json_: bool) -> None:
    if json_:
        print(json.dumps(out.jsonable(op), sort_keys=True), flush=True)
    else:
        print(line(op), flush=True)


def events(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep streaming changes as they happen.")
    ] = False,
    vm: Annotated[str, typer.Option(metavar="VM", help="Only this VM's operations.")] = "",
    operation: Annotated[
        str,
        typer.Option(metavar="OP", help="Only this operation (--follow ends when it is done)."),
    ] = "",
    since: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="First show operations changed in the last SECONDS (default without "
            "--follow: 300).",
        ),
    ] = 0.0,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Operations as they change (state, step, progress), pushed by the host.

    With --follow: one line per change until Ctrl-C (or until --operation is
    done). Without: the operations changed in the last --since seconds, as they
    stand, then exit.

    Example: vmsnap events --follow --vm web
    """

    window = since if since > 0 else (0.0 if follow else 300.0)
    start = datetime.now(UTC) - timedelta(seconds=window) if window else None

    async def work(host: HostClient) -> None:
        if not follow:
            page = await host.list_operations(vm, page_size=200)
            recent = [
                op
                for op in reversed(page.items)
                if (not operation or op.id == operation)
                and (start is None or (op.update_time is not None and op.update_time >= start))
            ]
            for op in recent:
                _emit(op, json_)
            return
        async for op in host.watch_operations(vm, operation_id=operation, since=start):
            _emit(op, json_)

    try:
        run(work)
    except KeyboardInterrupt:
        sys.exit(130)


def cancel(
    operation_id: Annotated[str, typer.Argument(metavar="OP", help="The operation's id.")],
    json_: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Cancel an operation: a queued one is dropped; a running take is rolled back
    (nothing left on any array), a running revert finished on one side."""

    op = run(lambda host: host.cancel_operation(operation_id))
    if json_:
        out.print_json(op)
        return
    if op.done:
        out.console.print(f"operation {op.id} cancelled: it had not started", highlight=False)
    else:
        out.console.print(
            f"cancel of operation {op.id} recorded; it stops at its next step "
            f"(a take is rolled back, a revert finished on one side). Follow it: "
            f"`vmsnap{hint_host()} events --follow --operation {op.id}`",
            highlight=False,
            soft_wrap=True,
        )
