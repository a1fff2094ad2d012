"""The report's three forms: text for a terminal, JSON, and JUnit XML for CI."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from vmsnap_sdk.conformance._runner import Report

_MARK = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}


def to_text(report: Report) -> str:
    if report.unreachable:
        # One line, also the summary: no check ran, so no check is listed.
        return f"failed: {report.unreachable} No check ran."
    lines = []
    driver = report.driver
    lines.append(
        f"driver {driver.get('name', '?')} {driver.get('vendor_version', '')} at "
        f"{driver.get('endpoint')}"
    )
    if "error" in driver:
        lines.append(f"  {driver['error']}")
    for result in report.checks:
        line = f"{_MARK[result.status]}  {result.id}"
        if result.detail:
            line += f"  — {result.detail}"
        lines.append(line)
    s = report.summary
    lines.append(f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped")
    return "\n".join(lines)


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2)


def to_junit(report: Report) -> str:
    s = report.summary
    suite = ET.Element(
        "testsuite",
        name="vmsnap-conformance",
        tests=str(len(report.checks)),
        failures=str(s["failed"]),
        skipped=str(s["skipped"]),
        errors="0",
        time=f"{sum(r.seconds for r in report.checks):.3f}",
    )
    if report.unreachable:
        suite.set("failures", "1")
        suite.set("tests", "1")
        case = ET.SubElement(
            suite, "testcase", classname="vmsnap.conformance.connection", name="reach"
        )
        ET.SubElement(case, "failure", message=report.unreachable)
    for result in report.checks:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"vmsnap.conformance.{result.category}",
            name=result.id,
            time=f"{result.seconds:.3f}",
        )
        if result.status == "failed":
            ET.SubElement(case, "failure", message=result.detail).text = result.description
        elif result.status == "skipped":
            ET.SubElement(case, "skipped", message=result.detail)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def write(path: str | Path, text: str) -> None:
    Path(path).write_text(text + "\n")
