"""The host distribution imports no emulator and no part of the embedded stack
(``vmsnap-stack``), and without that distribution ``vmsnap up``, ``demo`` and
``certs init`` say in one line what to install.

Each check runs a fresh interpreter: ``sys.modules`` of the test process holds
whatever other tests imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
        env={"PATH": "/usr/bin:/bin", "VMSNAP_HOME": str(home), "COLUMNS": "200"},
    )


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
