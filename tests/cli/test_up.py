"""``vmsnap up`` as a user runs it, and the CLI's commands against the stack it starts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path

from tests.cli.stack_support import COMPONENTS, Up, alive, vmsnap
from tests.support.procs import wait_serving
from vmsnap_sdk import DriverClient


def wait_for(condition: str, check: object, up: Up, timeout: float = 60.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{condition}\n{up.proc.output()}"
        time.sleep(0.1)


def listen_info(up: Up, array: str) -> dict[str, object]:
    info: dict[str, object] = json.loads((up.home / "arrays" / array / "listen.json").read_text())
    return info


def steal_port(port: int, timeout: float = 5.0) -> socket.socket:
    """Listen on ``port`` as soon as the killed emulator let go of it."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the emulator binds
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            return s
        except OSError:
            s.close()
            assert time.monotonic() < deadline, f"port {port} was never freed"
            time.sleep(0.002)


def test_up_runs_everything_survives_crashes_and_stops_cleanly(up: Up) -> None:
    pids = up.pids()
    assert set(pids) == COMPONENTS
    assert all(alive(pid) for pid in pids.values())
    output = up.proc.output()
    assert "vmsnap stack" in output
    for array in ("element", "ontap"):
        info = listen_info(up, array)
        assert info["pid"] == pids[f"emulator-{array}"]
        assert str(info["url"]) in output
        assert str(up.home / "arrays" / array) in output
        secret = up.home / "secrets" / f"{array}.password"
        assert secret.stat().st_mode & 0o777 == 0o600
    assert (up.home / "secrets").stat().st_mode & 0o777 == 0o700

    # A crashed agent comes back (after the backoff), under a new pid.
    os.kill(pids["agent"], signal.SIGKILL)
    wait_for("the agent was not restarted", lambda: up.pids()["agent"] != pids["agent"], up)
    wait_serving(up.address("agent"))

    # A crashed emulator comes back on the same port: its driver keeps running.
    element_url = listen_info(up, "element")["url"]
    os.kill(pids["emulator-element"], signal.SIGKILL)
    wait_for(
        "the Element emulator was not restarted",
        lambda: (
            listen_info(up, "element")["pid"] not in (pids["emulator-element"], None)
            and up.address("emulator-element") == element_url
        ),
        up,
    )
    assert up.pids()["driver-element"] == pids["driver-element"]
    element_pid = up.pids()["emulator-element"]

    # One that cannot get its port back comes up on another: its driver is restarted with it.
    ontap = listen_info(up, "ontap")
    os.kill(pids["emulator-ontap"], signal.SIGKILL)
    thief = steal_port(int(str(ontap["port"])))
    try:
        wait_for(
            "the ONTAP emulator did not come back on another port",
            lambda: listen_info(up, "ontap")["port"] != ontap["port"],
            up,
        )
        wait_for(
            "the ONTAP driver was not restarted with the new URL",
            lambda: up.pids()["driver-ontap"] != pids["driver-ontap"],
            up,
        )
        wait_serving(up.address("driver-ontap"))
    finally:
        thief.close()
    assert up.address("emulator-ontap") == listen_info(up, "ontap")["url"]
    after = up.pids()
    assert (after["emulator-element"], after["driver-element"]) == (
        element_pid,
        pids["driver-element"],
    ), "only the ONTAP driver follows the ONTAP emulator"

    # Both drivers work again: the whole story, take and revert included, passes.
    demo = vmsnap(up.home, "demo")
    assert "demo passed" in demo.stdout, demo.stdout

    # No password in anything the stack printed or logged.
    logs = up.logs()
    for password in up.passwords():
        assert len(password) >= 32
        assert password not in logs
        assert password not in demo.stdout + demo.stderr

    restarted = up.pids()
    up.proc.signal(signal.SIGTERM)
    assert up.proc.popen.wait(60) == 0, up.proc.output()
    for name, pid in {**pids, **restarted}.items():
        assert not alive(pid), f"{name} (pid {pid}) outlived vmsnap up"
    assert not (up.home / "run" / "stack.json").exists()
    assert "stopped" in up.proc.output()


def test_a_second_up_on_the_same_home_refuses(shared_up: Up) -> None:
    second = vmsnap(shared_up.home, "up", "--home", str(shared_up.home), check=False)
    assert second.returncode == 1
    assert "already runs" in second.stderr
    assert all(alive(pid) for pid in shared_up.pids().values())


async def _ontap_test_file(address: str, name: str) -> str:
    client = DriverClient.connect(address, timeout=30)
    try:
        return (await client.create_test_volume(name, 1 << 20)).locator
    finally:
        await client.close()


