"""Small things several categories share."""

from __future__ import annotations

import grpc

from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._types import Capability
from vmsnap_sdk.conformance._expect import CheckSkipped
from vmsnap_sdk.conformance._session import Session

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
ABORTED = grpc.StatusCode.ABORTED
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED

#: A scheme no driver owns: volumes there are unknown to every driver.
FOREIGN_SCHEME = "vmsnap-conformance-nowhere"


def foreign_volume(disk: str = "vdz", n: int = 1) -> common_pb2.Volume:
    """A well-formed volume that no driver can know."""
    return common_pb2.Volume(disk=disk, locator=f"{FOREIGN_SCHEME}://pool/{n}", size_bytes=0)


def copy_volume(volume: common_pb2.Volume, **changes: object) -> common_pb2.Volume:
    """A copy of ``volume`` with some fields changed."""
    result = common_pb2.Volume()
    result.CopyFrom(volume)
    for name, value in changes.items():
        setattr(result, name, value)
    return result


def describe_result(result: driver_pb2.VMSnapshotResult) -> str:
    parts = ", ".join(f"{v.disk}={v.handle!r}" for v in result.volume_snapshots)
    return f"{result.vm_snapshot_id!r} [{parts}]"


async def own_or_none(s: Session, count: int = 1) -> list[common_pb2.Volume]:
    """Test volumes when there are any; none otherwise (the check still runs)."""
    try:
        return await s.volumes(count)
    except CheckSkipped:
        return []


async def own_or_foreign(s: Session) -> list[common_pb2.Volume]:
    """One volume: the driver's own when there is one, else a foreign one.

    For checks of malformed requests: the answer must be INVALID_ARGUMENT
    whatever the volume, but a real one keeps a driver from answering
    NOT_FOUND for the wrong reason.
    """
    return (await own_or_none(s)) or [foreign_volume("vda")]


async def missing_volume(s: Session) -> tuple[common_pb2.Volume, tuple[grpc.StatusCode, ...], str]:
    """A volume the driver does not have, the codes a take of it may end with, and a label.

    With the fixture: a test volume created and deleted again, which is
    NOT_FOUND and nothing else. Without: a volume of a scheme no driver owns,
    which a driver may also reject as malformed (INVALID_ARGUMENT).
    """
    if s.has(Capability.CONFORMANCE_FIXTURE):
        volume = await s.create_volume(0)
        await s.delete_volume(volume.locator)
        return volume, (NOT_FOUND,), "take of a deleted test volume"
    return foreign_volume("vda"), (NOT_FOUND, INVALID), "take of another storage's volume"
