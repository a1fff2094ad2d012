"""A short chaos run on the real stack holds every invariant; the harness leaves nothing behind.

CI runs this seed; longer runs (``python -m tests.chaos --ops 1000 --kills 50``)
are run by hand (README, reliability section).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.procs import ROOT

SHORT = ["--ops", "60", "--kills", "4", "--seed", "3"]


def _chaos(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.chaos", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _processes_naming(text: str) -> list[str]:
    """Command lines of live processes that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.timeout(240)
def test_a_short_seed_holds_every_invariant(tmp_path: Path, sockdir: Path) -> None:
    report = tmp_path / "chaos.json"
    home = sockdir / "home"  # short: unix socket paths are limited to 107 bytes
    result = _chaos(*SHORT, "--json", str(report), "--home", str(home), timeout=220)
    assert report.exists(), result.stdout + result.stderr
    data = json.loads(report.read_text())
    assert not data["error"], result.stdout
    assert {k: v["violations"] for k, v in data["invariants"].items()} == {
        name: 0 for name in data["invariants"]
    }, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    # The run did what it says: kills happened, reverts compared bytes.
    assert sum(row["kills"] for row in data["kills_by_target"].values()) >= 1, result.stdout
    assert data["disks_compared"] > 0, result.stdout
    # The arrays' reverts were checked against the VMs' power states.
    assert data["overwrites_checked"] > 0, result.stdout
    assert not _processes_naming(str(home)), "the harness left processes running"


@pytest.mark.timeout(120)
def test_an_interrupted_run_stops_every_process_it_started(sockdir: Path) -> None:
    home = sockdir / "home"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.chaos", "--ops", "400", "--kills", "0", "--home", str(home)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        # The host starts last: once its socket exists, every component runs.
        while not (home / "run" / "host.sock").exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the stack did not start"
            time.sleep(0.2)
        time.sleep(2.0)  # into the workload
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, output
    assert not _processes_naming(str(home)), "processes left after Ctrl-C"
