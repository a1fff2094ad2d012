"""Deliberately broken drivers: every conformance check must fail against one of them.

``VARIANTS`` maps a name to a coroutine function that starts the variant on
an address and returns its server. Domain variants (``domain.py``) are
StorageDriver subclasses served by the SDK; wire variants (``wire.py``) are
raw servicers on the generated stubs, for faults the SDK's adapter would
prevent. ``python -m tests.conformance.broken NAME --listen ADDRESS`` serves
one as its own process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tests.conformance.broken import domain, wire
from tests.conformance.reference_driver import ReferenceDriver
from vmsnap_sdk import StorageDriver, start_driver_server

Starter = Callable[[str], Awaitable[Any]]


def sdk(factory: Callable[[], StorageDriver]) -> Starter:
    async def start(address: str) -> Any:
        return await start_driver_server(factory(), address, grace_seconds=0)

    return start


def raw(**options: Any) -> Starter:
    async def start(address: str) -> Any:
        return await wire.start_wire_server(ReferenceDriver(), address, **options)

    return start


def raw_driver(factory: Callable[[], StorageDriver], **options: Any) -> Starter:
    async def start(address: str) -> Any:
        return await wire.start_wire_server(factory(), address, **options)

    return start


VARIANTS: dict[str, Starter] = {
    "bad_identity": sdk(domain.BadIdentity),
    "bare_server": raw(bare=True),
    "overclaims": sdk(domain.Overclaims),
    "underclaims": raw_driver(domain.Underclaims, fixture=True),
    "claims_everything": sdk(domain.ClaimsEverything),
    "can_handle_side_effects": sdk(domain.CanHandleSideEffects),
    "reversed_decisions": raw(hook=wire.reversed_decisions),
    "sloppy_result": sdk(domain.SloppyResult),
    "disk_handles": sdk(domain.DiskHandles),
    "non_idempotent_take": sdk(domain.NonIdempotentTake),
    "revert_noop": sdk(domain.RevertNoop),
    "delete_strict": sdk(domain.DeleteStrict),
    "delete_noop": sdk(domain.DeleteNoop),
    "delete_by_volume": sdk(domain.DeleteByVolume),
    "bad_paging": sdk(domain.BadPaging),
    "racy": sdk(domain.Racy),
    "concurrent_same_id": sdk(domain.ConcurrentSameId),
    "corrupting_revert": sdk(domain.CorruptingRevert),
    "deadline_wrong_code": sdk(domain.DeadlineWrongCode),
    "internal_on_bad_input": raw(rewrite=wire.internal_on_bad_input),
    "crash_on_bad_input": raw(rewrite=wire.crash_on_bad_input),
    "no_details": raw(rewrite=wire.no_details),
    "wrong_codes": raw(rewrite=wire.wrong_codes),
    "delta_omits_range": sdk(domain.DeltaOmitsRange),
    "unsorted_ranges": sdk(domain.UnsortedRanges),
    "ignores_page_size": sdk(domain.IgnoresPageSize),
    "reads_live_volume": sdk(domain.ReadsLiveVolume),
    "clone_shares": sdk(domain.CloneShares),
    "clone_not_idempotent": sdk(domain.CloneNotIdempotent),
    "clone_delete_noop": sdk(domain.CloneDeleteNoop),
    "clone_unclaimed": sdk(domain.CloneUnclaimed),
    "lists_managed": sdk(domain.ListsManaged),
    "unmanaged_side_effects": sdk(domain.UnmanagedSideEffects),
}
