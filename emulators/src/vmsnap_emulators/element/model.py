"""Element records as persisted, and their wire shape.

Field names on the wire are those of ``solidfire.models`` (``Volume``, ``Snapshot``,
``GroupSnapshot``, ``Account``), so the vendor SDK deserializes them unchanged. Persisted
records are dataclasses serialized with :func:`dataclasses.asdict`.
"""

from __future__ import annotations

import datetime
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

NO_GROUP_UUID = "00000000-0000-0000-0000-000000000000"


def now_iso() -> str:
    """Element's timestamp format: ISO 8601, seconds, UTC, ``Z`` suffix."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Account:
    accountID: int  # noqa: N815 - wire names
    username: str
    status: str
    attributes: dict[str, Any]
    initiatorSecret: str  # noqa: N815
    targetSecret: str  # noqa: N815
    enableChap: bool = True  # noqa: N815

    def wire(self, volumes: list[int]) -> dict[str, Any]:
        out = asdict(self)
        out["volumes"] = volumes
        return out


@dataclass
class Volume:
    volumeID: int  # noqa: N815
    name: str
    accountID: int  # noqa: N815
    totalSize: int  # noqa: N815
    enable512e: bool
    access: str
    attributes: dict[str, Any]
    qos: dict[str, Any]
    createTime: str  # noqa: N815
    volumeUUID: str  # noqa: N815
    head: str  # the writable layer holding the volume's current bytes
    status: str = "active"
    deleteTime: str = ""  # noqa: N815
    purgeTime: str = ""  # noqa: N815

    def wire(self, cluster_unique_id: str) -> dict[str, Any]:
        uid_hex = cluster_unique_id.encode().hex()[:8]
        return {
            "volumeID": self.volumeID,
            "name": self.name,
            "accountID": self.accountID,
            "totalSize": self.totalSize,
            "enable512e": self.enable512e,
            "access": self.access,
            "attributes": self.attributes,
            "qos": self.qos,
            "qosPolicyID": None,
            "createTime": self.createTime,
            "status": self.status,
            "deleteTime": self.deleteTime,
            "purgeTime": self.purgeTime,
            "lastAccessTime": None,
            "lastAccessTimeIO": None,
            "blockSize": 4096,
            "sliceCount": 1,
            "iqn": f"iqn.2010-01.com.solidfire:{cluster_unique_id}.{self.name}.{self.volumeID}",
            "scsiEUIDeviceID": f"{uid_hex}{self.volumeID:08x}f47acc01",
            "scsiNAADeviceID": f"6f47acc1{uid_hex}{self.volumeID:016x}",
            "volumeUUID": self.volumeUUID,
            "volumeConsistencyGroupUUID": self.volumeUUID,
            "virtualVolumeID": None,
            "volumeAccessGroups": [],
            "volumePairs": [],
            "enableSnapMirrorReplication": False,
            "currentProtectionScheme": "doubleHelix",
            "previousProtectionScheme": None,
            "fifoSize": 24,
            "minFifoSize": 0,
        }


@dataclass
class Snapshot:
    snapshotID: int  # noqa: N815
    volumeID: int  # noqa: N815
    name: str
    layer: str  # frozen layer holding the snapshot's block map
    totalSize: int  # noqa: N815
    createTime: str  # noqa: N815
    snapshotUUID: str  # noqa: N815
    attributes: dict[str, Any]
    groupID: int = 0  # noqa: N815
    groupSnapshotUUID: str = NO_GROUP_UUID  # noqa: N815
    expirationTime: str | None = None  # noqa: N815
    enableRemoteReplication: bool = False  # noqa: N815
    snapMirrorLabel: str | None = None  # noqa: N815

    def checksum(self) -> str:
        # The real checksum covers the data; computing that would scale with the volume, so
        # this one identifies the frozen block map instead (same layer -> same checksum).
        return f"0x{zlib.crc32(self.layer.encode()):08x}"

    def wire(self, volume_name: str) -> dict[str, Any]:
        out = asdict(self)
        del out["layer"]
        out.update(
            {
                "checksum": self.checksum(),
                "status": "done",
                "volumeName": volume_name,
                "instanceCreateTime": self.createTime,
                "instanceSnapshotUUID": self.snapshotUUID,
                "expirationReason": "None",
                "remoteStatuses": [],
                "virtualVolumeID": None,
            }
        )
        return out


@dataclass
class GroupSnapshot:
    groupSnapshotID: int  # noqa: N815
    groupSnapshotUUID: str  # noqa: N815
    name: str
    createTime: str  # noqa: N815
    attributes: dict[str, Any]
    members: list[int] = field(default_factory=list)  # snapshot IDs
    expirationTime: str | None = None  # noqa: N815
    enableRemoteReplication: bool = False  # noqa: N815
    snapMirrorLabel: str | None = None  # noqa: N815


@dataclass
class AsyncResult:
    asyncHandle: int  # noqa: N815
    resultType: str  # noqa: N815
    createTime: str  # noqa: N815
    complete_at: float  # monotonic-free wall clock: reports "running" until then
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)


def default_qos() -> dict[str, Any]:
    return {
        "minIOPS": 50,
        "maxIOPS": 15000,
        "burstIOPS": 15000,
        "burstTime": 60,
        "curve": {
            "4096": 100,
            "8192": 160,
            "16384": 270,
            "32768": 500,
            "65536": 1000,
            "131072": 1950,
            "262144": 3900,
            "524288": 7600,
            "1048576": 15000,
        },
    }
