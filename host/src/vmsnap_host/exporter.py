"""Export a VM snapshot's array disks as qcow2 images: full, or incremental on an older one.

Client-side orchestration over the host's two read-only streams (the client never
talks to a driver): ``GetSnapshotDiskBlocks`` says which ranges to copy (the
allocated ones for a full image, the changed ones with ``since``) and
``ReadSnapshotDisk`` streams their bytes. Each disk becomes
``<DIR>/<snapshot>.<disk>.qcow2``:

* full: a qcow2 of the disk's size holding the allocated ranges (the rest reads
  as zeros, as on the array);
* incremental (``since``): a qcow2 whose backing file is the older snapshot's
  export of the same disk in the same DIR (relative name, so the directory can
  move), holding only the changed ranges. ``qemu-img convert`` of the last
  incremental gives the disk at that snapshot, byte for byte.

The bytes go into the image with ``qemu-io write -s FILE`` (a staging file of
one range at a time, at most :data:`PIECE` bytes): qemu's own qcow2 code
allocates the clusters, so the image is what ``qemu-img check`` expects.

``<DIR>/<snapshot>.manifest.json`` records each disk's file, kind, backing file,
size and sha256; an incremental refuses a backing file whose sha256 differs from
its own manifest (a chain is only as good as its base).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from vmsnap_host.client import GroupKind, HostClient, VMSnapshot, VMSnapshotState
from vmsnap_sdk.blocks import BlockRange

#: Bytes read from the host and written into the image in one step.
PIECE = 8 << 20
#: One qemu-io process writes at most this many pieces / staged bytes (argv and
#: the staging directory stay small, and there are few processes).
BATCH = 256
BATCH_BYTES = 64 << 20
MANIFEST_VERSION = 1

Progress = Callable[[str, int, int], None]


class ExportError(Exception):
    """An export that cannot go on; the message says what to fix."""


@dataclass(frozen=True)
class DiskExport:
    disk: str
    file: str
    kind: str  # "full" or "incremental"
    backing: str
    virtual_size: int
    block_size: int
    data_bytes: int
    ranges: int
    file_bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    version: int
    vm_snapshot_id: str
    vm_id: str
    since: str
    disks: tuple[DiskExport, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def manifest_path(directory: Path, snapshot_id: str) -> Path:
    return directory / f"{snapshot_id}.manifest.json"


def image_name(snapshot_id: str, disk: str) -> str:
    return f"{snapshot_id}.{disk}.qcow2"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict[str, object]:
    try:
        data: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(
            f"{path.name} is missing: export the older snapshot into {path.parent} first "
            "(an incremental's backing file is that export)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path} cannot be read as a manifest: {exc}") from None
    return data


def _qemu(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise ExportError(f"{tool} is not installed (package qemu-utils); it writes the images")
    return found


def _run(argv: Sequence[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ExportError(f"{Path(argv[0]).name} failed: {result.stderr.strip()[:500]}")


def _pieces(ranges: Sequence[BlockRange]) -> list[BlockRange]:
    out: list[BlockRange] = []
    for r in ranges:
        at = r.offset
        while at < r.end:
            n = min(PIECE, r.end - at)
            out.append(BlockRange(at, n))
            at += n
    return out


def _backing(directory: Path, since: str, disk: str) -> str:
    """The older export's image of ``disk``, checked against its manifest."""
    manifest = read_manifest(manifest_path(directory, since))
    disks = manifest.get("disks")
    entry = (
        next(
            (d for d in disks if isinstance(d, dict) and d.get("disk") == disk),
            None,
        )
        if isinstance(disks, list)
        else None
    )
    if entry is None:
        raise ExportError(f"the export of {since} in {directory} has no disk {disk}")
    name = str(entry.get("file", ""))
    path = directory / name
    if not path.is_file():
        raise ExportError(f"{name} (the export of {since}, disk {disk}) is missing in {directory}")
    if sha256_file(path) != entry.get("sha256"):
        raise ExportError(
            f"{name} does not match the sha256 in its manifest: the base of the chain "
            "changed since it was exported; export the chain again"
        )
    return name


