"""How the CLI shows things: Rich tables for people, ``--json`` for programs."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table

from vmsnap_host.client import (
    AgentStatus,
    AuditRecord,
    DriverStatus,
    Finding,
    Health,
    Operation,
    SnapshotGroup,
    VMSnapshot,
    VMSnapshotState,
)
from vmsnap_sdk import VM

console = Console()
errors = Console(stderr=True)
if not console.is_terminal:
    # Piped or captured (`| grep`, CI logs, `make demo | tee`): never cut or wrap a
    # cell; an id in a pipe must be whole. Tables are only as wide as their content.
    console = Console(width=max(console.width, 1000))

#: Characters of an id a table shows on a terminal (``-o wide``/``--no-trunc``: all);
#: commands accept any unique prefix, so the short form can be typed back.
SHORT_ID = 12


def short(value: str, full: bool) -> str:
    """An id as a table shows it."""
    return value if full or len(value) <= SHORT_ID else value[:SHORT_ID]


def jsonable(value: Any) -> Any:
    """Dataclasses, enums and datetimes as plain JSON values (enums by name)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not isinstance(getattr(value, f.name), bytes)
        }
    if isinstance(value, enum.Enum | grpc.StatusCode):
        return value.name
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [jsonable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    # Plain print: Rich would wrap long lines and break the JSON.
    print(json.dumps(jsonable(value), indent=2, sort_keys=True))


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _health(value: Health) -> str:
    return {"SERVING": "[green]serving[/]", "NOT_SERVING": "[red]not serving[/]"}.get(
        value.name, "unknown"
    )


def labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def vm_table(vms: Sequence[VM], labels: Mapping[str, Mapping[str, str]] | None = None) -> Table:
    table = Table("id", "name", "state", "agent", "memory", "disks", "labels", title="VMs")
    for vm in vms:
        disks = "\n".join(f"{v.disk} → {v.locator}" for v in vm.volumes)
        table.add_row(
            vm.id,
            vm.name,
            vm.state.name,
            vm.agent,
            f"{vm.memory_mib} MiB",
            disks,
            labels_text((labels or {}).get(vm.id, {})),
        )
    return table


def snapshot_table(
    snapshots: Sequence[VMSnapshot], *, full: bool = True, wide: bool = False
) -> Table:
    """``wide`` adds the parent, the freeze window and the description."""
    columns = ["id", "vm", "name", "state", "consistency", "memory", "current", "policy", "created"]
    table = Table(*columns, *(["parent", "freeze", "description"] if wide else []))
    table.columns[0].no_wrap = True
    for s in snapshots:
        row = [
            short(s.id, full),
            s.vm_id,
            s.name,
            s.state.name,
            s.consistency.name,
            "yes" if s.include_memory else "",
            "*" if s.current else "",
            s.policy_name,
            _when(s.create_time),
        ]
        if wide:
            freeze = f"{(s.freeze_seconds or 0.0) * 1000:.0f} ms" if s.freeze_start_time else "-"
            row += [s.parent_id or "-", freeze, s.description]
        table.add_row(*row)
    return table


def group_table(groups: Sequence[SnapshotGroup]) -> Table:
    table = Table("taken by", "kind", "disks", "why", "consistency", "ready", title="plan")
    for g in groups:
        table.add_row(
            g.owner,
            g.kind.name.lower(),
            ", ".join(g.disks),
            "\n".join(g.reasons),
            g.consistency.name,
            "yes" if g.ready else "no",
        )
    return table


def freeze_text(s: VMSnapshot) -> str:
    if s.freeze_start_time is None:
        if s.state is VMSnapshotState.ERROR:
            return "the VM was not frozen"
        return "no freeze was needed"
    seconds = s.freeze_seconds or 0.0
    if s.memory_state_location:
        # Memory with disks on arrays: the VM was paused (RAM saved) while they cut.
        return f"paused at {_when(s.freeze_start_time)} for {seconds * 1000:.0f} ms"
    return f"frozen at {_when(s.freeze_start_time)} for {seconds * 1000:.0f} ms"


def show_snapshot(s: VMSnapshot) -> None:
    console.print(f"[bold]{s.name}[/] ({s.id}) of VM {s.vm_id}: [bold]{s.state.name}[/]")
    console.print(
        f"  consistency {s.consistency.name}, quiesce policy {s.quiesce.name}, "
        f"memory {'included' if s.include_memory else 'not included'}"
    )
    console.print(f"  {freeze_text(s)}")
    if s.policy_id:
        console.print(f"  made by policy {s.policy_name} ({s.policy_id})")
    else:
        console.print("  made by hand (no policy: no retention deletes it)")
    if s.memory_state_location:
        console.print(
            f"  RAM state {s.memory_state_bytes / (1 << 20):.1f} MiB at {s.memory_state_location}",
            highlight=False,
        )
    if s.parent_id:
        console.print(f"  parent {s.parent_id}{', current' if s.current else ''}")
    for warning in s.warnings:
        console.print(f"  [yellow]warning:[/] {warning}")
    if s.error is not None:
        console.print(f"  [red]error:[/] {s.error}")
    if s.missing:
        console.print(f"  [red]missing:[/] {s.missing}")
    if s.groups:
        console.print(group_table(s.groups))


def operation_table(
    operations: Sequence[Operation], *, full: bool = True, wide: bool = False
) -> Table:
    """``wide`` shows the whole error."""
    table = Table("id", "type", "vm", "snapshot", "done", "progress", "step", "error", "created")
    table.columns[0].no_wrap = True
    table.columns[3].no_wrap = True
    if not wide:
        table.columns[7].max_width = 48
        table.columns[7].overflow = "ellipsis"
        table.columns[7].no_wrap = True
    for op in operations:
        table.add_row(
            short(op.id, full),
            op.type.name,
            op.vm_id,
            short(op.vm_snapshot_id, full),
            "yes" if op.done else "no",
            f"{op.progress_percent}%",
            op.step,
            str(op.error) if op.error else "",
            _when(op.create_time),
        )
    return table


def driver_table(drivers: Sequence[DriverStatus]) -> Table:
    table = Table("name", "address", "version", "contract", "health", "capabilities", "order")
    for d in drivers:
        health = _health(d.health) + (f"\n{d.health_message}" if d.health_message else "")
        table.add_row(
            d.name,
            d.address,
            d.vendor_version,
            d.contract_version,
            health,
            ", ".join(d.capabilities),
            str(d.order),
        )
    return table


def agent_table(agents: Sequence[AgentStatus]) -> Table:
    table = Table("name", "address", "hypervisor", "version", "health", "quiesce", "memory")
    for a in agents:
        health = _health(a.health) + (f"\n{a.health_message}" if a.health_message else "")
        table.add_row(
            a.name,
            a.address,
            a.hypervisor,
            a.version,
            health,
            ", ".join(a.quiesce_methods),
            "yes" if a.memory_snapshots else "no",
        )
    return table


def finding_table(findings: Sequence[Finding], *, with_time: bool = False) -> Table:
    columns = ["kind", "peer", "object", "snapshot", "action", "detail"]
    table = Table(*(["time", *columns] if with_time else columns), title="findings")
    for f in findings:
        row = [f.kind, f.peer, f.object_id, f.vm_snapshot_id, f.action, f.detail]
        table.add_row(*([_when(f.time), *row] if with_time else row))
    return table


def audit_table(records: Sequence[AuditRecord]) -> Table:
    table = Table(
        "time",
        "principal",
        "project",
        "method",
        "target",
        "request",
        "result",
        "detail",
        title="audit",
    )
    for r in records:
        result = f"[red]{r.result} (refused)[/]" if r.refused else r.result
        who = f"{r.principal or '-'} ({r.authenticated_by or 'none'})"
        table.add_row(
            _when(r.time), who, r.project, r.method, r.target, r.request_id, result, r.detail
        )
    return table
