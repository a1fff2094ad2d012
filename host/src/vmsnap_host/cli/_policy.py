"""``vmsnap policy …``: snapshot policies (schedules with retention of their own)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.table import Table

from vmsnap_host.cli import _output as out
from vmsnap_host.client import HostClient, QuiescePolicy, SnapshotPolicy

_T = TypeVar("_T")

policy_app = typer.Typer(
    help="Snapshot policies: a schedule, its VMs, and a retention that deletes only its own "
    "snapshots.\n\nExample: vmsnap policy create nightly --vm web --schedule '0 3 * * *' "
    "--keep-last 7",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
_QUIESCE = {
    "off": QuiescePolicy.OFF,
    "best-effort": QuiescePolicy.BEST_EFFORT,
    "required": QuiescePolicy.REQUIRED,
}


def _run(work: Callable[[HostClient], Awaitable[_T]]) -> _T:
    from vmsnap_host.cli import _common as _app

    return _app.run(work)


def _fail(message: str) -> NoReturn:
    from vmsnap_host.cli import _common as _app

    _app.fail(message)


def parse_labels(items: Sequence[str], *, allow_remove: bool) -> tuple[dict[str, str], list[str]]:
    """``k=v`` pairs (also comma-separated) to set, and ``k-`` keys to remove."""
    labels: dict[str, str] = {}
    remove: list[str] = []
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            key, sep, value = part.partition("=")
            if sep and key:
                labels[key] = value
            elif allow_remove and not sep and part.endswith("-") and len(part) > 1:
                remove.append(part[:-1])
            else:
                hint = "KEY=VALUE or KEY- (remove)" if allow_remove else "KEY=VALUE"
                _fail(f"label {part!r}: expected {hint}")
    return labels, remove


def _target(p: SnapshotPolicy) -> str:
    return f"vm {p.vm_id}" if p.vm_id else f"labels {out.labels_text(p.selector)}"


def _keep(p: SnapshotPolicy) -> str:
    parts = [
        f"{label} {n}"
        for label, n in (("last", p.keep_last), ("daily", p.keep_daily), ("weekly", p.keep_weekly))
        if n
    ]
    return ", ".join(parts)


def _when(p: SnapshotPolicy) -> str:
    return "paused" if p.paused else out._when(p.next_run_time)


def policy_table(policies: Sequence[SnapshotPolicy]) -> Table:
    table = Table("name", "targets", "schedule", "zone", "keep", "next run", "last run")
    for p in policies:
        table.add_row(
            p.name,
            _target(p),
            p.schedule,
            p.time_zone or "UTC",
            _keep(p),
            _when(p),
            out._when(p.last_run_time),
        )
    return table


def _show(p: SnapshotPolicy, json_: bool) -> None:
    if json_:
        out.print_json(p)
        return
    out.console.print(policy_table([p]))
    if p.runs:
        runs = Table(
            "scheduled",
            "vm",
            "outcome",
            "snapshot",
            "missed",
            "deleted",
            "error",
            title="recent runs",
        )
        for r in p.runs:
            runs.add_row(
                out._when(r.scheduled_time),
                r.vm_id,
                r.outcome,
                r.vm_snapshot_id,
                str(r.missed_count or ""),
                str(len(r.deleted_snapshot_ids) or ""),
                r.error_message,
            )
        out.console.print(runs)


@policy_app.command("create")
def policy_create(
    name: Annotated[str, typer.Argument(help="Policy name (unique).")],
    *,
    schedule: Annotated[
        str, typer.Option(help='Cron ("0 3 * * *", @daily) or "@every 30s|5m|2h|1d".')
    ],
    keep_last: Annotated[int, typer.Option(help="Keep the N newest of its snapshots.")] = 0,
    keep_daily: Annotated[int, typer.Option(help="Keep the newest of each of D days.")] = 0,
    keep_weekly: Annotated[int, typer.Option(help="Keep the newest of each of W weeks.")] = 0,
    vm: Annotated[str, typer.Option(help="The one VM it snapshots.")] = "",
    selector: Annotated[
        str, typer.Option(help="k=v,… : every VM whose labels hold all of these.")
    ] = "",
    quiesce: Annotated[str, typer.Option(help="off | best-effort | required")] = "best-effort",
    timezone: Annotated[
        str, typer.Option(help="IANA zone of the cron and of days/weeks (default UTC).")
    ] = "",
    json_: JsonOption = False,
) -> None:
    """Create a snapshot policy."""
    if quiesce not in _QUIESCE:
        _fail(f"--quiesce {quiesce!r}: choose off, best-effort or required")
    if bool(vm) == bool(selector):
        _fail("give exactly one of --vm VM and --selector k=v,…")
    labels, _ = parse_labels([selector], allow_remove=False) if selector else ({}, [])
    policy = _run(
        lambda host: host.create_policy(
            name,
            schedule=schedule,
            vm_id=vm,
            selector=labels,
            keep_last=keep_last,
            keep_daily=keep_daily,
            keep_weekly=keep_weekly,
            quiesce=_QUIESCE[quiesce],
            time_zone=timezone,
        )
    )
    _show(policy, json_)


@policy_app.command("list")
def policy_list(json_: JsonOption = False) -> None:
    """Every snapshot policy."""
    policies = _run(lambda host: host.all_policies())
    if json_:
        out.print_json(policies)
    else:
        out.console.print(policy_table(policies))


@policy_app.command("show")
def policy_show(name: str, json_: JsonOption = False) -> None:
    """A policy with its recent runs (one row per VM and scheduled time)."""
    _show(_run(lambda host: host.get_policy(name)), json_)


@policy_app.command("pause")
def policy_pause(name: str, json_: JsonOption = False) -> None:
    """Stop a policy's runs and retention until resumed."""
    _show(_run(lambda host: host.pause_policy(name)), json_)


@policy_app.command("resume")
def policy_resume(name: str, json_: JsonOption = False) -> None:
    """Run a paused policy again from its next scheduled time."""
    _show(_run(lambda host: host.resume_policy(name)), json_)


@policy_app.command("delete")
def policy_delete(name: str) -> None:
    """Delete a policy (its snapshots stay; no retention deletes them any more)."""
    _run(lambda host: host.delete_policy(name))
    out.console.print(f"policy {name} deleted")
