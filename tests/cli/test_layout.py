"""The host distribution imports no emulator and no part of the embedded stack
(``vmsnap-stack``), and without that distribution ``vmsnap up``, ``demo`` and
``certs init`` say in one line what to install.

Each check runs a fresh interpreter: ``sys.modules`` of the test process holds
whatever other tests imported.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vmsnap_stack import Layout
from vmsnap_stack._table import build

#: The only vmsnap packages the host distribution imports: it reaches agents and
#: drivers over gRPC, and the stack (with the emulators) is another distribution.
ALLOWED = ("vmsnap_host", "vmsnap_sdk")

_IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, sys
import vmsnap_host, vmsnap_host.cli
skipped = ("__main__", "migrations")  # __main__ runs the program; env.py needs alembic's context
for info in pkgutil.walk_packages(vmsnap_host.__path__, "vmsnap_host."):
    if not any(part in skipped for part in info.name.split(".")):
        importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""

#: Runs the ``vmsnap`` console script's entry point with vmsnap_stack not importable,
#: as on a machine where only vmsnap-host is installed.
_WITHOUT_STACK = """
import sys
sys.modules["vmsnap_stack"] = None  # any `import vmsnap_stack` now fails
from vmsnap_host.cli import main
sys.argv = ["vmsnap", *sys.argv[1:]]
main()
"""


def test_host_imports_no_emulator_and_no_stack_module() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EVERY_MODULE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout.splitlines()[-1])
    assert any(m.startswith("vmsnap_host.cli.") for m in modules)  # it did import them
    leaked = [m for m in modules if m.startswith("vmsnap") and m.split(".")[0] not in ALLOWED]
    assert leaked == [], f"vmsnap_host imports {leaked}"
    assert not any(m.startswith("vmsnap_host.cli.stack") for m in modules)  # moved out


def _vmsnap_without_stack(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_STACK, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=_env(home),
    )


def _env(home: Path) -> dict[str, str]:
    """This environment with an empty home of the test's own and no stack to find."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMSNAP_")}
    return {**env, "VMSNAP_HOME": str(home), "COLUMNS": "200"}


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["up"], "up"),
        (["up", "--hypervisor", "qemu"], "up"),
        (["demo"], "demo"),
        (["certs", "init"], "certs init"),
    ],
)
def test_stack_commands_without_vmsnap_stack_name_the_distribution(
    args: list[str], command: str, tmp_path: Path
) -> None:
    result = _vmsnap_without_stack(*args, home=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"`vmsnap {command}`" in lines[0]
    assert "pip install vmsnap-stack" in lines[0]
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


def test_help_lists_up_and_demo_without_vmsnap_stack(tmp_path: Path) -> None:
    result = _vmsnap_without_stack("--help", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert " up " in result.stdout and " demo " in result.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_qemu_stack_is_the_sim_table_with_nbd_and_a_locator_map(tmp_path: Path) -> None:
    """One component table: the same names, user, password files and ports for both
    hypervisors; QEMU adds the Element emulator's NBD export and the agent's map."""
    sim = {c.name: c for c in build(Layout(tmp_path / "s"), "sim")}
    qemu = {c.name: c for c in build(Layout(tmp_path / "q"), "qemu")}
    assert list(sim) == list(qemu)
    for name in ("emulator-element", "emulator-ontap", "driver-element", "driver-ontap"):
        for hypervisor, c, home in (("sim", sim[name], "s"), ("qemu", qemu[name], "q")):
            argv = c.current_command()
            array = name.rpartition("-")[2]
            assert argv[argv.index("--user") + 1] == "vmsnap", (hypervisor, argv)
            assert argv[argv.index("--password-file") + 1] == str(
                tmp_path / home / "secrets" / f"{array}.password"
            )
    assert "--nbd-listen" in qemu["emulator-element"].current_command()
    assert "--nbd-listen" not in sim["emulator-element"].current_command()
    assert "--nbd-listen" not in qemu["emulator-ontap"].current_command()
    assert "--map" not in sim["agent"].current_command()


def test_the_qemu_stack_keeps_the_emulators_ports_and_maps_them(tmp_path: Path) -> None:
    """VMs hold the NBD port in their disks' urls: a home's stack starts the Element
    emulator on the ports of its last start (``listen.json``) and maps them."""
    layout = Layout(tmp_path)
    https, nbd = _free_port(), _free_port()
    element = layout.array_data("element")
    element.mkdir(parents=True)
    (element / "listen.json").write_text(json.dumps({"port": https, "nbd": {"port": nbd}}))
    stack = {c.name: c for c in build(layout, "qemu")}
    emulator = stack["emulator-element"].current_command()
    assert emulator[emulator.index("--listen") + 1] == f"127.0.0.1:{https}"
    assert emulator[emulator.index("--nbd-listen") + 1] == f"127.0.0.1:{nbd}"
    agent = stack["agent"].current_command()
    maps = [agent[i + 1] for i, a in enumerate(agent) if a == "--map"]
    assert maps == [
        f"element://vmsnap-element/=nbd://127.0.0.1:{nbd}/",
        f"ontap://svm0/={tmp_path}/arrays/ontap/export/svm0/",
        f"file:///var/lib/vmsnap/={tmp_path}/disks/",
    ]
    # A restarted emulator on another port restarts the agent with the new map.
    assert stack["agent"].follows == "emulator-element"
