"""Wire side of changed blocks and snapshot reads: validation, conversion, streams.

The server half turns a driver's pages into the CSI-shaped stream; the client
half (used by :class:`vmsnap_sdk.DriverClient`) reads a stream back as pages.
The SDK passes a driver's ranges on as they are: the rules
(:func:`vmsnap_sdk.blocks.ranges_problem`) are checked by the host on every
answer and by the conformance suite, which is where a vendor learns of a break.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from vmsnap_sdk import _validate as val
from vmsnap_sdk._errors import Internal, InvalidArgument, from_rpc_error
from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._types import VolumeSnapshot
from vmsnap_sdk.blocks import (
    DEFAULT_CHUNK,
    DEFAULT_MAX_RESULTS,
    MAX_CHUNK,
    MAX_OFFSET,
    MAX_RESULTS,
    MIN_CHUNK,
    BlockMetadataType,
    BlockPage,
    BlockRange,
    SnapshotRef,
)

MAX_HANDLE_BYTES = 1024


# -- validation (shared with the host's RPCs) ----------------------------------------------
def max_results(field: str, value: int) -> int:
    if not 0 <= value <= MAX_RESULTS:
        raise InvalidArgument.for_field(
            field, f"must be 0..{MAX_RESULTS} (0 = {DEFAULT_MAX_RESULTS}); got {value}"
        )
    return value or DEFAULT_MAX_RESULTS


def chunk_size(field: str, value: int) -> int:
    if value != 0 and not MIN_CHUNK <= value <= MAX_CHUNK:
        raise InvalidArgument.for_field(
            field, f"must be 0 (= {DEFAULT_CHUNK}) or {MIN_CHUNK}..{MAX_CHUNK} bytes; got {value}"
        )
    return value or DEFAULT_CHUNK


def offset(field: str, value: int) -> int:
    return val.require_range(field, value, 0, MAX_OFFSET)


def length(field: str, value: int) -> int:
    return val.require_range(field, value, 1, MAX_OFFSET)


def _ref_from_pb(field: str, m: driver_pb2.SnapshotRef, present: bool) -> SnapshotRef:
    if not present:
        raise InvalidArgument.for_field(field, "is required")
    val.require_id(f"{field}.vm_snapshot_id", m.vm_snapshot_id)
    v = m.volume_snapshot
    val.require_locator(f"{field}.volume_snapshot.locator", v.locator)
    if not v.handle or len(v.handle.encode()) > MAX_HANDLE_BYTES:
        raise InvalidArgument.for_field(
            f"{field}.volume_snapshot.handle", f"must be 1..{MAX_HANDLE_BYTES} bytes"
        )
    return SnapshotRef(
        m.vm_snapshot_id,
        VolumeSnapshot(disk=v.disk, locator=v.locator, handle=v.handle, size_bytes=v.size_bytes),
    )


def ref_to_pb(ref: SnapshotRef) -> driver_pb2.SnapshotRef:
    v = ref.volume
    return driver_pb2.SnapshotRef(
        vm_snapshot_id=ref.vm_snapshot_id,
        volume_snapshot=driver_pb2.VolumeSnapshot(
            disk=v.disk, locator=v.locator, handle=v.handle, size_bytes=v.size_bytes
        ),
    )


def _page_fields(page: BlockPage) -> dict[str, Any]:
    return {
        "block_metadata_type": driver_pb2.BlockMetadataType.ValueType(page.kind.value),
        "volume_capacity_bytes": page.capacity_bytes,
        "block_size_bytes": page.block_size,
        "block_metadata": [
            driver_pb2.BlockMetadata(byte_offset=r.offset, size_bytes=r.length) for r in page.ranges
        ],
    }


# -- server: pages -> stream ---------------------------------------------------------------
Writer = Callable[[Any], Awaitable[None]]
PageFn = Callable[[int, int], Awaitable[BlockPage]]


async def stream_pages(
    write: Writer, message: type[Any], fetch: PageFn, start: int, most: int
) -> None:
    """Ask the driver page after page and write each as one stream message."""
    position = start
    first = True
    while True:
        page = await fetch(position, most)
        if len(page.ranges) > most:
            raise Internal(f"the driver answered {len(page.ranges)} ranges for max_results {most}")
        if page.ranges or first:
            await write(message(**_page_fields(page)))
        first = False
        if page.done or not page.ranges:
            return
        following = page.ranges[-1].end
        if following <= position:
            raise Internal("the driver's page does not advance past starting_offset")
        position = following


def allocated_request(
    m: driver_pb2.GetMetadataAllocatedRequest,
) -> tuple[SnapshotRef, int, int]:
    return (
        _ref_from_pb("snapshot", m.snapshot, m.HasField("snapshot")),
        offset("starting_offset", m.starting_offset),
        max_results("max_results", m.max_results),
    )


def delta_request(
    m: driver_pb2.GetMetadataDeltaRequest,
) -> tuple[SnapshotRef, SnapshotRef, int, int]:
    base = _ref_from_pb("base", m.base, m.HasField("base"))
    target = _ref_from_pb("target", m.target, m.HasField("target"))
    if base.volume.locator != target.volume.locator:
        raise InvalidArgument.for_field(
            "target.volume_snapshot.locator",
            "must be the base's volume: a delta compares two snapshots of one volume",
        )
    return (
        base,
        target,
        offset("starting_offset", m.starting_offset),
        max_results("max_results", m.max_results),
    )


def read_request(m: driver_pb2.ReadSnapshotRequest) -> tuple[SnapshotRef, int, int, int]:
    return (
        _ref_from_pb("snapshot", m.snapshot, m.HasField("snapshot")),
        offset("offset", m.offset),
        length("length", m.length),
        chunk_size("chunk_size", m.chunk_size),
    )


async def stream_read(
    write: Writer,
    read: Callable[[int, int], Awaitable[bytes]],
    start: int,
    size: int,
    chunk: int,
) -> None:
    position, end = start, start + size
    while position < end:
        n = min(chunk, end - position)
        data = await read(position, n)
        if len(data) != n:
            raise Internal(f"the driver read {len(data)} bytes at {position}; {n} were asked for")
        await write(driver_pb2.ReadSnapshotResponse(offset=position, data=data))
        position += n


# -- client: stream -> pages ---------------------------------------------------------------
def page_from_pb(m: Any, most: int) -> BlockPage:
    ranges = tuple(BlockRange(b.byte_offset, b.size_bytes) for b in m.block_metadata)
    try:
        kind = BlockMetadataType(m.block_metadata_type)
    except ValueError:
        kind = BlockMetadataType.UNSPECIFIED
    return BlockPage(
        ranges=ranges,
        block_size=m.block_size_bytes,
        capacity_bytes=m.volume_capacity_bytes,
        kind=kind,
        done=len(ranges) < most,
    )


async def first_message(stream: Any) -> Any:
    """The first message of a server stream (then the call is cancelled)."""
    try:
        async for message in stream:
            stream.cancel()
            return message
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from exc
    return None


async def iterate(stream: Any) -> AsyncIterator[Any]:
    try:
        async for message in stream:
            yield message
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from exc
