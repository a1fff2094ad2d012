"""``vmsnap operations``, ``vmsnap reconcile`` and ``vmsnap findings``: the host's
long-running work and what its reconciler found."""

from __future__ import annotations

from typing import Annotated

import typer

from vmsnap_host.cli import _output as out
from vmsnap_host.cli._common import JsonOption, full_ids, options, run, want_json
from vmsnap_host.cli._events import cancel as operations_cancel

operations_app = typer.Typer(
    help="Long-running operations.",
    no_args_is_help=True,
    epilog="Example: vmsnap operations list --running",
)
operations_app.command("cancel")(operations_cancel)
findings_app = typer.Typer(
    help="What the reconciler found and did.",
    no_args_is_help=True,
    epilog="Example: vmsnap reconcile --dry-run && vmsnap findings list --limit 10",
)


@operations_app.command("list")
def operations_list(
    vm: Annotated[str, typer.Option(metavar="VM", help="Only this VM.")] = "",
    running: Annotated[bool, typer.Option("--running", help="Only operations not done.")] = False,
    limit: Annotated[int, typer.Option(metavar="N", help="At most this many (newest first).")] = 50,
    json_: JsonOption = False,
) -> None:
    """Operations, newest first."""
    page = run(lambda host: host.list_operations(vm, only_running=running, page_size=limit))
    if want_json(json_):
        out.print_json(page.items)
    else:
        out.console.print(out.operation_table(page.items, full=full_ids(), wide=options.wide))


@operations_app.command("show")
def operations_show(
    operation_id: Annotated[str, typer.Argument(metavar="OPERATION", help="Operation id.")],
    json_: JsonOption = False,
) -> None:
    """One operation (and its VM snapshot as it stands)."""
    op = run(lambda host: host.get_operation(operation_id))
    if want_json(json_):
        out.print_json(op)
        return
    out.console.print(out.operation_table([op], full=True, wide=options.wide))
    if op.vm_snapshot is not None:
        out.show_snapshot(op.vm_snapshot)


def reconcile(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report: delete, mark and thaw nothing.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(metavar="SECONDS", help="Longest wait for the pass.")
    ] = 300.0,
    json_: JsonOption = False,
) -> None:
    """Compare every driver's and agent's objects with the catalog now, and repair.

    Orphans older than host.orphan_grace_seconds are deleted, READY
    snapshots whose objects vanished are marked, freezes of finished
    operations are thawed. The findings are kept: `vmsnap findings list`.
    """
    report = run(lambda host: host.reconcile(dry_run, timeout=timeout))
    if want_json(json_):
        out.print_json(report)
        return
    if not report.findings:
        out.console.print("nothing to reconcile: every object matches the catalog")
        return
    out.console.print(out.finding_table(report.findings))
    if report.omitted:
        out.console.print(f"{report.omitted} more findings: `vmsnap findings list`")


@findings_app.command("list")
def findings_list(
    limit: Annotated[int, typer.Option(metavar="N", help="At most this many (newest first).")] = 50,
    json_: JsonOption = False,
) -> None:
    """Findings the reconciler kept, newest first."""
    page = run(lambda host: host.list_findings(page_size=limit))
    if want_json(json_):
        out.print_json(page.items)
    else:
        out.console.print(out.finding_table(page.items, with_time=True))
