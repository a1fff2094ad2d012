"""The production units in deploy/systemd are valid and start what they say.

``systemd-analyze verify`` checks each unit (syntax, known directives, the
binary executable: ExecStart points at the test environment's programs), and
every ``--flag`` of every ExecStart is one the program's own parser accepts, so
a renamed flag breaks this test, not a production start.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
BIN = Path(sys.executable).parent


def _exec_start(unit: Path) -> list[str]:
    text = unit.read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    return line.removeprefix("ExecStart=").split()


def test_there_is_a_unit_for_every_process() -> None:
    assert {u.stem for u in UNITS} == {
        "vmsnap-host",
        "vmsnap-agent",
        "vmsnap-driver-solidfire",
        "vmsnap-driver-netapp",
    }


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.stem)
def test_every_flag_of_execstart_is_accepted_by_the_program(unit: Path) -> None:
    argv = _exec_start(unit)
    program = BIN / Path(argv[0]).name
    assert program.is_file(), f"{unit.name}: {argv[0]} is not a program of this project"
    usage = subprocess.run(
        [str(program), "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    known = set(re.findall(r"--[a-z][a-z0-9-]*", usage))
    flags = [a for a in argv[1:] if a.startswith("--")]
    assert flags, unit.name
    assert set(flags) <= known, f"{unit.name}: unknown flags {sorted(set(flags) - known)}"


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.stem)
def test_the_unit_is_hardened(unit: Path) -> None:
    text = unit.read_text()
    for directive in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=",
    ):
        assert directive in text, f"{unit.name} lacks {directive.strip()}"
    assert "password" not in " ".join(_exec_start(unit)).split("--password-file")[0]


def test_systemd_analyze_verifies_every_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (Debian package systemd, .ci/apt-packages.txt)")
        pytest.skip("systemd-analyze is not installed")
    copies = []
    for unit in UNITS:
        text = unit.read_text().replace("/usr/bin/", f"{BIN}/")
        (tmp_path / unit.name).write_text(text)
        copies.append(str(tmp_path / unit.name))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *copies],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Only lines about our units count (a container's own units may warn too).
    ours = [ln for ln in result.stderr.splitlines() if "vmsnap-" in ln]
    assert not ours, "\n".join(ours)
