"""Drivers that keep the contract pass every check; skips only name missing capabilities."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.conformance.conftest import EXAMPLE_PARAMS
from tests.support.procs import ROOT
from vmsnap_sdk.conformance import Params, Report, all_checks, run_suite


def assert_all_passed(report: Report) -> None:
    failed = {r.id: r.detail for r in report.checks if r.status == "failed"}
    assert not failed, failed


def test_there_are_at_least_60_checks_with_unique_ids_and_descriptions() -> None:
    checks = all_checks()
    assert len(checks) >= 60
    assert len({c.id for c in checks}) == len(checks)
    assert all(c.description and c.id.startswith(c.category + ".") for c in checks)


async def test_reference_driver_passes_everything(reference_driver: str) -> None:
    report = await run_suite(reference_driver)
    assert_all_passed(report)
    assert report.by_status("skipped") == []
    assert len(report.checks) == len(all_checks())


async def test_example_driver_passes_skipping_only_what_it_does_not_advertise(
    example_driver: str,
) -> None:
    report = await run_suite(example_driver, params=Params.from_dict(EXAMPLE_PARAMS))
    assert_all_passed(report)
    skipped = [r for r in report.checks if r.status == "skipped"]
    assert skipped, "the example offers neither revert nor the fixture"
    for result in skipped:
        assert result.detail.startswith("the driver does not advertise CAPABILITY_"), result
        capability = result.detail.rsplit("CAPABILITY_", 1)[1]
        assert f"CAPABILITY_{capability}" not in report.driver["capabilities"]


async def test_without_volumes_the_volume_checks_skip_naming_the_fixture(
    example_driver: str,
) -> None:
    report = await run_suite(example_driver, only=("take",))
    assert_all_passed(report)
    skipped = [r for r in report.checks if r.status == "skipped"]
    assert skipped
    assert all("CAPABILITY_CONFORMANCE_FIXTURE" in r.detail for r in skipped)


def test_cli_writes_json_and_junit_listing_every_check(
    example_driver: str, example_params: Path, tmp_path: Path
) -> None:
    out_json, out_xml = tmp_path / "report.json", tmp_path / "report.xml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmsnap_sdk.conformance.cli",
            example_driver,
            "--params",
            str(example_params),
            "--json",
            str(out_json),
            "--junit",
            str(out_xml),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out_json.read_text())
    assert set(report) == {"driver", "checks", "summary"}
    assert report["driver"]["name"] == "io.vmsnap.example.memory"
    assert [c["id"] for c in report["checks"]] == [c.id for c in all_checks()]
    for entry in report["checks"]:
        assert set(entry) == {"id", "category", "description", "status", "detail", "seconds"}
        assert entry["status"] in ("passed", "skipped")
    assert report["summary"]["failed"] == 0
    assert sum(report["summary"].values()) == len(report["checks"])
    suite = ET.parse(out_xml).getroot()
    assert len(suite.findall("testcase")) == len(report["checks"])


def test_cli_exit_status_is_nonzero_when_a_check_fails(tmp_path: Path) -> None:
    # Nothing listens there: every check fails (GetDriverInfo cannot answer).
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmsnap_sdk.conformance.cli",
            f"unix://{tmp_path}/nobody.sock",
            "--only",
            "identity",
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed" in done.stdout


def test_console_script_lists_checks_without_a_driver() -> None:
    script = Path(sys.executable).parent / "vmsnap-conformance"
    done = subprocess.run(
        [str(script), "--list", "--only", "take,list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines and all(line.startswith(("take.", "list.")) for line in lines)


def test_pytest_plugin_from_the_entry_point_generates_one_test_per_check(
    example_driver: str, example_params: Path
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--pyargs",
            "vmsnap_sdk.conformance.pytest_suite",
            "--vmsnap-endpoint",
            example_driver,
            "--vmsnap-params",
            str(example_params),
            "--vmsnap-only",
            "identity,take",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    expected = len([c for c in all_checks() if c.category in ("identity", "take")])
    assert f"{expected} passed" in done.stdout, done.stdout
