"""What the driver has on the array: reading and writing the ``/.vmsnap`` layout.

Synchronous functions, run in a worker thread by ``OntapArray.call``: each is one
short sequence of REST calls through netapp-ontap's resources, with the thread's
connection already set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from netapp_ontap.error import NetAppRestError
from netapp_ontap.resources.file_clone import FileClone
from netapp_ontap.resources.file_info import FileInfo
from netapp_ontap.resources.svm import Svm
from netapp_ontap.resources.volume import Volume as OntapVolume

from vmsnap_driver_netapp._layout import (
    DONE_MARKER,
    QUIESCED_MARKER,
    ROOT,
    DiskFile,
    clone_name,
    parse_clone_name,
    parse_snapshot_dir,
    snapshot_dir,
)


@dataclass(frozen=True)
class FlexVol:
    """An ONTAP volume: where disk files and their clones live."""

    svm: str
    name: str
    uuid: str


@dataclass(frozen=True)
class Clone:
    """One disk's clone inside a VM snapshot's directory."""

    disk: str
    source: DiskFile
    #: Path of the clone, relative to the volume root: the volume snapshot's handle.
    path: str
    size: int


@dataclass
class Found:
    """A VM snapshot as the array holds it (possibly spread over several volumes)."""

    vm_snapshot_id: str
    vm_id: str
    #: Every (volume, directory) holding part of it: what a delete removes.
    directories: list[tuple[FlexVol, str]] = field(default_factory=list)
    clones: list[Clone] = field(default_factory=list)
    create_time: datetime | None = None
    #: The host had frozen the disks when they were cut (a marker file says so).
    quiesced: bool = False
    #: Directories holding the "done" marker: the take finished there.
    done_in: int = 0

    @property
    def complete(self) -> bool:
        """Whether the take that made it finished (in every volume)."""
        return bool(self.directories) and self.done_in == len(self.directories)


def status(exc: NetAppRestError) -> int | None:
    """The HTTP status of a REST error (None for transport errors)."""
    return exc.status_code


def list_svms() -> list[str]:
    return sorted(str(s.name) for s in Svm.get_collection(fields="name"))


def find_volume(svm: str, name: str) -> FlexVol | None:
    query: dict[str, Any] = {"svm.name": svm, "name": name, "fields": "uuid"}
    for vol in OntapVolume.get_collection(**query):
        return FlexVol(svm, name, str(vol.uuid))
    return None


def list_volumes(svms: Iterable[str]) -> list[FlexVol]:
    query: dict[str, Any] = {"svm.name": "|".join(svms), "fields": "name,uuid,svm.name"}
    return [
        FlexVol(str(v.svm.name), str(v.name), str(v.uuid))
        for v in OntapVolume.get_collection(**query)
    ]


def file_size(vol: FlexVol, path: str) -> int | None:
    """Size of a regular file; None when there is no such file."""
    info = FileInfo(vol.uuid, path=path)
    try:
        info.get(fields="type,size")
    except NetAppRestError as exc:
        if status(exc) == 404:
            return None
        raise
    return int(info.size) if info.type == "file" else None


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def scan(volumes: Iterable[FlexVol], vm_snapshot_id: str | None = None) -> dict[str, Found]:
    """Every VM snapshot in ``/.vmsnap`` of the volumes (only ``vm_snapshot_id``'s when given)."""
    found: dict[str, Found] = {}
    for vol in volumes:
        try:
            entries = list(
                FileInfo.get_collection(
                    vol.uuid, ROOT, type="directory", fields="name,creation_time"
                )
            )
        except NetAppRestError as exc:
            if status(exc) == 404:
                continue  # no /.vmsnap in this volume
            raise
        for entry in entries:
            ids = parse_snapshot_dir(str(entry.name))
            if ids is None or (vm_snapshot_id is not None and ids[0] != vm_snapshot_id):
                continue
            item = found.setdefault(ids[0], Found(ids[0], ids[1]))
            directory = f"{ROOT}/{entry.name}"
            item.directories.append((vol, directory))
            created = _parse_time(getattr(entry, "creation_time", None))
            if created is not None and (item.create_time is None or created < item.create_time):
                item.create_time = created
            for f in FileInfo.get_collection(vol.uuid, directory, type="file", fields="name,size"):
                if f.name == QUIESCED_MARKER:
                    item.quiesced = True
                    continue
                if f.name == DONE_MARKER:
                    item.done_in += 1
                    continue
                parsed = parse_clone_name(str(f.name))
                if parsed is None:
                    continue
                disk, path = parsed
                item.clones.append(
                    Clone(
                        disk=disk,
                        source=DiskFile(vol.svm, vol.name, path),
                        path=f"{directory}/{f.name}",
                        size=int(getattr(f, "size", 0) or 0),
                    )
                )
    return found


def ensure_directory(vol: FlexVol, path: str) -> None:
    """Create a directory; one that exists already is fine."""
    try:
        FileInfo(vol.uuid, path=path, type="directory", unix_permissions=700).post()
    except NetAppRestError as exc:
        if status(exc) != 409:
            raise


def clone_into_snapshot(
    vol: FlexVol, vm_snapshot_id: str, vm_id: str, disk: str, source: DiskFile
) -> str:
    """File-clone a disk into the VM snapshot's directory; returns the clone's path.

    An existing clone is kept, never overwritten: a retried take must not cut
    the disk again at a later instant than its siblings.
    """
    directory = snapshot_dir(vm_snapshot_id, vm_id)
    ensure_directory(vol, ROOT)
    ensure_directory(vol, directory)
    destination = f"{directory}/{clone_name(disk, source.path)}"
    try:
        FileClone(
            volume={"uuid": vol.uuid, "name": vol.name},
            source_path=source.path,
            destination_path=destination,
            overwrite_destination=False,
        ).post(poll=True)
    except NetAppRestError as exc:
        if status(exc) != 409:  # 409: the clone exists, from an earlier attempt
            raise
    return destination


def mark(vol: FlexVol, vm_snapshot_id: str, vm_id: str, marker: str) -> None:
    """Leave a marker file (``done``, ``quiesced``) in the snapshot's directory."""
    path = f"{snapshot_dir(vm_snapshot_id, vm_id)}/{marker}"
    try:
        FileInfo(vol.uuid, path=path, type="file", unix_permissions=600).post()
    except NetAppRestError as exc:
        if status(exc) != 409:
            raise


def clone_back(vol: FlexVol, clone_path: str, destination: str) -> None:
    """Revert one disk: clone the snapshot's file over the disk file."""
    FileClone(
        volume={"uuid": vol.uuid, "name": vol.name},
        source_path=clone_path,
        destination_path=destination,
        overwrite_destination=True,
    ).post(poll=True)


def remove_directory(vol: FlexVol, path: str) -> None:
    """Delete a VM snapshot's directory with its clones; a missing one is fine."""
    try:
        FileInfo(vol.uuid, path=path).delete(recurse=True)
    except NetAppRestError as exc:
        if status(exc) != 404:
            raise
