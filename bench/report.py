"""Collect metrics, print them as a table, write them as JSON."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Metric:
    value: float
    unit: str
    goal: str = ""
    note: str = ""

    def met(self) -> bool | None:
        """True/False against a goal such as '<= 1.5'; None without a goal."""
        if not self.goal:
            return None
        op, _, bound = self.goal.partition(" ")
        limit = float(bound)
        return self.value <= limit if op == "<=" else self.value >= limit


@dataclass
class Report:
    metrics: dict[str, Metric] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0
    quick: bool = False

    def add(self, name: str, value: float, unit: str, goal: str = "", note: str = "") -> None:
        self.metrics[name] = Metric(round(value, 4), unit, goal, note)

    def skip(self, name: str, why: str) -> None:
        self.skipped[name] = why

    def table(self) -> str:
        rows = [("metric", "value", "unit", "goal", "met")]
        for name, m in self.metrics.items():
            met = m.met()
            rows.append(
                (
                    name,
                    f"{m.value:g}",
                    m.unit,
                    m.goal,
                    "" if met is None else ("yes" if met else "NO"),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines += [f"skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "processor": platform.machine(),
                "cpus": os.cpu_count(),
            },
            "quick": self.quick,
            "elapsed_s": round(self.elapsed_s, 1),
            "metrics": {
                name: {"value": m.value, "unit": m.unit, "goal": m.goal or None, "note": m.note}
                for name, m in self.metrics.items()
            },
            "skipped": self.skipped,
        }

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
