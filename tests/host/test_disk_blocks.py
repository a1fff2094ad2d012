"""The host's checks on a driver's changed blocks (vmsnap_host.blocks), in process.

The drivers are the conformance suite's reference driver and its broken
variants, called directly: the host must pass a good delta on page by page and
refuse a broken one (INTERNAL, DRIVER_CONTRACT_VIOLATION naming the driver and
the rule) rather than hand a client unsorted or overlapping ranges.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conformance.broken.domain import UnsortedRanges
from tests.conformance.reference_driver import ReferenceDriver
from vmsnap_host.blocks import DiskBlocks
from vmsnap_host.checks import ContractViolation
from vmsnap_host.model import Claim, Group, GroupKind, Snapshot, SnapshotState
from vmsnap_sdk import VM, Capability, Priority, StorageDriver, TakeRequest, Volume
from vmsnap_sdk.blocks import BlockRange
from vmsnap_sdk.errors import FailedPrecondition, NotFound, Reason

DRIVER = "io.vmsnap.test.reference"


class _Manager:
    def __init__(self) -> None:
        self.snapshots: dict[str, Snapshot] = {}

    async def get_snapshot(self, snapshot_id: str) -> Snapshot:
        snap = self.snapshots.get(snapshot_id)
        if snap is None:
            raise NotFound(f"snapshot {snapshot_id} does not exist")
        return snap


class _Registry:
    def __init__(self, driver: StorageDriver, capabilities: frozenset[Capability]) -> None:
        self._driver = driver
        self._capabilities = capabilities

    def capabilities(self, name: str) -> frozenset[Capability]:
        return self._capabilities

    def driver(self, name: str) -> StorageDriver:
        return self._driver


async def _setup(
    driver: ReferenceDriver,
    capabilities: frozenset[Capability] = frozenset(Capability),
) -> DiskBlocks:
    manager = _Manager()
    volume = await driver.create_test_volume("v", 1 << 20)
    volume = Volume(disk="vda", locator=volume.locator)
    vm = VM(id="vm1", volumes=(volume,))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i, writes in enumerate([[(0, b"a" * 8192)], [(4096, b"b" * 4096), (65536, b"c" * 10)]]):
        for offset, data in writes:
            await driver.write_volume(volume.locator, offset, data)
        result = await driver.take_snapshot(TakeRequest(f"s{i}", vm, (volume,)))
        manager.snapshots[f"s{i}"] = Snapshot(
            id=f"s{i}",
            vm_id="vm1",
            name=f"s{i}",
            state=SnapshotState.READY,
            agent="sim",
            groups=(Group(GroupKind.DRIVER, DRIVER, (Claim("vda", Priority.PLUGIN, ""),), result),),
            create_time=start + timedelta(minutes=i),
        )
    return DiskBlocks(manager, _Registry(driver, capabilities))  # type: ignore[arg-type]


async def _ranges(blocks: DiskBlocks, *args: Any) -> list[BlockRange]:
    return [r for page in [p async for p in blocks.pages(*args)] for r in page.ranges]


async def test_a_good_delta_passes_page_by_page() -> None:
    blocks = await _setup(ReferenceDriver())
    want = [BlockRange(4096, 4096), BlockRange(65536, 4096)]
    assert await _ranges(blocks, "s1", "vda", "s0", 0, 1000) == want
    assert await _ranges(blocks, "s1", "vda", "s0", 0, 1) == want
    pages = [p async for p in blocks.pages("s1", "vda", "s0", 0, 1)]
    assert [len(p.ranges) for p in pages] == [1, 1]


async def test_unsorted_overlapping_ranges_are_a_contract_violation() -> None:
    blocks = await _setup(UnsortedRanges())
    with pytest.raises(ContractViolation) as caught:
        await _ranges(blocks, "s1", "vda", "s0", 0, 1000)
    assert caught.value.reason == Reason.DRIVER_CONTRACT_VIOLATION
    assert DRIVER in caught.value.message and "unsorted or overlaps" in caught.value.message


async def test_base_must_be_older_and_the_capability_offered() -> None:
    blocks = await _setup(ReferenceDriver())
    with pytest.raises(FailedPrecondition) as older:
        await _ranges(blocks, "s0", "vda", "s1", 0, 1000)
    assert older.value.reason == Reason.DELTA_BASE_MISMATCH
    with pytest.raises(NotFound):
        await _ranges(blocks, "s1", "vdb", "", 0, 1000)
    without = await _setup(ReferenceDriver(), frozenset({Capability.REVERT}))
    with pytest.raises(FailedPrecondition) as missing:
        await _ranges(without, "s1", "vda", "", 0, 1000)
    assert missing.value.reason == Reason.DRIVER_CAPABILITY_MISSING
