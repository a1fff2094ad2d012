"""``vmsnap up`` as a user runs it, and the CLI's commands against the stack it starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import Proc, wait_serving


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; only its parent can reap it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def read_stack(home: Path, timeout: float = 60.0) -> dict[str, Any]:
    path = home / "run" / "stack.json"
    deadline = time.monotonic() + timeout
    while True:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            return data
        except (OSError, ValueError):
            assert time.monotonic() < deadline, "vmsnap up did not write run/stack.json"
            time.sleep(0.1)


def vmsnap(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VMSNAP_HOST"}
    env["VMSNAP_HOME"] = str(home)
    result = subprocess.run(
        [sys.executable, "-m", "vmsnap_host.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


class Up:
    def __init__(self, home: Path, log: Path) -> None:
        self.home = home
        self.proc = Proc(
            [sys.executable, "-m", "vmsnap_host.cli", "up", "--home", str(home)],
            log,
        )
        deadline = time.monotonic() + 60
        # A stack file left by a killed stack names another pid: wait for ours.
        while (stack := read_stack(home)).get("pid") != self.proc.pid:
            assert time.monotonic() < deadline, self.proc.output()
            time.sleep(0.1)
        self.stack = stack
        wait_serving(self.stack["host"])

    def pids(self) -> dict[str, int]:
        return {c["name"]: c["pid"] for c in read_stack(self.home)["components"]}


@pytest.fixture
def up(sockdir: Path, tmp_path: Path) -> Iterator[Up]:
    stack = Up(sockdir, tmp_path / "up.log")
    try:
        yield stack
    finally:
        stack.proc.stop(timeout=30)


def test_up_serves_restarts_and_stops_cleanly(up: Up) -> None:
    pids = up.pids()
    assert set(pids) == {"driver-ontap", "driver-element", "agent", "host"}
    assert all(alive(pid) for pid in pids.values())
    assert "vmsnap stack" in up.proc.output()

    # A crashed child comes back (after the backoff), under a new pid.
    os.kill(pids["agent"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while up.pids()["agent"] in (pids["agent"], None):
        assert time.monotonic() < deadline, up.proc.output()
        time.sleep(0.1)
    restarted = up.pids()
    wait_serving(
        next(c["address"] for c in read_stack(up.home)["components"] if c["name"] == "agent")
    )

    up.proc.signal(signal.SIGTERM)
    assert up.proc.popen.wait(60) == 0, up.proc.output()
    for name, pid in restarted.items():
        assert not alive(pid), f"{name} (pid {pid}) outlived vmsnap up"
    assert not (up.home / "run" / "stack.json").exists()
    assert "stopped" in up.proc.output()


def test_a_second_up_on_the_same_home_refuses(up: Up, tmp_path: Path) -> None:
    second = vmsnap(up.home, "up", "--home", str(up.home), check=False)
    assert second.returncode == 1
    assert "already runs" in second.stderr
    assert all(alive(pid) for pid in up.pids().values())


def test_commands_against_the_stack(up: Up) -> None:
    home = up.home
    drivers = json.loads(vmsnap(home, "drivers", "list", "--json").stdout)
    assert sorted(d["name"] for d in drivers) == [
        "io.vmsnap.standin.element",
        "io.vmsnap.standin.ontap",
    ]
    agents = json.loads(vmsnap(home, "agents", "list", "--json").stdout)
    assert [(a["name"], a["hypervisor"]) for a in agents] == [("sim-1", "sim")]

    defined = vmsnap(
        home,
        "vm",
        "define",
        "vm-cli",
        "--disk",
        "vda=ontap://standin/cli-a",
        "--disk",
        "vdb=file:///var/lib/vm-cli.qcow2,format=qcow2,size=4096",
        "--json",
    )
    assert json.loads(defined.stdout)["state"] == "STOPPED"
    vmsnap(home, "vm", "start", "vm-cli")
    vms = json.loads(vmsnap(home, "vm", "list", "--json").stdout)
    assert [(v["id"], v["state"]) for v in vms] == [("vm-cli", "RUNNING")]
    shown_vm = json.loads(vmsnap(home, "vm", "show", "vm-cli", "--json").stdout)
    assert [d["disk"] for d in shown_vm["volumes"]] == ["vda", "vdb"]

    created = json.loads(vmsnap(home, "snapshot", "create", "vm-cli", "first", "--json").stdout)
    assert created["done"] and created["error"] is None
    snapshot = created["vm_snapshot"]
    assert snapshot["state"] == "READY"
    assert sorted(g["kind"] for g in snapshot["groups"]) == ["DRIVER", "HYPERVISOR"]

    listed = json.loads(vmsnap(home, "snapshot", "list", "--vm", "vm-cli", "--json").stdout)
    assert [s["id"] for s in listed] == [snapshot["id"]]
    shown = json.loads(vmsnap(home, "snapshot", "show", snapshot["id"], "--json").stdout)
    assert shown["name"] == "first"
    human = vmsnap(home, "snapshot", "show", snapshot["id"]).stdout
    assert "plan" in human and "first" in human

    reverted = json.loads(
        vmsnap(home, "snapshot", "revert", snapshot["id"], "--stop-vm", "--json").stdout
    )
    assert reverted["done"] and reverted["error"] is None
    assert json.loads(vmsnap(home, "vm", "show", "vm-cli", "--json").stdout)["state"] == "STOPPED"

    op_id = vmsnap(home, "snapshot", "delete", snapshot["id"], "--no-wait").stdout.strip()
    assert op_id
    operations = json.loads(vmsnap(home, "operations", "list", "--json").stdout)
    assert op_id in [o["id"] for o in operations]
    op = json.loads(vmsnap(home, "operations", "show", op_id, "--json").stdout)
    assert op["type"] == "DELETE"

    element = next(d for d in drivers if d["name"] == "io.vmsnap.standin.element")
    vmsnap(home, "drivers", "remove", element["name"])
    remaining = json.loads(vmsnap(home, "drivers", "list", "--json").stdout)
    assert [d["name"] for d in remaining] == ["io.vmsnap.standin.ontap"]
    again = json.loads(
        vmsnap(home, "drivers", "register", element["address"], "--order", "5", "--json").stdout
    )
    assert (again["name"], again["order"]) == (element["name"], 5)

    missing = vmsnap(home, "snapshot", "show", "no-such-snapshot", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
    assert "NOT_FOUND" in missing.stderr


def test_no_stack_is_one_clear_line(sockdir: Path) -> None:
    result = vmsnap(sockdir, "vm", "list", check=False)
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr
    assert "vmsnap up" in result.stderr


def test_host_flag_overrides(sockdir: Path) -> None:
    result = vmsnap(
        sockdir, "--host", f"unix://{sockdir}/elsewhere.sock", "drivers", "list", check=False
    )
    assert result.returncode == 1
    assert f"unix://{sockdir}/elsewhere.sock" in result.stderr


def test_children_of_a_killed_up_are_stopped_by_the_next(sockdir: Path, tmp_path: Path) -> None:
    first = Up(sockdir, tmp_path / "first.log")
    orphans = first.pids()
    first.proc.signal(signal.SIGKILL)  # no chance to stop its children
    first.proc.stop()

    try:
        second = Up(sockdir, tmp_path / "second.log")
        try:
            for name, pid in orphans.items():
                assert not alive(pid), f"{name} (pid {pid}) of the killed stack still runs"
            assert set(second.pids().values()).isdisjoint(orphans.values())
        finally:
            second.proc.stop(timeout=30)
    finally:
        for pid in orphans.values():  # whatever happened, the test leaves none behind
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)


def test_ctrl_c_stops_up_cleanly(up: Up) -> None:
    pids = up.pids()
    up.proc.signal(signal.SIGINT)
    assert up.proc.popen.wait(60) == 0, up.proc.output()
    assert not any(alive(pid) for pid in pids.values())


def test_children_stop_when_up_is_killed(sockdir: Path, tmp_path: Path) -> None:
    stack = Up(sockdir, tmp_path / "up.log")
    children = stack.pids()
    stack.proc.signal(signal.SIGKILL)
    stack.proc.stop()
    deadline = time.monotonic() + 60
    try:
        while any(alive(pid) for pid in children.values()):
            assert time.monotonic() < deadline, "children outlived a killed vmsnap up"
            time.sleep(0.1)
    finally:
        for pid in children.values():
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)
