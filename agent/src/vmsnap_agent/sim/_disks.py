"""The bytes of the sim's ``file://`` disks and of the native snapshots that keep them.

Only ``file://`` disks hold bytes in the sim; a disk on an array (``ontap://``,
``element://``, …) is a name the sim points at, so its native snapshot keeps
nothing of it (DescribeVM says so with ``native_snapshot=False``). Layout under
the agent's state directory::

    disks/ABS/PATH                               the disk file:///ABS/PATH (disk_path)
    native/<vm key>/<snapshot key>/<disk key>    its copy in a native snapshot

``<vm key>``, ``<snapshot key>`` and ``<disk key>`` are the ids themselves when
they are safe file names, else a hash (``_store.vm_key``). A missing disk file is
created (sparse) with the volume's ``size_bytes`` (empty when 0).

No byte is ever written in place, so a SIGKILL at any instant leaves every file
whole, old or new: a copy goes to a temporary name (a dot name ending in
``.tmp``), is fsynced, then renamed over its target. Whoever writes a disk from
outside (a test, the chaos harness) must therefore open it anew for each write:
a revert replaces the file, it does not write into it. How a take, a revert
and a delete are ordered around these copies (the snapshot record and the VM's
pending revert are the truth) is ``_agent.SimAgent``'s business.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote

from vmsnap_agent.sim._store import vm_key

DISKS_DIR = "disks"
NATIVE_DIR = "native"
FILE_SCHEME = "file://"
_CHUNK = 1 << 20


def holds_bytes(locator: str) -> bool:
    """Whether the sim keeps this disk's bytes (and so its native snapshots do)."""
    return locator.startswith(FILE_SCHEME)


def disk_path(state_dir: Path | str, locator: str) -> Path | None:
    """Where the sim agent serving ``state_dir`` keeps the bytes of a disk.

    ``file:///ABS/PATH`` is ``<state_dir>/disks/ABS/PATH`` (percent escapes
    decoded); any other scheme holds no bytes in the sim: None. Raises
    ValueError for a ``file://`` locator that is not an absolute path without
    ``.`` or ``..`` parts (it could point out of ``state_dir``).
    """
    if not holds_bytes(locator):
        return None
    path = unquote(locator[len(FILE_SCHEME) :])
    parts = path.split("/")
    if parts[0] != "" or any(p in ("", ".", "..") or "\0" in p for p in parts[1:]):
        raise ValueError(
            f"{locator!r}: a file locator must be file:///ABSOLUTE/PATH (no empty, . or .. parts)"
        )
    return Path(state_dir, DISKS_DIR, *parts[1:])


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_of(path: Path) -> Path:
    """The temporary name a new version of ``path`` is written under."""
    return path.with_name(f".{path.name}.tmp")


def ensure_disk(path: Path, size_bytes: int) -> None:
    """Create a missing disk file: sparse, ``size_bytes`` long (0 = empty)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_of(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, max(0, size_bytes))
        os.fsync(fd)
    finally:
        os.close(fd)
    # A link, not a rename: a file someone put there meanwhile is kept.
    with contextlib.suppress(FileExistsError):
        os.link(tmp, path)
    tmp.unlink()
    fsync_dir(path.parent)


def _data_extents(fd: int, size: int) -> Iterable[tuple[int, int]]:
    """(start, end) of the parts of a file that may hold data (holes skipped)."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole up to the end
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no hole support: all data
                yield offset, size
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        offset = end


def write_copy(source: Path, target: Path) -> Path:
    """Copy ``source`` to the temporary name of ``target``, fsynced; returns that name.

    Holes stay holes (a 1 GiB disk with 4 KiB written costs 4 KiB). The caller
    renames it into place (:func:`install`) when its commit point is reached.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_of(target)
    src = os.open(source, os.O_RDONLY)
    try:
        size = os.fstat(src).st_size
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for start, end in _data_extents(src, size):
                pos = start
                while pos < end:
                    chunk = os.pread(src, min(_CHUNK, end - pos), pos)
                    if not chunk:
                        break
                    view = memoryview(chunk)
                    while view:
                        written = os.pwrite(dst, view, pos)
                        view = view[written:]
                        pos += written
            os.ftruncate(dst, size)
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return tmp


def install(tmp: Path, target: Path) -> None:
    """Rename a copy made by :func:`write_copy` over its target, durably."""
    os.replace(tmp, target)
    fsync_dir(target.parent)


def copy_durably(source: Path, target: Path) -> None:
    """``target`` becomes a copy of ``source``, all at once (old or new, never half)."""
    install(write_copy(source, target), target)


class NativeCopies:
    """Where the native snapshots of one agent keep their copies of file disks."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.root = state_dir / NATIVE_DIR

    def snapshot_dir(self, vm_id: str, snapshot_id: str) -> Path:
        return self.root / vm_key(vm_id) / vm_key(snapshot_id)

    def copy_of(self, vm_id: str, snapshot_id: str, disk: str) -> Path:
        return self.snapshot_dir(vm_id, snapshot_id) / vm_key(disk)

    def remove_snapshot(self, vm_id: str, snapshot_id: str) -> None:
        remove_tree(self.snapshot_dir(vm_id, snapshot_id))

    def remove_vm(self, vm_id: str) -> None:
        remove_tree(self.root / vm_key(vm_id))

    def keep_only(self, wanted: dict[str, set[str]]) -> None:
        """Remove every copy not in ``wanted`` (VM key → snapshot keys): what a
        take, a delete or an undefine cut short by a crash left behind."""
        if not self.root.is_dir():
            return
        for vm_dir in self.root.iterdir():
            keep = wanted.get(vm_dir.name)
            if keep is None:
                remove_tree(vm_dir)
                continue
            for snap_dir in vm_dir.iterdir():
                if snap_dir.name not in keep:
                    remove_tree(snap_dir)


def remove_tree(path: Path) -> None:
    if not path.exists():
        return
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        fsync_dir(path.parent)
