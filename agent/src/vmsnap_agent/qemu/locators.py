"""Volume locators → what QEMU opens (a local file or an NBD url).

The host names disks by storage-side locators (``ontap://svm/vol/path``,
``element://cluster/42``); QEMU needs a path or an NBD url. A
:class:`LocatorMap` rewrites locator prefixes, configured per deployment
(``--map ontap://svm1/vol1/=/srv/ontap/svm1/vol1/``,
``--map element://c1/=nbd://127.0.0.1:10809/``). ``file:///abs/path``,
absolute paths and NBD urls pass through unchanged.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import InvalidSpec
from .model import DiskFormat


@dataclass(frozen=True)
class LocatorMap:
    # (prefix, replacement), longest prefix first.
    rules: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def parse(cls, entries: list[str]) -> LocatorMap:
        rules = []
        for entry in entries:
            prefix, sep, target = entry.partition("=")
            if not sep or not prefix or not target:
                raise InvalidSpec(f"locator map entry must be PREFIX=TARGET: {entry!r}")
            rules.append((prefix, target))
        return cls(tuple(sorted(rules, key=lambda r: -len(r[0]))))

    def resolve(self, locator: str) -> str:
        for prefix, target in self.rules:
            if locator.startswith(prefix):
                locator = target + locator[len(prefix) :]
                break
        if locator.startswith("file://"):
            return unquote(urlparse(locator).path)
        if locator.startswith(("/", "nbd://", "nbd+unix://")):
            return locator
        raise InvalidSpec(f"no mapping for locator {locator!r} (add --map PREFIX=PATH_OR_NBD_URL)")


def ensure_image(path: str, fmt: DiskFormat, size_bytes: int) -> None:
    """Create a missing local image of ``size_bytes`` (the demo's VMs bring no disks)."""
    if not path.startswith("/") or Path(path).exists():
        return
    if size_bytes <= 0:
        raise InvalidSpec(f"{path} does not exist and the volume has no size to create it")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if fmt is DiskFormat.QCOW2:
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", path, str(size_bytes)],
            check=True,
            capture_output=True,
        )
    else:
        with open(path, "wb") as f:
            f.truncate(size_bytes)
