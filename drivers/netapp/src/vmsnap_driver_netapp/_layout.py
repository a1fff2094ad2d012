"""Locators (``ontap://<svm>/<volume>/<path>``) and where the driver keeps clones.

A disk is a file in an ONTAP volume (FlexVol). Its snapshot is a **file clone**
in the same volume (a clone cannot cross volumes), in a directory that names the
VM snapshot and the VM, under a hidden directory at the volume's root::

    /.vmsnap/<vm_snapshot_id>@<vm_id>/<disk>=<path, base64url without padding>

e.g. ``/.vmsnap/s-42@vm-7/vda=aW1hZ2VzL3ZtLTcvcm9vdC5pbWc``. The directory name is
the tag: ids are ``[A-Za-z0-9._-]``, so ``@`` separates them without ambiguity,
and one listing of ``/.vmsnap`` per volume finds every VM snapshot there. The
clone's own name carries the disk and the original path, so revert (clone back
over the original) and ListVMSnapshots need nothing but the array. A VM whose
disks sit in several volumes has one such directory in each. (base64url keeps
file names to ``[A-Za-z0-9_-]``: nothing to escape in the REST API's URLs; a
file name holds 255 bytes, so an original path may have up to 180.)
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

SCHEME = "ontap"
ROOT = ".vmsnap"
MAX_PATH_BYTES = 180
#: An empty file in a snapshot's directory: the host had quiesced the VM, so the
#: clones of several disks are consistent with each other.
QUIESCED_MARKER = "quiesced"
#: An empty file in a snapshot's directory: every clone of the take is there. A
#: directory without it is what an interrupted take left: a retry completes it.
DONE_MARKER = "done"


@dataclass(frozen=True)
class DiskFile:
    """A parsed locator: a file in a volume of an SVM."""

    svm: str
    volume: str
    path: str

    @property
    def locator(self) -> str:
        return f"{SCHEME}://{self.svm}/{self.volume}/{self.path}"


def parse_locator(value: str) -> DiskFile | None:
    """The SVM, volume and path of an ``ontap://`` locator; None when it is not one."""
    prefix = f"{SCHEME}://"
    if not value.startswith(prefix):
        return None
    parts = value[len(prefix) :].split("/")
    if len(parts) < 3 or not parts[0] or not parts[1]:
        return None
    path_parts = parts[2:]
    if any(p in ("", ".", "..") for p in path_parts) or path_parts[0] == ROOT:
        return None
    return DiskFile(parts[0], parts[1], "/".join(path_parts))


def snapshot_dir(vm_snapshot_id: str, vm_id: str) -> str:
    """The clone directory of a VM snapshot, relative to the volume root."""
    return f"{ROOT}/{vm_snapshot_id}@{vm_id}"


def parse_snapshot_dir(name: str) -> tuple[str, str] | None:
    """(vm_snapshot_id, vm_id) of a directory name under ``/.vmsnap``."""
    snapshot_id, sep, vm_id = name.partition("@")
    if not sep or not snapshot_id or not vm_id:
        return None
    return snapshot_id, vm_id


def clone_name(disk: str, path: str) -> str:
    """The clone's file name: the disk, then the original path."""
    encoded = base64.urlsafe_b64encode(path.encode()).decode().rstrip("=")
    return f"{disk}={encoded}"


def parse_clone_name(name: str) -> tuple[str, str] | None:
    """(disk, original path) of a clone's file name."""
    disk, sep, encoded = name.partition("=")
    if not sep or not disk or not encoded:
        return None
    try:
        path = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return disk, path