class Exporter:
    def __init__(self, host: HostClient, *, progress: Progress | None = None) -> None:
        self.host = host
        self.progress = progress

    async def export(
        self,
        snapshot_id: str,
        directory: Path,
        *,
        since: str = "",
        disks: Sequence[str] = (),
    ) -> Manifest:
        qemu_img, qemu_io = _qemu("qemu-img"), _qemu("qemu-io")
        snap = await self.host.get_vm_snapshot(snapshot_id)
        chosen = _disks(snap, disks)
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        if since:
            await self.host.get_vm_snapshot(since)  # NOT_FOUND names it before any work
        out: list[DiskExport] = []
        for disk in chosen:
            out.append(await self._disk(snap, disk, directory, since, qemu_img, qemu_io))
        manifest = Manifest(MANIFEST_VERSION, snap.id, snap.vm_id, since, tuple(out))
        await asyncio.to_thread(_write_manifest, manifest_path(directory, snap.id), manifest)
        return manifest

    async def _disk(
        self, snap: VMSnapshot, disk: str, directory: Path, since: str, qemu_img: str, qemu_io: str
    ) -> DiskExport:
        # File work (hashing, qemu-img, qemu-io) runs in a thread: the loop keeps the
        # host's streams flowing.
        backing = await asyncio.to_thread(_backing, directory, since, disk) if since else ""
        listed = await self.host.disk_ranges(snap.id, disk, since=since)
        name = image_name(snap.id, disk)
        final = directory / name
        partial = directory / f".{name}.partial"
        create = [qemu_img, "create", "-q", "-f", "qcow2"]
        if backing:
            # Relative to the image's own directory: the chain moves with DIR.
            create += ["-b", backing, "-F", "qcow2"]
        await asyncio.to_thread(_run, [*create, str(partial), str(listed.capacity_bytes)])
        total = listed.total_bytes
        done = 0
        self._report(disk, done, total)
        # Staged next to the image (same filesystem, same space the image needs).
        with tempfile.TemporaryDirectory(prefix=".staging-", dir=directory) as staging:
            commands: list[str] = []
            staged = 0
            pieces = _pieces(listed.ranges)
            for i, piece in enumerate(pieces):
                data = await self.host.read_snapshot_disk(snap.id, disk, piece.offset, piece.length)
                source = Path(staging) / f"{len(commands) // 2}.bin"
                await asyncio.to_thread(source.write_bytes, data)
                staged += len(data)
                commands += ["-c", f"write -q -s {source} {piece.offset} {piece.length}"]
                if len(commands) // 2 == BATCH or staged >= BATCH_BYTES or i == len(pieces) - 1:
                    await asyncio.to_thread(_run, [qemu_io, "-f", "qcow2", str(partial), *commands])
                    commands, staged = [], 0
                done += piece.length
                self._report(disk, done, total)
        await asyncio.to_thread(os.replace, partial, final)
        digest = await asyncio.to_thread(sha256_file, final)
        return DiskExport(
            disk=disk,
            file=name,
            kind="incremental" if since else "full",
            backing=backing,
            virtual_size=listed.capacity_bytes,
            block_size=listed.block_size,
            data_bytes=total,
            ranges=len(listed.ranges),
            file_bytes=final.stat().st_size,
            sha256=digest,
        )

    def _report(self, disk: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(disk, done, total)


def _write_manifest(target: Path, manifest: Manifest) -> None:
    tmp = target.with_suffix(".tmp")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(tmp, target)


def _disks(snap: VMSnapshot, wanted: Sequence[str]) -> list[str]:
    if snap.state is not VMSnapshotState.READY:
        raise ExportError(f"snapshot {snap.id} is {snap.state.name}; only READY snapshots export")
    on_arrays = [d for g in snap.groups if g.kind is GroupKind.DRIVER for d in g.disks]
    native = [d for g in snap.groups if g.kind is not GroupKind.DRIVER for d in g.disks]
    if wanted:
        unknown = [d for d in wanted if d not in on_arrays]
        if unknown:
            raise ExportError(
                f"disk(s) {', '.join(unknown)} of {snap.id} are not array disks "
                f"(array disks: {', '.join(on_arrays) or 'none'})"
            )
        return list(dict.fromkeys(wanted))
    if native:
        raise ExportError(
            f"disk(s) {', '.join(native)} of {snap.id} are hypervisor-native snapshots, "
            "which export does not read; pick the array disks with --disk"
        )
    return on_arrays
