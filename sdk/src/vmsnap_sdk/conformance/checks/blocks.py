"""blocks: changed-block deltas and snapshot reads (CHANGED_BLOCKS, READ_SNAPSHOT).

What incremental export relies on: a delta names *every* range that changed
(an omitted range is silent data loss in a backup chain) and little else, in
valid ranges (sorted, apart, inside the volume, at most max_results per
message); a snapshot read returns the snapshot's bytes, not the live volume's.
Verified through the ConformanceFixture.
"""

from __future__ import annotations

import os
from typing import Any

import grpc

from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._types import Capability
from vmsnap_sdk.blocks import BlockMetadataType, BlockRange, coalesce, ranges_problem
from vmsnap_sdk.conformance._expect import expect, expect_code, fail
from vmsnap_sdk.conformance._registry import check
from vmsnap_sdk.conformance._rpc import failure_from
from vmsnap_sdk.conformance._session import Session
from vmsnap_sdk.conformance.checks._common import INVALID

CHANGED = (Capability.CHANGED_BLOCKS, Capability.CONFORMANCE_FIXTURE)
READ = (Capability.READ_SNAPSHOT, Capability.CONFORMANCE_FIXTURE)
KIB = 1024
#: Written before the first snapshot; then CHANGES between the two (offset, length).
BEFORE = ((0, 64 * KIB), (512 * KIB, 64 * KIB))
CHANGES = ((0, 4 * KIB), (128 * KIB, 64 * KIB), (768 * KIB, 64 * KIB))


def _ref(result: driver_pb2.VMSnapshotResult) -> driver_pb2.SnapshotRef:
    return driver_pb2.SnapshotRef(
        vm_snapshot_id=result.vm_snapshot_id, volume_snapshot=result.volume_snapshots[0]
    )


async def _stream(method: str, stub_method: Any, request: Any, s: Session) -> list[Any]:
    """Every message of a server stream; a non-OK status raises RpcFailure."""
    try:
        return [m async for m in stub_method(request, timeout=s.rpc_timeout)]
    except grpc.aio.AioRpcError as exc:
        raise failure_from(method, exc) from None


def _kind(value: int) -> BlockMetadataType:
    try:
        return BlockMetadataType(value)
    except ValueError:
        return BlockMetadataType.UNSPECIFIED


def _checked(messages: list[Any], start: int, most: int, what: str) -> tuple[list[BlockRange], int]:
    """All ranges of a stream, each message checked; and the block size."""
    expect(bool(messages), f"{what}: at least one message", "an empty stream")
    ranges: list[BlockRange] = []
    after = 0
    for m in messages:
        page = [BlockRange(b.byte_offset, b.size_bytes) for b in m.block_metadata]
        expect(len(page) <= most, f"{what}: at most {most} ranges per message", len(page))
        problem = ranges_problem(
            page,
            block_size=m.block_size_bytes,
            capacity_bytes=m.volume_capacity_bytes,
            starting_offset=start,
            kind=_kind(m.block_metadata_type),
            after=after,
        )
        expect(problem is None, f"{what}: valid ranges", problem)
        if page:
            after = page[-1].end
        ranges += page
    return ranges, int(messages[0].block_size_bytes)


