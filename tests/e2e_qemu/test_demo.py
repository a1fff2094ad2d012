"""``vmsnap up --hypervisor qemu`` and ``vmsnap demo --hypervisor qemu`` on a real guest."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import Proc, wait_serving
from tests.support.tools import missing

from .conftest import processes_under

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        missing("qemu-system-x86_64", "qemu-system-x86") is not None,
        reason="qemu-system-x86_64 not installed (apt-get install qemu-system-x86)",
    ),
]


@pytest.fixture
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vsd-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def vmsnap(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VMSNAP_HOST"}
    env["VMSNAP_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "vmsnap_host.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )


STORY = (
    "the guest's counter on vda reached",
    "APPLICATION consistent",
    "vda's ext4 is clean with the snapshot-time counter",
    "demo passed",
)


@pytest.mark.ondemand  # the same stack as test_up_with_qemu_then_demo: `make test-all`
def test_demo_on_qemu_starts_its_own_stack_and_leaves_nothing(home: Path) -> None:
    result = vmsnap(home, "demo", "--hypervisor", "qemu")
    assert result.returncode == 0, result.stdout + result.stderr
    for text in STORY:
        assert text in result.stdout, result.stdout
    match = re.search(r"starting one in (/tmp/vmsnap-demo-\S+)", result.stdout)
    assert match, result.stdout
    demo_home = Path(match.group(1).rstrip(" …"))
    assert not demo_home.exists(), "a passed demo removes its temporary home"
    assert processes_under(demo_home) == []


def test_up_with_qemu_then_demo(home: Path) -> None:
    up = Proc(
        [
            sys.executable,
            "-m",
            "vmsnap_host.cli",
            "up",
            "--home",
            str(home),
            "--hypervisor",
            "qemu",
        ],
        home / "up.log",
    )
    try:
        wait_serving(f"unix://{home}/run/host.sock", timeout=90)
        result = vmsnap(home, "demo")
        assert "Using the vmsnap stack at" in result.stdout, result.stdout + result.stderr
        for text in STORY:
            assert text in result.stdout, result.stdout
    finally:
        up.signal(signal.SIGTERM)
        assert up.stop(60) == 0, up.output()
    # The demo's VM ended STOPPED; the stack stopped every child it ran.
    assert processes_under(home) == [], processes_under(home)
