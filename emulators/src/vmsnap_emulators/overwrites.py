"""The emulators' journal of overwrites: each call that replaces a live volume's
(or a disk file's) data with a snapshot's, with when it was asked.

A test harness that also knows each VM's power state over time (the sim agent's
power journal, ``vmsnap_agent.sim.POWER_LOG``) checks with it that no array
reverted a disk under a running guest (``python -m tests.chaos``, invariant
"not_running"). Written only where ``VMSNAP_EMULATOR_OVERWRITES=1``, to
``overwrites.jsonl`` in the emulator's state directory: one JSON line per call,
appended before the data changes (a call cut by a kill is still listed: it was
asked), each with ``time.monotonic()`` (the machine's clock since boot, the same
in every process of the machine) as ``mono``. Nothing of a vendor's API: the
emulators' own, for harnesses.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

ENV = "VMSNAP_EMULATOR_OVERWRITES"
FILE = "overwrites.jsonl"


class Overwrites:
    """Appends to ``<directory>/overwrites.jsonl`` when the environment asks for it."""

    def __init__(self, directory: Path) -> None:
        self.path: Path | None = directory / FILE if os.environ.get(ENV) == "1" else None

    def record(self, call: str, **fields: Any) -> None:
        if self.path is None:
            return
        line = json.dumps({"mono": time.monotonic(), "call": call, **fields}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def read(path: Path) -> list[dict[str, Any]]:
    """The journal's entries (a line a kill cut short is skipped)."""
    entries = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


__all__ = ["ENV", "FILE", "Overwrites", "read"]
