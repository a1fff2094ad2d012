"""Persistent state of one emulated ONTAP cluster with one SVM.

* Volume bytes are **real files** in ``DATA/export/<svm>/<volume>/``: the directory an NFS
  export would serve, that a hypervisor reads and writes directly.
* A volume snapshot is a copy of that directory in ``DATA/ontap/snapshots/<vol>/<snap>/``,
  made with reflinks where the filesystem has them, else a sparse copy of data extents:
  **its cost grows with the data in the volume** (unlike a real WAFL snapshot); the bytes
  copied are counted in :attr:`OntapState.stats`.
* Volume restore (SnapRestore) copies the snapshot back *into* the volume directory (the
  directory itself stays, so a mount of it stays valid) and, like ONTAP, deletes the
  snapshots newer than the one restored.
* Metadata (volumes, snapshots, jobs, IDs) is one ``DATA/ontap/state.json`` replaced
  atomically after every change.

Callers hold :attr:`OntapState.lock`.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomicio import atomic_write_json, read_json, remove_stale_temps
from ..overwrites import Overwrites
from . import errors, fsops
from .errors import OntapError

MIN_VOLUME_SIZE = 20 << 20  # ONTAP's minimum FlexVol size
MAX_SNAPSHOTS_PER_VOLUME = 1023
_VOLUME_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,202}$")


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


@dataclass
class Volume:
    uuid: str
    name: str
    size: int
    comment: str
    create_time: str


@dataclass
class Snapshot:
    uuid: str
    volume_uuid: str
    name: str
    create_time: str
    seq: int  # creation order: SnapRestore drops the snapshots newer than its target
    size: int = 0
    comment: str | None = None
    snapmirror_label: str | None = None
    expiry_time: str | None = None


@dataclass
class Job:
    uuid: str
    description: str
    state: str = "queued"
    message: str = ""
    code: int = 0
    start_time: str | None = None
    end_time: str | None = None
    error: dict[str, Any] | None = None
    seq: int = 0


@dataclass
class Stats:
    snapshot_bytes_copied: int = 0
    restore_bytes_copied: int = 0
    clone_bytes_copied: int = 0
    snapshots_created: int = 0
    clones_created: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Ids:
    svm_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    cluster_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    seq: int = 1


class OntapState:
    MAX_JOBS_KEPT = 500

    def __init__(self, data_dir: Path, *, svm: str, cluster: str) -> None:
        self.lock = threading.RLock()
        self.svm = svm
        self.cluster = cluster
        self.meta_dir = data_dir / "ontap"
        self.export_root = data_dir / "export"
        self.export_dir = self.export_root / svm
        self.snap_dir = self.meta_dir / "snapshots"
        for d in (self.meta_dir, self.export_dir, self.snap_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.stats = Stats()
        self.overwrites = Overwrites(self.meta_dir)
        path = self.meta_dir / "state.json"
        remove_stale_temps(path)
        raw: dict[str, Any] = read_json(path) if path.exists() else {}
        self.ids = _Ids(**raw["ids"]) if "ids" in raw else _Ids()
        self.volumes = {k: Volume(**v) for k, v in raw.get("volumes", {}).items()}
        self.snapshots = {k: Snapshot(**v) for k, v in raw.get("snapshots", {}).items()}
        self.jobs = {k: Job(**v) for k, v in raw.get("jobs", {}).items()}
        for job in self.jobs.values():
            if job.state in ("queued", "running"):
                # Its effect was never committed (effect and job state commit together).
                self.finish_job(job, "failure", "Job interrupted by an emulator restart.", 1)
        self.commit()
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        """Drop what a crash mid-job left behind: partial copies, unreferenced snapshots."""
        for staging in self.export_dir.glob(".restore-*"):
            shutil.rmtree(staging, ignore_errors=True)
        known = {(s.volume_uuid, s.uuid) for s in self.snapshots.values()}
        for vol_dir in self.snap_dir.iterdir():
            for snap_dir in vol_dir.iterdir():
                if (vol_dir.name, snap_dir.name) not in known:
                    shutil.rmtree(snap_dir, ignore_errors=True)
            if vol_dir.name not in self.volumes:
                shutil.rmtree(vol_dir, ignore_errors=True)

    # -- persistence -------------------------------------------------------------------
    def commit(self) -> None:
        jobs = sorted(self.jobs.values(), key=lambda j: j.seq)[-self.MAX_JOBS_KEPT :]
        self.jobs = {j.uuid: j for j in jobs}
        atomic_write_json(
            self.meta_dir / "state.json",
            {
                "ids": asdict(self.ids),
                "volumes": {k: asdict(v) for k, v in self.volumes.items()},
                "snapshots": {k: asdict(v) for k, v in self.snapshots.items()},
                "jobs": {k: asdict(v) for k, v in self.jobs.items()},
            },
        )

    def next_seq(self) -> int:
        self.ids.seq += 1
        return self.ids.seq

    # -- lookups -----------------------------------------------------------------------
    def volume(self, volume_uuid: str) -> Volume:
        vol = self.volumes.get(volume_uuid)
        if vol is None:
            raise errors.not_found(f"volume {volume_uuid}", "uuid")
        return vol

    def volume_by_ref(self, ref: Any) -> Volume:
        """A volume named by ``{"uuid": ...}`` or ``{"name": ...}`` in a request body."""
        if not isinstance(ref, dict) or not (ref.get("uuid") or ref.get("name")):
            raise errors.missing("volume")
        if ref.get("uuid"):
            return self.volume(str(ref["uuid"]))
        for vol in self.volumes.values():
            if vol.name == ref["name"]:
                return vol
        raise errors.not_found(f'volume "{ref["name"]}"', "volume.name")

    def snapshot(self, volume_uuid: str, snapshot_uuid: str) -> Snapshot:
        snap = self.snapshots.get(snapshot_uuid)
        if snap is None or snap.volume_uuid != volume_uuid:
            raise errors.not_found(f"snapshot {snapshot_uuid}", "uuid")
        return snap

    def snapshot_by_ref(self, vol: Volume, name: str | None, snap_uuid: str | None) -> Snapshot:
        for snap in self.snapshots_of(vol.uuid):
            if (snap_uuid and snap.uuid == snap_uuid) or (name and snap.name == name):
                return snap
        raise errors.not_found(f'snapshot "{name or snap_uuid}"', "restore_to.snapshot")

    def snapshots_of(self, volume_uuid: str) -> list[Snapshot]:
        snaps = [s for s in self.snapshots.values() if s.volume_uuid == volume_uuid]
        return sorted(snaps, key=lambda s: s.seq)

    def volume_path(self, vol: Volume) -> Path:
        return self.export_dir / vol.name

    def snapshot_path(self, snap: Snapshot) -> Path:
        return self.snap_dir / snap.volume_uuid / snap.uuid

    # -- records (wire shape of netapp_ontap.resources) -------------------------------
    def svm_ref(self) -> dict[str, Any]:
        return {
            "name": self.svm,
            "uuid": self.ids.svm_uuid,
            "_links": {"self": {"href": f"/api/svm/svms/{self.ids.svm_uuid}"}},
        }

    def volume_record(self, vol: Volume) -> dict[str, Any]:
        used = fsops.tree_usage(self.volume_path(vol))
        return {
            "uuid": vol.uuid,
            "name": vol.name,
            "size": vol.size,
            "comment": vol.comment,
            "create_time": vol.create_time,
            "state": "online",
            "type": "rw",
            "style": "flexvol",
            "svm": self.svm_ref(),
            "nas": {
                "path": f"/{vol.name}",
                "security_style": "unix",
                "export_policy": {"name": "default"},
            },
            "space": {"size": vol.size, "used": used, "available": max(vol.size - used, 0)},
            "snapshot_count": len(self.snapshots_of(vol.uuid)),
            "_links": {"self": {"href": f"/api/storage/volumes/{vol.uuid}"}},
        }

    def snapshot_record(self, snap: Snapshot) -> dict[str, Any]:
        vol = self.volumes[snap.volume_uuid]
        rec: dict[str, Any] = {
            "uuid": snap.uuid,
            "name": snap.name,
            "create_time": snap.create_time,
            "state": "valid",
            "size": snap.size,
            "volume": {
                "uuid": vol.uuid,
                "name": vol.name,
                "_links": {"self": {"href": f"/api/storage/volumes/{vol.uuid}"}},
            },
            "svm": self.svm_ref(),
            "_links": {"self": {"href": f"/api/storage/volumes/{vol.uuid}/snapshots/{snap.uuid}"}},
        }
        for name in ("comment", "snapmirror_label", "expiry_time"):
            value = getattr(snap, name)
            if value is not None:
                rec[name] = value
        return rec

    def job_record(self, job: Job) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "uuid": job.uuid,
            "description": job.description,
            "state": job.state,
            "message": job.message,
            "code": job.code,
            "svm": self.svm_ref(),
            "_links": {"self": {"href": f"/api/cluster/jobs/{job.uuid}"}},
        }
        for name in ("start_time", "end_time", "error"):
            value = getattr(job, name)
            if value is not None:
                rec[name] = value
        return rec

    def finish_job(self, job: Job, state: str, message: str, code: int) -> None:
        job.state = state
        job.message = message
        job.code = code
        job.end_time = now_iso()
        if state == "failure":
            job.error = {"message": message, "code": str(code)}

    # -- validation (synchronous part of each call) ------------------------------------
    def check_new_volume(self, name: Any, size: Any) -> tuple[str, int]:
        if not isinstance(name, str) or not name:
            raise errors.missing("name")
        if not _VOLUME_NAME.match(name):
            raise errors.invalid(
                "name",
                f'Invalid volume name "{name}": use letters, digits '
                "and underscores, starting with a letter or underscore.",
            )
        if any(v.name == name for v in self.volumes.values()):
            raise OntapError(
                409,
                errors.DUPLICATE_VOLUME,
                f'Duplicate volume name "{name}" in SVM "{self.svm}".',
                "name",
            )
        return name, self.check_size(MIN_VOLUME_SIZE if size is None else size)

    @staticmethod
    def check_size(size: Any) -> int:
        if isinstance(size, bool) or not isinstance(size, int):
            raise errors.invalid("size", "size must be an integer number of bytes.")
        if size < MIN_VOLUME_SIZE:
            raise errors.invalid(
                "size",
                f"Volume size {size} is below the minimum of {MIN_VOLUME_SIZE} bytes (20MB).",
            )
        return size

    def check_new_snapshot(self, vol: Volume, name: Any) -> str:
        if not isinstance(name, str) or not name:
            raise errors.missing("name")
        if len(name) > 255 or "/" in name:
            raise errors.invalid("name", f'Invalid snapshot name "{name}".')
        snaps = self.snapshots_of(vol.uuid)
        if any(s.name == name for s in snaps):
            raise OntapError(
                409,
                errors.DUPLICATE_SNAPSHOT,
                f'Snapshot "{name}" already exists in volume "{vol.name}".',
                "name",
            )
        if len(snaps) >= MAX_SNAPSHOTS_PER_VOLUME:
            raise errors.invalid(
                "name",
                f'Volume "{vol.name}" has the maximum number of '
                f"snapshots ({MAX_SNAPSHOTS_PER_VOLUME}).",
            )
        return name

    # -- operations (run inside jobs) --------------------------------------------------
    def create_volume(self, vol: Volume) -> None:
        self.check_new_volume(vol.name, vol.size)  # again: a queued twin may have won
        path = self.volume_path(vol)
        path.mkdir(parents=True, exist_ok=True)
        self.volumes[vol.uuid] = vol

    def delete_volume(self, vol: Volume) -> None:
        for snap in self.snapshots_of(vol.uuid):
            del self.snapshots[snap.uuid]
        del self.volumes[vol.uuid]
        shutil.rmtree(self.volume_path(vol), ignore_errors=True)
        shutil.rmtree(self.snap_dir / vol.uuid, ignore_errors=True)

    def create_snapshot(self, snap: Snapshot) -> None:
        vol = self.volume(snap.volume_uuid)
        self.check_new_snapshot(vol, snap.name)
        dst = self.snapshot_path(snap)
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        copied = fsops.copy_tree(self.volume_path(vol), tmp)
        os.replace(tmp, dst)
        snap.size = fsops.tree_usage(dst)
        snap.seq = self.next_seq()
        self.snapshots[snap.uuid] = snap
        self.stats.snapshot_bytes_copied += copied
        self.stats.snapshots_created += 1

    def delete_snapshot(self, snap: Snapshot) -> None:
        del self.snapshots[snap.uuid]
        shutil.rmtree(self.snapshot_path(snap), ignore_errors=True)

    def restore_volume(self, vol: Volume, snap: Snapshot) -> None:
        self.overwrites.record("SnapRestore", svm=self.svm, volume=vol.name)
        target = self.volume_path(vol)
        staging = self.export_dir / f".restore-{vol.uuid}"
        shutil.rmtree(staging, ignore_errors=True)
        # Slow part first, into a staging dir; then swap entries in (renames only).
        self.stats.restore_bytes_copied += fsops.copy_tree(self.snapshot_path(snap), staging)
        fsops.clear_dir(target)
        for entry in os.scandir(staging):
            os.replace(entry.path, target / entry.name)
        staging.rmdir()
        for newer in [s for s in self.snapshots_of(vol.uuid) if s.seq > snap.seq]:
            self.delete_snapshot(newer)

    def clone_file(self, vol: Volume, source: str, destination: str, overwrite: bool) -> None:
        src, dst = self.check_clone(vol, source, destination, overwrite)
        if overwrite:
            self.overwrites.record("file clone", svm=self.svm, volume=vol.name, path=destination)
        self.stats.clone_bytes_copied += fsops.clone_file(src, dst)
        self.stats.clones_created += 1

    def check_clone(
        self, vol: Volume, source: str, destination: str, overwrite: bool
    ) -> tuple[Path, Path]:
        root = self.volume_path(vol)
        src = fsops.resolve_inside(root, source)
        dst = fsops.resolve_inside(root, destination)
        if not src.is_file():
            raise OntapError(
                404, errors.FILE_NOT_FOUND, f'Source file "{source}" does not exist.', "source_path"
            )
        if not dst.parent.is_dir():
            raise OntapError(
                404,
                errors.FILE_NOT_FOUND,
                f'Directory of "{destination}" does not exist.',
                "destination_path",
            )
        if dst.exists() and not overwrite:
            raise OntapError(
                409,
                errors.FILE_EXISTS,
                f'Destination file "{destination}" already exists.',
                "destination_path",
            )
        if dst.is_dir() or src == dst:
            raise errors.invalid("destination_path", f'Invalid destination "{destination}".')
        return src, dst
