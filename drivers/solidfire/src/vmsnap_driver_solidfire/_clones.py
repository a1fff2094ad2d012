"""Clones of a VM snapshot: new Element volumes from its group snapshot.

One ``CloneMultipleVolumes`` with the group snapshot's id makes every new
volume from the group's member snapshots, at the group's instant. Element
clones share blocks with their source and diverge on write (copy-on-write):
writes to a clone never reach the source volume nor the snapshot.

Each new volume carries the tag ``{"vmsnap-clone": {"clone": <clone_id>,
"snapshot": <vm_snapshot_id>, "vm": <new VM id>, "disk": <disk>}}`` in its
attributes: a retry of the same clone_id finds its volumes instead of making a
second set, and DeleteClonedVolumes finds them by the id alone (deleted, then
purged, so nothing is left on the cluster).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmsnap_driver_solidfire._array import ElementArray
from vmsnap_sdk.errors import Unavailable

CLONE_TAG_KEY = "vmsnap-clone"


@dataclass(frozen=True)
class CloneTag:
    """What the driver records on a cloned volume."""

    clone_id: str
    vm_snapshot_id: str
    vm_id: str
    disk: str

    def attributes(self) -> dict[str, Any]:
        return {
            CLONE_TAG_KEY: {
                "clone": self.clone_id,
                "snapshot": self.vm_snapshot_id,
                "vm": self.vm_id,
                "disk": self.disk,
            }
        }

    @classmethod
    def from_attributes(cls, attributes: object) -> CloneTag | None:
        if not isinstance(attributes, Mapping):
            return None
        body = attributes.get(CLONE_TAG_KEY)
        if not isinstance(body, Mapping) or not isinstance(body.get("clone"), str):
            return None
        return cls(
            clone_id=body["clone"],
            vm_snapshot_id=str(body.get("snapshot", "")),
            vm_id=str(body.get("vm", "")),
            disk=str(body.get("disk", "")),
        )


@dataclass(frozen=True)
class ClonedVolume:
    volume_id: int
    size: int
    name: str
    tag: CloneTag
    deleted: bool


async def find(array: ElementArray, clone_id: str, action: str) -> list[ClonedVolume]:
    """Every volume (active, or deleted and not yet purged) tagged with the clone id."""

    def listing(sf: Any) -> list[tuple[Any, bool]]:
        active = [(v, False) for v in sf.list_volumes(volume_status="active").volumes]
        deleted = [(v, True) for v in sf.list_deleted_volumes().volumes]
        return active + deleted

    found = []
    for volume, deleted in await array.call(action, listing):
        tag = CloneTag.from_attributes(volume.attributes)
        if tag is not None and tag.clone_id == clone_id:
            found.append(
                ClonedVolume(
                    int(volume.volume_id),
                    int(volume.total_size or 0),
                    str(volume.name),
                    tag,
                    deleted,
                )
            )
    return found


async def wait_async(array: ElementArray, handle: int, action: str, timeout: float) -> None:
    """Until the cluster reports the async work done (clones are usable at once on
    Element, but a failure is only reported here)."""
    end = time.monotonic() + timeout
    delay = 0.02
    while True:
        result = await array.call(action, lambda sf: sf.get_async_result(handle, keep_result=True))
        status = result.get("status") if isinstance(result, Mapping) else None
        if status == "complete":
            error = result.get("error")
            if error:
                message = error.get("message") if isinstance(error, Mapping) else error
                raise Unavailable(f"{action}: the cluster reported the clone failed: {message}")
            return
        if time.monotonic() > end:
            raise Unavailable(
                f"{action}: the clone (async handle {handle}) did not finish within "
                f"{timeout:g} s; retry with the same clone_id"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
