"""Copies of a native snapshot's disks: the disks of a new VM made from a snapshot.

The QEMU agent's native snapshots are qcow2 *internal* snapshots (``native.py``),
so a disk's bytes at a snapshot are the image's snapshot of that tag; a copy is
``qemu-img convert -l snapshot.name=TAG`` into a new, independent qcow2 image (no
backing file: the new VM and the source never share a cluster, and deleting the
snapshot later cannot touch the copy). Layout::

    state_dir/copies/<copy_id>/copy.json     vm, snapshot and [disk, name] pairs
                               <name>.qcow2  one image per copied disk
                               .<name>.qcow2.tmp  while it is being written

Idempotent on ``copy_id``: ``copy.json`` is written (durably) before any image and
names what the id was used for; a retry with the same request returns the same
images and keeps those already complete (the new VM may be writing them), the
same id for another snapshot or other disks is :class:`CopyConflict`. Each image
is written under a temporary name, fsynced, then renamed, so a crash leaves
either a whole copy or a temporary file the retry overwrites. A delete renames
the directory away first (one atomic step: a half-deleted copy is never found
again by its id), then removes it.

Reading a running VM's image: ``-U`` (force share) because QEMU holds the image's
write lock. That is safe for a snapshot's bytes: QEMU writes the snapshot table
and flushes before ``blockdev-snapshot-internal-sync`` or ``snapshot-save``
answer, and every cluster the snapshot references has a refcount that keeps
QEMU from writing it in place (a guest write copies it first). The snapshot
itself must not be deleted meanwhile: ``QemuHypervisor`` refuses that while a
copy runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from .errors import CopyConflict, NoSpace, QmpCommandError
from .statefile import read_json, write_json_atomic

MANIFEST = "copy.json"
_TRASH_PREFIX = ".deleted-"


@dataclass(frozen=True)
class CopySource:
    """One disk to copy: its image, the snapshot's qcow2 tag in it, the new disk's name."""

    disk: str
    name: str
    image: str
    tag: str


@dataclass(frozen=True)
class CopiedDisk:
    disk: str
    path: Path
    size_bytes: int


async def _qemu_img(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "qemu-img", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip()
        if "No space left on device" in message:
            raise NoSpace(f"no space left for a disk copy: qemu-img {args[0]}: {message}")
        raise QmpCommandError(f"qemu-img {' '.join(args)}: {message}")
    return out.decode()


async def _virtual_size(image: Path) -> int:
    info = json.loads(await _qemu_img("info", "-f", "qcow2", "--output=json", str(image)))
    return int(info["virtual-size"])


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    """The written image made durable, then visible under its final name."""
    _fsync_path(tmp)
    os.replace(tmp, final)
    _fsync_path(final.parent)


class DiskCopies:
    """The copies under ``root`` (``state_dir/copies``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Two calls with one copy id (a retry racing the first) run one at a time.
        self._locks: dict[str, asyncio.Lock] = {}

    def _dir(self, copy_id: str) -> Path:
        # copy_id follows the contract's id rule (validated by the SDK): a plain
        # file name, never a path.
        return self.root / copy_id

    async def copy(
        self, copy_id: str, vm_id: str, snapshot_id: str, sources: list[CopySource]
    ) -> list[CopiedDisk]:
        async with self._locks.setdefault(copy_id, asyncio.Lock()):
            where = self._dir(copy_id)
            wanted = {
                "vm_id": vm_id,
                "snapshot_id": snapshot_id,
                "disks": [[s.disk, s.name] for s in sources],
            }
            manifest = await asyncio.to_thread(read_json, where / MANIFEST)
            if manifest is None:
                await asyncio.to_thread(write_json_atomic, where / MANIFEST, wanted)
            elif manifest != wanted:
                raise CopyConflict(
                    f"copy id {copy_id} was used for disks {manifest.get('disks')} of native "
                    f"snapshot {manifest.get('snapshot_id')} of VM {manifest.get('vm_id')}; "
                    "use a new copy id for another copy"
                )
            return [await self._copy_one(where, s) for s in sources]

    async def finished(
        self, copy_id: str, vm_id: str, snapshot_id: str, targets: list[tuple[str, str]]
    ) -> list[CopiedDisk] | None:
        """The copies of an earlier identical request, when all are complete (a retry
        whose snapshot has been deleted since still gets its answer); else None."""
        async with self._locks.setdefault(copy_id, asyncio.Lock()):
            where = self._dir(copy_id)
            manifest = await asyncio.to_thread(read_json, where / MANIFEST)
            wanted = {
                "vm_id": vm_id,
                "snapshot_id": snapshot_id,
                "disks": [[disk, name] for disk, name in targets],
            }
            if manifest != wanted:
                return None
            finals = [(disk, where / f"{name}.qcow2") for disk, name in targets]
            if not all(await asyncio.to_thread(lambda: [p.exists() for _, p in finals])):
                return None
            return [CopiedDisk(disk, path, await _virtual_size(path)) for disk, path in finals]

    async def _copy_one(self, where: Path, source: CopySource) -> CopiedDisk:
        final = where / f"{source.name}.qcow2"
        if not await asyncio.to_thread(final.exists):
            tmp = where / f".{final.name}.tmp"
            # QemuOpts reads "," as a separator; ",," is a literal comma.
            tag = source.tag.replace(",", ",,")
            try:
                await _qemu_img(
                    "convert", "-U", "-f", "qcow2", "-O", "qcow2",
                    "-l", f"snapshot.name={tag}", source.image, str(tmp),
                )  # fmt: skip
                await asyncio.to_thread(_publish, tmp, final)
            except BaseException:
                await asyncio.to_thread(tmp.unlink, missing_ok=True)
                raise
        return CopiedDisk(source.disk, final, await _virtual_size(final))

    async def delete(self, copy_id: str) -> None:
        """Remove the copies of ``copy_id``; an unknown id is OK."""
        async with self._locks.setdefault(copy_id, asyncio.Lock()):
            where = self._dir(copy_id)
            if await asyncio.to_thread(where.exists):
                trash = self.root / f"{_TRASH_PREFIX}{copy_id}-{uuid.uuid4().hex[:8]}"
                await asyncio.to_thread(os.replace, where, trash)
                await asyncio.to_thread(_fsync_path, self.root)
            # This delete's directory, and any a crash left half removed.
            leftovers = await asyncio.to_thread(lambda: list(self.root.glob(f"{_TRASH_PREFIX}*")))
            for leftover in leftovers:
                await asyncio.to_thread(shutil.rmtree, leftover, True)
