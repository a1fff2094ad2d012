"""Both drivers pass the conformance suite against their emulators.

Each driver runs with the fixture service, so the suite makes its own test
volumes and proves that a revert restores the bytes. The only skips allowed
name a capability the driver does not advertise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.drivers.conftest import run_driver
from vmsnap_emulators.testing import start_emulator
from vmsnap_sdk.conformance import Report, all_checks, run_suite

ARGS = {
    "solidfire": ("--conformance-fixture",),
    "netapp": ("--conformance-fixture", "--job-poll-interval", "0.05"),
}
EMULATOR = {"solidfire": "element", "netapp": "ontap"}


def _failures(report: Report) -> dict[str, str]:
    return {r.id: r.detail for r in report.checks if r.status == "failed"}


@pytest.mark.parametrize("vendor", ["solidfire", "netapp"])
async def test_driver_passes_the_conformance_suite(vendor: str, tmp_path: Path) -> None:
    with (
        start_emulator(EMULATOR[vendor], tmp_path / "array", durable=False) as emu,
        run_driver(vendor, emu, *ARGS[vendor]) as driver,
    ):
        report = await run_suite(driver.address)
    assert not _failures(report), _failures(report)
    assert len(report.checks) == len(all_checks())
    for result in report.checks:
        if result.status == "skipped":
            assert result.detail.startswith("the driver does not advertise CAPABILITY_"), result
            capability = result.detail.rsplit("CAPABILITY_", 1)[1].split()[0].rstrip(".:,")
            assert f"CAPABILITY_{capability}" not in report.driver["capabilities"], result
    # CAPABILITY_CLONE_VOLUMES on both reference drivers: every clone check ran (none
    # skipped) and passed against the emulator's real bytes. (The same report as the
    # whole suite's: a second run of only the clone checks proved nothing more.)
    assert "CAPABILITY_CLONE_VOLUMES" in report.driver["capabilities"]
    clone_checks = {c.id for c in all_checks() if c.category == "clone"}
    ran = {r.id: r.status for r in report.checks}
    assert {ran.get(i) for i in clone_checks | {"capabilities.clone_volumes"}} == {"passed"}, ran
