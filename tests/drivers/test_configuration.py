"""Each driver, as a process, takes its array settings from flags, environment or a file."""

from __future__ import annotations

import pytest

from tests.drivers.conftest import run_driver
from vmsnap_emulators.testing import EmulatorProcess
from vmsnap_sdk import DriverClient


@pytest.mark.parametrize("configured_by", ["environment", "file"])
@pytest.mark.parametrize("vendor", ["solidfire", "netapp"])
async def test_driver_reaches_its_array_configured_by(
    vendor: str,
    configured_by: str,
    element_emulator: EmulatorProcess,
    ontap_emulator: EmulatorProcess,
) -> None:
    emu = element_emulator if vendor == "solidfire" else ontap_emulator
    with run_driver(vendor, emu, configured_by=configured_by) as driver:
        client = DriverClient.connect(driver.address, timeout=30)
        try:
            probe = await client.probe()
        finally:
            await client.close()
    assert probe.ready, probe.message
