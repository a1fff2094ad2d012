"""Clones of a VM snapshot: new disk files file-cloned from the snapshot's clones.

A new volume is a file clone (POST /api/storage/file/clone) of the snapshot's
clone of that disk, in the same ONTAP volume (a file clone cannot cross
volumes), under a visible directory named by the clone id::

    /vmsnap-clones/<clone_id>/<disk>=<target name>

with two marker files naming where it came from, ``snapshot=<vm_snapshot_id>``
and ``vm=<new VM id>``, and ``done`` once every file is there. The directory
is the tag: a retry of the same clone_id finds the files made (an interrupted
call is completed, nothing is made twice) and DeleteClonedVolumes removes the
directory by the id alone. A file clone shares blocks and diverges on write:
the new file is independent of the snapshot and of the source disk.

Synchronous functions, run in a worker thread by ``OntapArray.call``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netapp_ontap.error import NetAppRestError
from netapp_ontap.resources.file_clone import FileClone
from netapp_ontap.resources.file_info import FileInfo

from vmsnap_driver_netapp._catalog import FlexVol, ensure_directory, status
from vmsnap_driver_netapp._layout import DONE_MARKER

CLONES_ROOT = "vmsnap-clones"
SNAPSHOT_MARKER = "snapshot="
VM_MARKER = "vm="


def clone_dir(clone_id: str) -> str:
    return f"{CLONES_ROOT}/{clone_id}"


def file_name(disk: str, name: str) -> str:
    return f"{disk}={name}"


@dataclass
class FoundClone:
    """What one ONTAP volume holds of a clone."""

    vm_snapshot_id: str = ""
    vm_id: str = ""
    done: bool = False
    #: disk → (target name, path relative to the volume root, size).
    files: dict[str, tuple[str, str, int]] = field(default_factory=dict)


def scan(vol: FlexVol, clone_id: str) -> FoundClone | None:
    """The clone's directory in one volume; None when there is none."""
    directory = clone_dir(clone_id)
    try:
        entries = list(
            FileInfo.get_collection(vol.uuid, directory, type="file", fields="name,size")
        )
    except NetAppRestError as exc:
        if status(exc) == 404:
            return None
        raise
    found = FoundClone()
    for entry in entries:
        name = str(entry.name)
        if name == DONE_MARKER:
            found.done = True
        elif name.startswith(SNAPSHOT_MARKER):
            found.vm_snapshot_id = name[len(SNAPSHOT_MARKER) :]
        elif name.startswith(VM_MARKER):
            found.vm_id = name[len(VM_MARKER) :]
        else:
            disk, sep, target = name.partition("=")
            if sep and disk and target:
                size = int(getattr(entry, "size", 0) or 0)
                found.files[disk] = (target, f"{directory}/{name}", size)
    return found


def _touch(vol: FlexVol, path: str) -> None:
    try:
        FileInfo(vol.uuid, path=path, type="file", unix_permissions=600).post()
    except NetAppRestError as exc:
        if status(exc) != 409:
            raise


def start(vol: FlexVol, clone_id: str, vm_snapshot_id: str, vm_id: str) -> None:
    """The clone's directory with its markers of origin (kept when they exist)."""
    directory = clone_dir(clone_id)
    ensure_directory(vol, CLONES_ROOT)
    ensure_directory(vol, directory)
    _touch(vol, f"{directory}/{SNAPSHOT_MARKER}{vm_snapshot_id}")
    _touch(vol, f"{directory}/{VM_MARKER}{vm_id}")


def clone_one(vol: FlexVol, clone_id: str, disk: str, name: str, source_path: str) -> str:
    """File-clone the snapshot's file of ``disk``; an existing clone is kept, never
    overwritten (the new VM may have written to it already)."""
    destination = f"{clone_dir(clone_id)}/{file_name(disk, name)}"
    try:
        FileClone(
            volume={"uuid": vol.uuid, "name": vol.name},
            source_path=source_path,
            destination_path=destination,
            overwrite_destination=False,
        ).post(poll=True)
    except NetAppRestError as exc:
        if status(exc) != 409:
            raise
    return destination


def finish(vol: FlexVol, clone_id: str) -> None:
    _touch(vol, f"{clone_dir(clone_id)}/{DONE_MARKER}")


def remove(vol: FlexVol, clone_id: str) -> bool:
    """Delete the clone's directory in one volume; False when there was none."""
    try:
        FileInfo(vol.uuid, path=clone_dir(clone_id)).delete(recurse=True)
    except NetAppRestError as exc:
        if status(exc) == 404:
            return False
        raise
    return True
