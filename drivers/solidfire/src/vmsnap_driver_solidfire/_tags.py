"""Locators (``element://<cluster>/<volumeID>``) and the tags the driver puts on
group snapshots.

Element lets a group snapshot carry a JSON object of ``attributes`` (at most
1000 bytes on a real cluster); the driver writes one key, ``vmsnap``, holding::

    {"id": "<vm_snapshot_id>", "vm": "<vm id>", "name": "<human name>",
     "disks": {"<volumeID>": "<disk name>", ...}}

The id makes every operation idempotent and lets DeleteVMSnapshot and
ListVMSnapshots work from the array alone; the disks map lets the driver rebuild
the full result (disk names included) from the array after a crash of the host.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SCHEME = "element"
TAG_KEY = "vmsnap"
#: What a real cluster accepts in ``attributes``.
MAX_ATTRIBUTES_BYTES = 1000


@dataclass(frozen=True)
class ElementVolume:
    """A parsed locator."""

    cluster: str
    volume_id: int

    @property
    def locator(self) -> str:
        return locator(self.cluster, self.volume_id)


def locator(cluster: str, volume_id: int) -> str:
    """The locator of a volume."""
    return f"{SCHEME}://{cluster}/{volume_id}"


def parse_locator(value: str) -> ElementVolume | None:
    """The cluster and volume id of an ``element://`` locator; None when it is not one."""
    prefix = f"{SCHEME}://"
    if not value.startswith(prefix):
        return None
    cluster, sep, volume = value[len(prefix) :].partition("/")
    if not cluster or not sep or not volume.isdigit() or int(volume) <= 0:
        return None
    return ElementVolume(cluster, int(volume))


@dataclass(frozen=True)
class Tag:
    """What the driver records on a group snapshot."""

    vm_snapshot_id: str
    vm_id: str
    name: str
    #: volume id → disk name.
    disks: Mapping[int, str]

    def attributes(self) -> dict[str, Any]:
        """The ``attributes`` object for CreateGroupSnapshot / RollbackToGroupSnapshot.

        The human name is shortened (then dropped) when the whole would not fit
        the cluster's limit; the id, VM and disks are what the driver needs.
        """
        body: dict[str, Any] = {
            "id": self.vm_snapshot_id,
            "vm": self.vm_id,
            "name": self.name,
            "disks": {str(k): v for k, v in sorted(self.disks.items())},
        }
        while len(json.dumps({TAG_KEY: body})) > MAX_ATTRIBUTES_BYTES and body["name"]:
            body["name"] = body["name"][: len(body["name"]) // 2]
        return {TAG_KEY: body}

    @classmethod
    def from_attributes(cls, attributes: object) -> Tag | None:
        """The tag of a group snapshot; None for one the driver did not make."""
        if not isinstance(attributes, Mapping):
            return None
        body = attributes.get(TAG_KEY)
        if not isinstance(body, Mapping) or not isinstance(body.get("id"), str):
            return None
        disks = body.get("disks")
        if not isinstance(disks, Mapping):
            return None
        try:
            parsed = {int(k): str(v) for k, v in disks.items()}
        except ValueError:
            return None
        return cls(
            vm_snapshot_id=body["id"],
            vm_id=str(body.get("vm", "")),
            name=str(body.get("name", "")),
            disks=parsed,
        )


def fits(tag: Tag) -> bool:
    """Whether the tag fits the cluster's attribute limit."""
    return len(json.dumps(tag.attributes())) <= MAX_ATTRIBUTES_BYTES
