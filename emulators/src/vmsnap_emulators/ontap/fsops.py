"""File copies as cheap as the local filesystem allows, and safe path handling.

ONTAP file clones and snapshots share blocks. Here a copy first tries a reflink (FICLONE:
instant and block-sharing on btrfs, XFS, bcachefs...), else copies only the data extents
(SEEK_DATA/SEEK_HOLE + ``copy_file_range``) so sparse VM images stay sparse. The number of
bytes really copied is reported so tests and benchmarks can see the cost.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path, PurePosixPath

from ..atomicio import fsync
from . import errors
from .errors import OntapError

FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h


def resolve_inside(root: Path, rel: str) -> Path:
    """``root/rel`` with ``rel`` a relative POSIX path that must stay inside ``root``."""
    rel = rel.strip()
    parts = PurePosixPath(rel.lstrip("/")).parts
    if any(p in ("..",) for p in parts) or "\0" in rel:
        raise errors.invalid("path", f'Invalid path "{rel}".')
    path = root.joinpath(*[p for p in parts if p not in ("", ".")])
    # The export is writable by hypervisors: a symlink must not lead the API outside it.
    if path != root:
        real_root = root.resolve()
        if not path.parent.resolve().is_relative_to(real_root) or (
            path.is_symlink() and not path.resolve().is_relative_to(real_root)
        ):
            raise errors.invalid("path", f'Path "{rel}" leaves the volume.')
    return path


def _reflink(src_fd: int, dst_fd: int) -> bool:
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno in (
            errno.EOPNOTSUPP,
            errno.EXDEV,
            errno.EINVAL,
            errno.ENOTTY,
            errno.EPERM,
            errno.ENOSYS,
        ):
            return False
        raise
    return True


def _copy_extents(src_fd: int, dst_fd: int, size: int) -> int:
    """Copy the data extents only; holes stay holes. Returns bytes copied."""
    copied = 0
    pos = 0
    while pos < size:
        try:
            data = os.lseek(src_fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                break
            raise
        hole = os.lseek(src_fd, data, os.SEEK_HOLE)
        offset = data
        while offset < hole:
            try:
                n = os.copy_file_range(src_fd, dst_fd, hole - offset, offset, offset)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                os.lseek(src_fd, offset, os.SEEK_SET)
                os.lseek(dst_fd, offset, os.SEEK_SET)
                chunk = os.read(src_fd, min(hole - offset, 1 << 20))
                n = os.write(dst_fd, chunk)
            if n == 0:
                break
            offset += n
            copied += n
        pos = hole
    return copied


def clone_file(src: Path, dst: Path) -> int:
    """Copy ``src`` to ``dst`` (replaced atomically); returns bytes physically copied."""
    tmp = dst.with_name(f".{dst.name}.clone-tmp")
    st = src.stat()
    with src.open("rb") as s, tmp.open("wb") as d:
        if _reflink(s.fileno(), d.fileno()):
            copied = 0
        else:
            os.ftruncate(d.fileno(), st.st_size)
            copied = _copy_extents(s.fileno(), d.fileno(), st.st_size)
        d.flush()
        fsync(d.fileno())
    os.chmod(tmp, st.st_mode & 0o7777)
    os.replace(tmp, dst)
    return copied


def copy_tree(src: Path, dst: Path) -> int:
    """Copy a directory tree with :func:`clone_file`; returns bytes physically copied."""
    copied = 0
    dst.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(src):
        target = dst / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir():
            copied += copy_tree(Path(entry.path), target)
        elif entry.is_file():
            copied += clone_file(Path(entry.path), target)
    return copied


def clear_dir(path: Path) -> None:
    """Remove everything inside ``path`` but keep ``path`` itself (its inode may be in use)."""
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def tree_usage(path: Path) -> int:
    """Bytes allocated under ``path`` (like ``du``)."""
    total = 0
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            total += tree_usage(Path(entry.path))
        else:
            total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total


def require_exists(path: Path, what: str) -> None:
    if not path.exists():
        raise OntapError(404, errors.FILE_NOT_FOUND, f'{what} "{path.name}" does not exist.')
