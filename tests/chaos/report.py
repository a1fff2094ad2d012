"""What a run did and found: a table for people, JSON for machines."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.checks import INVARIANTS, Violation
from tests.chaos.killer import KillRecord
from tests.chaos.workload import OpRecord

TIMING_NOTE = (
    "the seed fixes every choice (operations, targets, patterns, kills, outages); "
    "timing is not deterministic, so outcomes and findings can differ between runs "
    "of one seed"
)
#: Violations printed in full; the JSON keeps all of them.
SHOWN = 25


@dataclass
class Report:
    seed: int
    ops: int
    kills: int
    vms: int
    hypervisor: str
    command: str
    knobs: dict[str, Any]
    home: str = ""
    seconds: float = 0.0
    op_log: list[OpRecord] = field(default_factory=list)
    kill_log: list[KillRecord] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    #: "checked" or "not checkable" (the agent keeps no bytes for file:// disks).
    local_disk: str = "not checkable"
    #: Where freezes were read: "agent" (ListQuiesces) or "sim state".
    freeze_source: str = ""
    #: "rpc" (HostClient.reconcile) or "waited N s".
    reconcile: str = ""
    #: Disks whose bytes revert checks really compared (a zero would make them vacuous).
    compared: int = 0
    #: Array overwrites (reverts) checked against the VMs' power (a zero would make
    #: "not_running" vacuous).
    overwrites: int = 0
    notes: list[str] = field(default_factory=list)
    #: A failure of the harness itself (the stack did not start...): no verdict.
    error: str = ""

    @property
    def counts(self) -> dict[str, int]:
        found = Counter(v.invariant for v in self.violations)
        return {name: found.get(name, 0) for name in INVARIANTS}

    @property
    def ok(self) -> bool:
        return not self.error and not self.violations

    def ops_table(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter[str]] = {}
        for r in self.op_log:
            table.setdefault(r.kind, Counter())[r.outcome or "?"] += 1
        return {kind: dict(sorted(c.items())) for kind, c in sorted(table.items())}

    def kills_table(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter[str]] = {}
        for k in self.kill_log:
            row = table.setdefault(k.target or "(none)", Counter())
            row["kills"] += 1
            if k.moment_met and k.planned.moment != "any":
                row[k.planned.moment] += 1
            if k.planned.long:
                row["long outage"] += 1
        return {t: dict(c) for t, c in sorted(table.items())}

    def table(self) -> str:
        lines = [
            f"vmsnap chaos run: seed {self.seed}, {self.ops} ops on {self.vms} VMs "
            f"({self.hypervisor} agent), {len(self.kill_log)}/{self.kills} kills, "
            f"{self.seconds:.0f} s",
            f"  {TIMING_NOTE}",
            f"  command: {self.command}",
            "",
            f"{'operations':<16}{'total':>6}  outcomes",
        ]
        for kind, outcomes in self.ops_table().items():
            text = ", ".join(f"{o} {n}" for o, n in outcomes.items())
            lines.append(f"  {kind:<14}{sum(outcomes.values()):>6}  {text}")
        lines += ["", f"{'kills by target':<20}{'kills':>6}{'frozen':>8}{'revert':>8}{'long':>6}"]
        for target, row in self.kills_table().items():
            lines.append(
                f"  {target:<18}{row.get('kills', 0):>6}{row.get('while frozen', 0):>8}"
                f"{row.get('during revert', 0):>8}{row.get('long outage', 0):>6}"
            )
        lines += ["", f"{'invariant':<84}violations"]
        for name, count in self.counts.items():
            lines.append(f"  {INVARIANTS[name]:<82}{count:>10}")
        lines.append(f"  disks compared byte for byte after reverts: {self.compared}")
        lines.append(f"  array overwrites checked against the VMs' power: {self.overwrites}")
        lines.append(f"  local disk bytes: {self.local_disk}")
        lines.append(
            f"  freezes read from: {self.freeze_source}"
            if self.freeze_source
            else "  freezes: NOT CHECKED (the agent has no ListQuiesces and is not the sim)"
        )
        if self.reconcile:
            lines.append(f"  reconcile pass: {self.reconcile}")
        if self.violations:
            lines += [
                "",
                f"violations ({min(SHOWN, len(self.violations))} of {len(self.violations)}):",
            ]
            lines += [f"  {v}" for v in self.violations[:SHOWN]]
        if self.notes:
            lines += ["", "notes:"] + [f"  {n}" for n in self.notes]
        if self.error:
            lines += ["", f"HARNESS ERROR (no verdict): {self.error}"]
        verdict = "PASS" if self.ok else ("ERROR" if self.error else "FAIL")
        lines += ["", f"{verdict}: {sum(self.counts.values())} violations"]
        if self.home:
            lines.append(f"  logs and state: {self.home}")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "ops": self.ops,
            "kills": self.kills,
            "vms": self.vms,
            "hypervisor": self.hypervisor,
            "command": self.command,
            "timing": TIMING_NOTE,
            "seconds": round(self.seconds, 1),
            "ok": self.ok,
            "error": self.error,
            "knobs": self.knobs,
            "operations": self.ops_table(),
            "kills_by_target": self.kills_table(),
            "invariants": {
                name: {"promise": INVARIANTS[name], "violations": count}
                for name, count in self.counts.items()
            },
            "violations": [asdict(v) for v in self.violations],
            "disks_compared": self.compared,
            "overwrites_checked": self.overwrites,
            "local_disk": self.local_disk,
            "freeze_source": self.freeze_source,
            "reconcile": self.reconcile,
            "notes": self.notes,
            "home": self.home,
            "op_log": [asdict(r) for r in self.op_log],
            "kill_log": [
                {
                    "killed": k.target,
                    "planned": asdict(k.planned),
                    "moment_met": k.moment_met,
                    "at": k.at,
                    "restarted_after": k.restarted_after,
                    "note": k.note,
                }
                for k in self.kill_log
            ],
        }

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.as_json(), indent=2) + "\n")
