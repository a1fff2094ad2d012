"""Fixtures of the drivers' tests: real emulator processes, real driver processes.

Each driver runs as ``python -m vmsnap_driver_<vendor>`` on a unix socket, with
the emulator's credentials in a password file and TLS verified against the
emulator's certificate; the tests reach it with the SDK's ``DriverClient``,
exactly as the host does.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.procs import Proc, wait_serving
from vmsnap_emulators.pytest_fixtures import (  # noqa: F401 - imported fixtures register here
    element_emulator,
    fresh_element_emulator,
    fresh_ontap_emulator,
    ontap_emulator,
)
from vmsnap_emulators.testing import EmulatorProcess


class DriverProcess:
    """A driver subprocess: ``address`` to connect to, ``log()`` of everything it wrote."""

    def __init__(self, proc: Proc, address: str, password: str) -> None:
        self.proc = proc
        self.address = address
        self.password = password

    def log(self) -> str:
        return self.proc.output()


@contextmanager
def run_driver(
    vendor: str, emu: EmulatorProcess, *extra: str, configured_by: str = "flags"
) -> Iterator[DriverProcess]:
    """Start ``vmsnap-driver-<vendor>`` against ``emu`` and wait until it serves.

    ``configured_by`` says where the array settings come from: ``flags``,
    ``environment`` (``VMSNAP_<VENDOR>_*``) or ``file`` (a TOML file, ``--config``).
    """
    workdir = Path(tempfile.mkdtemp(prefix="vsd-", dir="/tmp"))
    try:
        password_file = workdir / "password"
        password_file.write_text(emu.password + "\n", encoding="utf-8")
        password_file.chmod(0o600)
        address = f"unix://{workdir}/driver.sock"
        settings = {
            # A host name, not 127.0.0.1: the Element SDK verifies TLS for names only.
            "url": f"https://localhost:{emu.port}",
            "user": emu.user,
            "password_file": str(password_file),
            "ca_file": emu.cert,
        }
        env: dict[str, str] = {}
        array_args: list[str] = []
        if configured_by == "flags":
            for key, value in settings.items():
                array_args += ["--" + key.replace("_", "-"), value]
        elif configured_by == "environment":
            env = {f"VMSNAP_{vendor.upper()}_{key.upper()}": v for key, v in settings.items()}
        else:
            config = workdir / "driver.toml"
            config.write_text("".join(f'{k} = "{v}"\n' for k, v in settings.items()))
            array_args = ["--config", str(config)]
        args = [
            sys.executable,
            "-m",
            f"vmsnap_driver_{vendor}",
            "--listen",
            address,
            *array_args,
            "--log-level",
            "debug",
            *extra,
        ]
        proc = Proc(args, workdir / "driver.log", env=env)
        try:
            wait_serving(address, timeout=30)
            yield DriverProcess(proc, address, emu.password)
        finally:
            proc.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def solidfire_driver(element_emulator: EmulatorProcess) -> Iterator[DriverProcess]:  # noqa: F811
    """The SolidFire driver (with the fixture service) on the shared Element emulator."""
    with run_driver("solidfire", element_emulator, "--conformance-fixture") as driver:
        yield driver


@pytest.fixture(scope="module")
def netapp_driver(ontap_emulator: EmulatorProcess) -> Iterator[DriverProcess]:  # noqa: F811
    """The NetApp driver (with the fixture service) on the shared ONTAP emulator."""
    with run_driver(
        "netapp", ontap_emulator, "--conformance-fixture", "--job-poll-interval", "0.05"
    ) as driver:
        yield driver
