"""``vmsnap demo`` end to end, as the README's first command runs it."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.cli.stack_support import Up, vmsnap


def processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(proc.name))
    return found


def test_demo_starts_its_own_stack_and_leaves_nothing(sockdir: Path) -> None:
    started = time.monotonic()
    result = vmsnap(sockdir, "demo")  # an empty VMSNAP_HOME: no stack answers
    took = time.monotonic() - started
    assert "demo passed" in result.stdout
    assert took < 60, f"the demo took {took:.0f} s with starting and stopping its stack"
    match = re.search(r"starting one in (/tmp/vmsnap-demo-\S+)", result.stdout)
    assert match, result.stdout
    home = match.group(1).rstrip(" …")
    assert not Path(home).exists(), "a passed demo removes its temporary home"
    assert processes_mentioning(home) == []
    for step in ("Take a VM snapshot", "plan", "frozen at", "original data back", "REMOVED"):
        assert step in result.stdout
    # The reference drivers took the array disks, next to their emulators.
    for seen in ("com.netapp.solidfire", "com.netapp.ontap", "emulator-element serving on https"):
        assert seen in result.stdout


def test_demo_uses_a_running_stack(shared_up: Up) -> None:
    result = vmsnap(shared_up.home, "demo")
    assert "Using the vmsnap stack at" in result.stdout
    assert "demo passed" in result.stdout


def test_demo_memory_on_a_running_stack(shared_up: Up) -> None:
    """``--memory``: RAM and the disks of two arrays in one snapshot, reverted to RUNNING
    (the sim agent: its paused VM and saved state; QEMU's guest in tests/e2e_qemu)."""
    result = vmsnap(shared_up.home, "demo", "--memory")
    assert "demo passed" in result.stdout, result.stdout
    for step in ("Take a VM snapshot with its memory", "paused", "RAM state", "RUNNING again"):
        assert step in result.stdout, result.stdout