def _outward(ranges: tuple[tuple[int, int], ...], block: int) -> list[BlockRange]:
    return coalesce(
        [
            BlockRange(o // block * block, -(-(o + n) // block) * block - o // block * block)
            for o, n in ranges
        ]
    )


async def _two_snapshots(
    s: Session,
) -> tuple[driver_pb2.VMSnapshotResult, driver_pb2.VMSnapshotResult]:
    (volume,) = await s.volumes(1)
    for offset, length in BEFORE:
        await s.write(volume.locator, os.urandom(length), offset)
    first = await s.wait_ready(await s.take(s.new_id(), [volume]))
    for offset, length in CHANGES:
        await s.write(volume.locator, os.urandom(length), offset)
    second = await s.wait_ready(await s.take(s.new_id(), [volume]))
    return first, second


async def _delta(
    s: Session,
    base: driver_pb2.VMSnapshotResult,
    target: driver_pb2.VMSnapshotResult,
    most: int,
) -> tuple[list[BlockRange], int]:
    request = driver_pb2.GetMetadataDeltaRequest(
        base=_ref(base), target=_ref(target), max_results=most
    )
    messages = await _stream("GetMetadataDelta", s.driver.GetMetadataDelta, request, s)
    return _checked(messages, 0, most, "GetMetadataDelta")


@check(
    "blocks.delta_lists_changes",
    "GetMetadataDelta lists every changed range and no unchanged block, in valid ranges",
    requires=CHANGED,
)
async def delta_lists_changes(s: Session) -> None:
    s.require_data()
    first, second = await _two_snapshots(s)
    ranges, block = await _delta(s, first, second, 1000)
    expect(block > 0, "block_size_bytes > 0", block)
    want = _outward(CHANGES, block)
    got = coalesce(ranges)
    missing = [r for r in want if not any(g.offset <= r.offset and r.end <= g.end for g in got)]
    expect(not missing, "every changed range in the delta", f"missing {missing}")
    expect(got == want, f"exactly the changed blocks {want}", got)


@check(
    "blocks.delta_paged",
    "GetMetadataDelta with max_results=1 streams the same ranges, one per message",
    requires=CHANGED,
)
async def delta_paged(s: Session) -> None:
    s.require_data()
    first, second = await _two_snapshots(s)
    whole, _ = await _delta(s, first, second, 1000)
    paged, _ = await _delta(s, first, second, 1)
    expect(coalesce(paged) == coalesce(whole), f"the same ranges {coalesce(whole)}", paged)


@check(
    "blocks.allocated_covers_data",
    "GetMetadataAllocated covers every written range, in valid ranges",
    requires=CHANGED,
)
async def allocated_covers_data(s: Session) -> None:
    s.require_data()
    first, _second = await _two_snapshots(s)
    request = driver_pb2.GetMetadataAllocatedRequest(snapshot=_ref(first), max_results=1000)
    messages = await _stream("GetMetadataAllocated", s.driver.GetMetadataAllocated, request, s)
    ranges, _ = _checked(messages, 0, 1000, "GetMetadataAllocated")
    got = coalesce(ranges)
    for offset, length in BEFORE:
        expect(
            any(g.offset <= offset and offset + length <= g.end for g in got),
            f"written range [{offset}, +{length}) inside an allocated range",
            got,
        )


@check(
    "blocks.bounds_invalid",
    "max_results over 10000 and a negative starting_offset are INVALID_ARGUMENT",
    requires=CHANGED,
)
async def bounds_invalid(s: Session) -> None:
    s.require_data()
    (volume,) = await s.volumes(1)
    first = await s.wait_ready(await s.take(s.new_id(), [volume]))
    ref = _ref(first)
    for field, request in (
        ("max_results", driver_pb2.GetMetadataAllocatedRequest(snapshot=ref, max_results=10001)),
        (
            "starting_offset",
            driver_pb2.GetMetadataAllocatedRequest(snapshot=ref, starting_offset=-1),
        ),
    ):
        await expect_code(
            _stream("GetMetadataAllocated", s.driver.GetMetadataAllocated, request, s),
            INVALID,
            what=f"GetMetadataAllocated with a bad {field}",
        )
    # Checked before the snapshots are compared: the same one twice is enough here.
    delta = driver_pb2.GetMetadataDeltaRequest(base=ref, target=ref, max_results=-1)
    await expect_code(
        _stream("GetMetadataDelta", s.driver.GetMetadataDelta, delta, s),
        INVALID,
        what="GetMetadataDelta with max_results -1",
    )


@check(
    "blocks.read_returns_snapshot_bytes",
    "ReadSnapshot returns the snapshot's bytes (not the volume's since), in ordered chunks",
    requires=READ,
)
async def read_returns_snapshot_bytes(s: Session) -> None:
    s.require_data()
    (volume,) = await s.volumes(1)
    a = os.urandom(64 * KIB)
    await s.write(volume.locator, a, 64 * KIB)
    snap = await s.wait_ready(await s.take(s.new_id(), [volume]))
    await s.write(volume.locator, os.urandom(64 * KIB), 64 * KIB)
    request = driver_pb2.ReadSnapshotRequest(
        snapshot=_ref(snap), offset=64 * KIB, length=64 * KIB, chunk_size=4 * KIB
    )
    messages = await _stream("ReadSnapshot", s.driver.ReadSnapshot, request, s)
    position = 64 * KIB
    for m in messages:
        expect(m.offset == position, f"a chunk at offset {position}", m.offset)
        expect(0 < len(m.data) <= 4 * KIB, "chunks of 1..chunk_size bytes", len(m.data))
        position += len(m.data)
    data = b"".join(m.data for m in messages)
    if data != a:
        fail("the snapshot's 65536 bytes", f"{len(data)} bytes that differ")


@check(
    "blocks.read_bounds_invalid",
    "ReadSnapshot with chunk_size under 4 KiB or over 4 MiB, or length 0, is INVALID_ARGUMENT",
    requires=READ,
)
async def read_bounds_invalid(s: Session) -> None:
    s.require_data()
    (volume,) = await s.volumes(1)
    snap = await s.wait_ready(await s.take(s.new_id(), [volume]))
    for label, chunk, length in (
        ("chunk_size 1", 1, 4096),
        ("chunk_size 8 MiB", 8 << 20, 4096),
        ("length 0", 0, 0),
    ):
        request = driver_pb2.ReadSnapshotRequest(
            snapshot=_ref(snap), offset=0, length=length, chunk_size=chunk
        )
        await expect_code(
            _stream("ReadSnapshot", s.driver.ReadSnapshot, request, s),
            INVALID,
            what=f"ReadSnapshot with {label}",
        )