def test_commands_against_the_stack(shared_up: Up) -> None:
    home = shared_up.home
    drivers = json.loads(vmsnap(home, "drivers", "list", "--json").stdout)
    assert sorted(d["name"] for d in drivers) == ["com.netapp.ontap", "com.netapp.solidfire"]
    agents = json.loads(vmsnap(home, "agents", "list", "--json").stdout)
    assert [(a["name"], a["hypervisor"]) for a in agents] == [("sim-1", "sim")]

    locator = asyncio.run(_ontap_test_file(shared_up.address("driver-ontap"), "cli-a"))
    defined = vmsnap(
        home,
        "vm",
        "define",
        "vm-cli",
        "--disk",
        f"vda={locator}",
        "--disk",
        "vdb=file:///var/lib/vm-cli.qcow2,format=qcow2,size=4096",
        "--json",
    )
    assert json.loads(defined.stdout)["state"] == "STOPPED"
    vmsnap(home, "vm", "start", "vm-cli")
    vms = json.loads(vmsnap(home, "vm", "list", "--json").stdout)
    assert ("vm-cli", "RUNNING") in [(v["id"], v["state"]) for v in vms]
    shown_vm = json.loads(vmsnap(home, "vm", "show", "vm-cli", "--json").stdout)
    assert [d["disk"] for d in shown_vm["volumes"]] == ["vda", "vdb"]

    created = json.loads(vmsnap(home, "snapshot", "create", "vm-cli", "first", "--json").stdout)
    assert created["done"] and created["error"] is None
    snapshot = created["vm_snapshot"]
    assert snapshot["state"] == "READY"
    assert sorted((g["kind"], g["owner"]) for g in snapshot["groups"]) == [
        ("DRIVER", "com.netapp.ontap"),
        ("HYPERVISOR", "sim-1"),
    ]

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

    element = next(d for d in drivers if d["name"] == "com.netapp.solidfire")
    vmsnap(home, "drivers", "remove", element["name"])
    remaining = json.loads(vmsnap(home, "drivers", "list", "--json").stdout)
    assert [d["name"] for d in remaining] == ["com.netapp.ontap"]
    again = json.loads(
        vmsnap(
            home,
            "drivers",
            "register",
            element["address"],
            "--order",
            str(element["order"]),
            "--json",
        ).stdout
    )
    assert (again["name"], again["order"]) == (element["name"], element["order"])

    missing = vmsnap(home, "snapshot", "show", "no-such-snapshot", check=False)
    assert missing.returncode == 3  # not found
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
    assert "NOT_FOUND" in missing.stderr


def test_no_password_is_printed_or_logged(shared_up: Up) -> None:
    passwords = shared_up.passwords()
    assert len(passwords) == 2
    logs = shared_up.logs()
    assert "emulator-element" in logs and "driver-ontap" in logs
    for password in passwords:
        assert password not in logs
    for path in (shared_up.home / "arrays").rglob("*"):
        if path.is_file() and path.stat().st_size < 1 << 20:
            for password in passwords:
                assert password.encode() not in path.read_bytes(), path


def test_no_stack_is_one_clear_line(sockdir: Path) -> None:
    result = vmsnap(sockdir, "vm", "list", check=False)
    assert result.returncode == 5  # unavailable
    assert "UNAVAILABLE" in result.stderr
    assert "vmsnap up" in result.stderr


def test_host_flag_overrides(sockdir: Path) -> None:
    result = vmsnap(
        sockdir, "--host", f"unix://{sockdir}/elsewhere.sock", "drivers", "list", check=False
    )
    assert result.returncode == 5  # unavailable
    assert f"unix://{sockdir}/elsewhere.sock" in result.stderr


def test_a_killed_up_is_cleaned_up_by_the_next_and_ctrl_c_stops(
    sockdir: Path, tmp_path: Path
) -> None:
    first = Up(sockdir, tmp_path / "first.log")
    orphans = first.pids()
    first.proc.signal(signal.SIGKILL)  # no chance to stop its children
    first.proc.stop()

    try:
        # The children stop by themselves when `up` is killed, no next `up` needed.
        deadline = time.monotonic() + 60
        while any(alive(pid) for pid in orphans.values()):
            assert time.monotonic() < deadline, "children outlived a killed vmsnap up"
            time.sleep(0.1)
        second = Up(sockdir, tmp_path / "second.log")
        try:
            for name, pid in orphans.items():
                assert not alive(pid), f"{name} (pid {pid}) of the killed stack still runs"
            children = second.pids()
            assert set(children) == COMPONENTS
            assert set(children.values()).isdisjoint(orphans.values())
            # The emulators kept their ports (and data) across the two stacks.
            before = {c["name"]: c["address"] for c in first.stack["components"]}
            assert second.address("emulator-element") == before["emulator-element"]
            second.proc.signal(signal.SIGINT)
            assert second.proc.popen.wait(60) == 0, second.proc.output()
            assert not any(alive(pid) for pid in children.values())
        finally:
            second.proc.stop(timeout=30)
    finally:
        for pid in orphans.values():  # whatever happened, the test leaves none behind
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)
