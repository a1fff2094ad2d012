"""Changed blocks and snapshot reads: the domain types and the range rules.

The contract (driver.proto, ``GetMetadataAllocated`` / ``GetMetadataDelta`` /
``ReadSnapshot``) is shaped like CSI's SnapshotMetadata service: a stream of
messages, each with at most ``max_results`` ranges, resumable from
``starting_offset``. A driver implements one *page* at a time
(:meth:`vmsnap_sdk.StorageDriver.get_allocated` / ``get_delta``); the SDK's
server adapter turns pages into the stream, so a vendor never writes stream
code. :func:`ranges_problem` is the one statement of what a valid answer is:
the host checks every driver answer with it and the conformance suite reports
its findings.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from vmsnap_sdk._types import VolumeSnapshot

#: Default and largest number of ranges per stream message.
DEFAULT_MAX_RESULTS = 1000
MAX_RESULTS = 10000
#: Default, smallest and largest chunk of a snapshot read.
DEFAULT_CHUNK = 1 << 20
MIN_CHUNK = 4 << 10
MAX_CHUNK = 4 << 20
#: Largest offset (and length) anyone may ask for: 1 PiB.
MAX_OFFSET = 1 << 50


class BlockMetadataType(enum.Enum):
    """How ranges are cut (CSI's BlockMetadataType)."""

    UNSPECIFIED = 0
    FIXED_LENGTH = 1
    VARIABLE_LENGTH = 2


@dataclass(frozen=True)
class BlockRange:
    """``length`` bytes of a volume from ``offset``."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class SnapshotRef:
    """One volume's snapshot: the host's VM snapshot id and the take's entry."""

    vm_snapshot_id: str
    volume: VolumeSnapshot


@dataclass(frozen=True)
class BlockPage:
    """One page of ranges a driver answers.

    ``done`` says no range follows this page; when False the SDK asks again from
    the end of the last range (a page with no range also ends the stream).
    """

    ranges: tuple[BlockRange, ...]
    block_size: int
    capacity_bytes: int
    kind: BlockMetadataType = BlockMetadataType.VARIABLE_LENGTH
    done: bool = True


def ranges_problem(
    ranges: Sequence[BlockRange],
    *,
    block_size: int,
    capacity_bytes: int,
    starting_offset: int,
    kind: BlockMetadataType = BlockMetadataType.VARIABLE_LENGTH,
    after: int = 0,
) -> str | None:
    """What breaks the contract in one answer's ranges, or None.

    ``after`` is the end of the last range of earlier messages of the same stream:
    a range may not start before it (no overlap across messages either).
    """
    if block_size <= 0:
        return f"block_size_bytes must be > 0; got {block_size}"
    if capacity_bytes <= 0:
        return f"volume_capacity_bytes must be > 0; got {capacity_bytes}"
    if kind is BlockMetadataType.UNSPECIFIED:
        return "block_metadata_type is UNSPECIFIED"
    previous_end = after
    for i, r in enumerate(ranges):
        where = f"range {i} [{r.offset}, +{r.length})"
        if r.length <= 0:
            return f"{where} has size_bytes <= 0"
        if r.offset < 0 or r.end > capacity_bytes:
            return f"{where} is outside the volume (capacity {capacity_bytes})"
        if r.end <= starting_offset:
            return f"{where} ends before starting_offset {starting_offset}"
        if r.offset < previous_end:
            return f"{where} is unsorted or overlaps the range before it (ending at {previous_end})"
        if r.offset % block_size or (r.length % block_size and r.end != capacity_bytes):
            return f"{where} is not aligned to block_size_bytes {block_size}"
        if (
            kind is BlockMetadataType.FIXED_LENGTH
            and r.length != block_size
            and (r.end != capacity_bytes)
        ):
            return f"{where} is not one block of {block_size} bytes (FIXED_LENGTH)"
        previous_end = r.end
    return None


def coalesce(ranges: Sequence[BlockRange]) -> list[BlockRange]:
    """Sorted ranges with touching neighbours merged (for callers that compare extents)."""
    out: list[BlockRange] = []
    for r in sorted(ranges, key=lambda x: x.offset):
        if out and r.offset <= out[-1].end:
            last = out.pop()
            out.append(BlockRange(last.offset, max(last.end, r.end) - last.offset))
        else:
            out.append(r)
    return out


def blocks_to_ranges(indexes: Sequence[int], block_size: int, capacity: int) -> list[BlockRange]:
    """Sorted block numbers as coalesced byte ranges (the last cut at ``capacity``)."""
    out: list[BlockRange] = []
    start = prev = -2
    for idx in sorted(indexes):
        if idx != prev + 1:
            if start >= 0:
                out.append(_block_span(start, prev, block_size, capacity))
            start = idx
        prev = idx
    if start >= 0:
        out.append(_block_span(start, prev, block_size, capacity))
    return out


def _block_span(first: int, last: int, block_size: int, capacity: int) -> BlockRange:
    offset = first * block_size
    return BlockRange(offset, min((last + 1) * block_size, capacity) - offset)


def page_of(
    ranges: Sequence[BlockRange], starting_offset: int, max_results: int
) -> tuple[tuple[BlockRange, ...], bool]:
    """The ranges (sorted, apart) that end after ``starting_offset``, at most
    ``max_results`` of them, and whether that was the last of them."""
    wanted = [r for r in ranges if r.end > starting_offset]
    return tuple(wanted[:max_results]), len(wanted) <= max_results


__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_MAX_RESULTS",
    "MAX_CHUNK",
    "MAX_OFFSET",
    "MAX_RESULTS",
    "MIN_CHUNK",
    "BlockMetadataType",
    "BlockPage",
    "BlockRange",
    "SnapshotRef",
    "blocks_to_ranges",
    "coalesce",
    "page_of",
    "ranges_problem",
]
