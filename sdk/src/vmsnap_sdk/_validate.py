"""Bounds and formats of request fields, checked before a driver or agent sees them.

Every failure is an InvalidArgument that names the field (``volumes[2].disk``)
and says what would be accepted, so a caller knows what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from vmsnap_sdk._errors import InvalidArgument
from vmsnap_sdk._types import CloneTarget, SnapshotResult, Volume

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DISK_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DRIVER_NAME_PATTERN = re.compile(
    r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$"
)

#: What require_text refuses: the C0 control characters (below U+0020).
_CONTROL = re.compile(r"[\x00-\x1f]")

MAX_VOLUMES = 256
MAX_LOCATOR = 1024
MAX_NAME = 255
MAX_MAP_ENTRIES = 64
MAX_MAP_KEY = 256
MAX_MAP_VALUE = 4096
MAX_PAGE_SIZE = 1000
MAX_TOKEN = 1024
MAX_IO_BYTES = 4 * 1024 * 1024
#: A clone's new volume name: what every reference array accepts as a volume or
#: file name (Element: letters, digits and dashes, at most 64).
CLONE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")


def require_id(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument.for_field(field, "is required")
    if not ID_PATTERN.match(value):
        raise InvalidArgument.for_field(
            field, "must be 1..128 chars of [A-Za-z0-9._-], starting with a letter or digit"
        )
    return value


def require_text(field: str, value: str, max_len: int = MAX_NAME, required: bool = True) -> str:
    if required and not value:
        raise InvalidArgument.for_field(field, "is required")
    if len(value) > max_len:
        raise InvalidArgument.for_field(field, f"is {len(value)} chars; at most {max_len}")
    if _CONTROL.search(value):
        raise InvalidArgument.for_field(field, "must not contain control characters")
    return value


def require_locator(field: str, value: str) -> str:
    require_text(field, value, MAX_LOCATOR)
    scheme, sep, rest = value.partition("://")
    if not sep or not scheme or not rest:
        raise InvalidArgument.for_field(field, "must be a URI such as element://cluster/42")
    return value


def require_volumes(field: str, volumes: Sequence[Volume]) -> None:
    if not volumes:
        raise InvalidArgument.for_field(field, "at least one volume is required")
    if len(volumes) > MAX_VOLUMES:
        raise InvalidArgument.for_field(field, f"has {len(volumes)} volumes; at most {MAX_VOLUMES}")
    seen: set[str] = set()
    for i, volume in enumerate(volumes):
        if not DISK_PATTERN.match(volume.disk):
            raise InvalidArgument.for_field(
                f"{field}[{i}].disk", "must be 1..63 chars of [a-z0-9_-], e.g. vda"
            )
        if volume.disk in seen:
            raise InvalidArgument.for_field(f"{field}[{i}].disk", f"{volume.disk!r} appears twice")
        seen.add(volume.disk)
        require_locator(f"{field}[{i}].locator", volume.locator)
        if volume.size_bytes < 0:
            raise InvalidArgument.for_field(f"{field}[{i}].size_bytes", "must not be negative")


def require_map(field: str, values: Mapping[str, str]) -> None:
    if len(values) > MAX_MAP_ENTRIES:
        raise InvalidArgument.for_field(
            field, f"has {len(values)} entries; at most {MAX_MAP_ENTRIES}"
        )
    for key, value in values.items():
        if not key or len(key) > MAX_MAP_KEY:
            raise InvalidArgument.for_field(
                f"{field}[{key[:32]!r}]", f"key must be 1..{MAX_MAP_KEY} chars"
            )
        if len(value) > MAX_MAP_VALUE:
            raise InvalidArgument.for_field(
                f"{field}[{key!r}]", f"value is over {MAX_MAP_VALUE} chars"
            )


def page_size(field: str, value: int, default: int = 100) -> int:
    if value < 0 or value > MAX_PAGE_SIZE:
        raise InvalidArgument.for_field(field, f"must be 0..{MAX_PAGE_SIZE} (0 = {default})")
    return value or default


def require_token(field: str, value: str) -> str:
    if len(value) > MAX_TOKEN:
        raise InvalidArgument.for_field(field, f"is over {MAX_TOKEN} chars")
    return value


def require_range(field: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidArgument.for_field(field, f"must be between {low} and {high}; got {value}")
    return value


def require_disk_copies(field: str, disks: Sequence[CloneTarget]) -> None:
    """1..256 disks, each once, each with a valid new name (CopyNativeDisks)."""
    if not disks:
        raise InvalidArgument.for_field(field, "at least one disk is required")
    if len(disks) > MAX_VOLUMES:
        raise InvalidArgument.for_field(field, f"has {len(disks)} disks; at most {MAX_VOLUMES}")
    seen: set[str] = set()
    for i, d in enumerate(disks):
        if not DISK_PATTERN.match(d.disk) or d.disk in seen:
            raise InvalidArgument.for_field(
                f"{field}[{i}].disk", "must be a disk name ([a-z0-9_-], 1..63), each once"
            )
        seen.add(d.disk)
        if not CLONE_NAME_PATTERN.match(d.name):
            raise InvalidArgument.for_field(
                f"{field}[{i}].name",
                "must be 1..63 chars of [A-Za-z0-9-], starting with a letter or digit",
            )


def require_clone_targets(
    field: str, targets: Sequence[CloneTarget], snapshot: SnapshotResult
) -> None:
    """1..256 targets, each a disk of the snapshot once, each with a valid name."""
    if not targets:
        raise InvalidArgument.for_field(field, "at least one target is required")
    if len(targets) > MAX_VOLUMES:
        raise InvalidArgument.for_field(field, f"has {len(targets)} targets; at most {MAX_VOLUMES}")
    disks = snapshot.disks
    seen: set[str] = set()
    for i, target in enumerate(targets):
        if not DISK_PATTERN.match(target.disk):
            raise InvalidArgument.for_field(
                f"{field}[{i}].disk", "must be 1..63 chars of [a-z0-9_-], e.g. vda"
            )
        if target.disk in seen:
            raise InvalidArgument.for_field(f"{field}[{i}].disk", f"{target.disk!r} appears twice")
        if target.disk not in disks:
            raise InvalidArgument.for_field(
                f"{field}[{i}].disk",
                f"{target.disk!r} is not a disk of the snapshot ({', '.join(sorted(disks))})",
            )
        seen.add(target.disk)
        if not CLONE_NAME_PATTERN.match(target.name):
            raise InvalidArgument.for_field(
                f"{field}[{i}].name",
                "must be 1..63 chars of [A-Za-z0-9-], starting with a letter or digit",
            )
