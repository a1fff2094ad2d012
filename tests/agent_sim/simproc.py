"""A ``vmsnap-agent --hypervisor sim`` process for tests: its own process, a unix socket."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from tests.support.procs import Proc, wait_serving


class SimProc:
    """A ``vmsnap-agent --hypervisor sim`` process on a unix socket, restartable."""

    def __init__(self, sockdir: Path, state: Path, log: Path) -> None:
        self.address = f"unix://{sockdir}/agent.sock"
        self.state = state
        self.log = log
        self.proc: Proc | None = None

    def start(self) -> None:
        self.proc = Proc(
            [
                sys.executable,
                "-m",
                "vmsnap_agent.cli",
                "--hypervisor",
                "sim",
                "--listen",
                self.address,
                "--state",
                str(self.state),
                "--name",
                "sim-test",
            ],
            self.log,
        )
        wait_serving(self.address)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGKILL)
        self.proc.stop()  # reaps it and closes its log; SIGTERM is not sent to the dead

    def stop(self) -> int:
        assert self.proc is not None
        return self.proc.stop()
