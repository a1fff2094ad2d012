"""How strict a run is: ``--require CAPABILITY`` and ``--fail-on-skip``.

A skip is the suite's honest answer when a driver does not offer something;
a vendor's CI that promises a capability wants its absence to be a failure,
and a CI that must prove every check ran wants no skip at all. Both are
applied to a finished report, so the CLI, the pytest plugin and Python
callers share one rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from vmsnap_sdk._types import Capability
from vmsnap_sdk.conformance._runner import CheckResult, Report

#: The id of the result that ``--require`` adds to a report.
REQUIRED_ID = "capabilities.required"
CAPABILITY_NAMES = [c.name for c in Capability if c is not Capability.UNSPECIFIED]


def parse_capability(name: str) -> Capability:
    """``REVERT_UNDO``, ``CAPABILITY_REVERT_UNDO`` or ``revert_undo``; ValueError otherwise."""
    key = name.strip().upper().removeprefix("CAPABILITY_")
    if key not in CAPABILITY_NAMES:
        raise ValueError(f"unknown capability {name!r}: one of {', '.join(CAPABILITY_NAMES)}")
    return Capability[key]


def parse_capabilities(items: Iterable[str]) -> tuple[Capability, ...]:
    """Repeatable and comma-separated flag values, parsed."""
    return tuple(parse_capability(p) for item in items for p in item.split(",") if p.strip())


def apply_policy(
    report: Report, *, require: Iterable[Capability] = (), fail_on_skip: bool = False
) -> Report:
    """The report with the run's strictness applied (in place, and returned)."""
    required = list(dict.fromkeys(require))
    if report.unreachable:
        return report
    if required:
        advertised = set(report.driver.get("capabilities", ()))
        missing = [c for c in required if f"CAPABILITY_{c.name}" not in advertised]
        detail = "; ".join(
            f"the driver does not advertise CAPABILITY_{c.name} (--require)" for c in missing
        )
        report.checks.append(
            CheckResult(
                REQUIRED_ID,
                "capabilities",
                "the driver advertises every capability the run requires",
                "failed" if missing else "passed",
                detail,
            )
        )
        # A check skipped for a required capability is a failure of that check too.
        names = [f"CAPABILITY_{c.name}" for c in missing]
        report.checks[:] = [
            dataclasses.replace(r, status="failed", detail=f"{r.detail} (--require)")
            if r.status == "skipped" and any(n in r.detail for n in names)
            else r
            for r in report.checks
        ]
    if fail_on_skip:
        report.checks[:] = [
            dataclasses.replace(r, status="failed", detail=f"{r.detail} (--fail-on-skip)")
            if r.status == "skipped"
            else r
            for r in report.checks
        ]
    return report
