"""Run ``vmsnap up`` and the CLI as a user does, and look at what they started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


def read_stack(home: Path, timeout: float = 90.0) -> dict[str, Any]:
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
        assert result.returncode == 0, f"vmsnap {args}:\n{result.stdout}{result.stderr}"
    return result


class Up:
    """``vmsnap up --home HOME`` in a subprocess, once its whole stack serves."""

    def __init__(self, home: Path, log: Path, *args: str) -> None:
        self.home = home
        self.proc = Proc(
            [sys.executable, "-m", "vmsnap_host.cli", "up", "--home", str(home), *args],
            log,
            env={"COLUMNS": "200"},  # Rich's table, unwrapped: tests look for whole URLs
        )
        deadline = time.monotonic() + 90
        # A stack file left by a killed stack names another pid: wait for ours.
        while (stack := read_stack(home)).get("pid") != self.proc.pid:
            assert time.monotonic() < deadline, self.proc.output()
            time.sleep(0.1)
        self.stack = stack
        for host in self.stack["host"].split(","):
            wait_serving(host)
        # The stack file and the host's health come before `up` prints its table
        # and the line under it: wait for that line so tests read the whole output.
        while "logs in " not in self.proc.output():
            assert time.monotonic() < deadline, self.proc.output()
            time.sleep(0.05)

    def components(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c for c in read_stack(self.home)["components"]}

    def pids(self) -> dict[str, int]:
        return {name: c["pid"] for name, c in self.components().items()}

    def address(self, name: str) -> str:
        return str(self.components()[name]["address"])

    def passwords(self) -> list[str]:
        return [p.read_text().strip() for p in sorted((self.home / "secrets").iterdir())]

    def logs(self) -> str:
        """Everything the stack wrote: ``vmsnap up``'s output and every child's log."""
        texts = [self.proc.output()]
        texts += [p.read_text(errors="replace") for p in sorted((self.home / "logs").iterdir())]
        return "\n".join(texts)


COMPONENTS = {
    "emulator-element",
    "emulator-ontap",
    "driver-element",
    "driver-ontap",
    "agent",
    "host",
}
