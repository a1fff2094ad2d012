"""One owner per data directory.

The emulator process holds an exclusive ``flock`` on ``DATA/.lock`` while it runs; offline
tools (see :func:`vmsnap_emulators.element.offline.open_element_data`) take the same lock,
so nobody edits the state under a running emulator.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO


class DataDirBusyError(RuntimeError):
    """Another process (usually a running emulator) owns the data directory."""


def lock_data_dir(data: Path) -> IO[bytes]:
    """Lock ``data`` (created if needed); keep the returned file open to keep the lock."""
    data.mkdir(parents=True, exist_ok=True)
    f = (data / ".lock").open("wb")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise DataDirBusyError(f"another emulator is using {data}") from None
    return f
