"""Crash-safe file writes: temp file + fsync + rename + directory fsync.

A reader (or the next start of the emulator) sees either the old or the new content, never a
torn file: rename is atomic on POSIX, and fsyncing the directory makes the rename durable.

:func:`set_durable` (``vmsnap-emulator --no-fsync``) turns every fsync of the emulators into a
no-op: writes stay atomic and survive a killed process (the page cache outlives it), not a
power loss. Meant for tests and benchmarks on busy shared machines.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

_durable = True


def set_durable(durable: bool) -> None:
    """Enable (default) or disable fsync for the whole process."""
    global _durable
    _durable = durable


def fsync(fd: int) -> None:
    if _durable:
        os.fsync(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside ``path`` durable."""
    if not _durable:
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        # Never leave temp files behind on failure (disk full, interrupted, ...).
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any, *, mode: int = 0o644) -> None:
    """Serialize ``obj`` as JSON and replace ``path`` with it atomically."""
    data = json.dumps(obj, indent=1, sort_keys=True).encode("utf-8")
    atomic_write_bytes(path, data, mode=mode)


def remove_stale_temps(path: Path) -> None:
    """Delete temp files that an interrupted :func:`atomic_write_bytes` left next to ``path``."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def read_json(path: Path) -> Any:
    """Read a JSON file written by :func:`atomic_write_json`."""
    with path.open("rb") as f:
        return json.loads(f.read())
