"""The SDK's server adapter never sends an answer over the contract's size limits.

A vendor's driver that returns a 5 MiB handle, 10 KiB of metadata or a
novel-length CanHandle reason gets INTERNAL naming the field and the limit in
its own tests (and a log line saying so), long before a host stores it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from vmsnap_sdk import (
    VM,
    Capability,
    DriverClient,
    DriverInfo,
    Operation,
    Page,
    Priority,
    ProbeResult,
    RevertRequest,
    RevertResult,
    Server,
    SnapshotPage,
    SnapshotResult,
    StorageDriver,
    TakeRequest,
    Volume,
    VolumeDecision,
    VolumeSnapshot,
    limits,
    start_driver_server,
)
from vmsnap_sdk import errors as e

VM1 = VM(id="vm-1", volumes=(Volume("vda", "x://1"), Volume("vdb", "x://2")))
TAKE = TakeRequest("snap-1", VM1, VM1.volumes)


def good_result(snapshot_id: str = "snap-1") -> SnapshotResult:
    return SnapshotResult(
        snapshot_id,
        tuple(VolumeSnapshot(v.disk, v.locator, f"{snapshot_id}@{v.disk}") for v in VM1.volumes),
        vm_id=VM1.id,
    )


class ShapedDriver(StorageDriver):
    """Answers whatever the test shaped: a result, decisions, labels, a page."""

    def __init__(self) -> None:
        self.result = good_result()
        self.reason = "x:// volume"
        self.labels: Mapping[str, str] = {"model": "test"}
        self.probe_message = ""
        self.page_token = ""
        self.raise_on_take: e.VMSnapError | None = None

    async def get_info(self) -> DriverInfo:
        return DriverInfo(
            name="io.vmsnap.test.shaped",
            vendor_version="0.0.1",
            capabilities=frozenset({Capability.REVERT, Capability.REVERT_UNDO, Capability.LIST}),
            labels=self.labels,
        )

    async def probe(self) -> ProbeResult:
        return ProbeResult(ready=not self.probe_message, message=self.probe_message)

    async def can_handle(
        self, vm: VM, volumes: Sequence[Volume], operation: Operation, options: Mapping[str, str]
    ) -> Sequence[VolumeDecision]:
        return [VolumeDecision(v.disk, Priority.PLUGIN, self.reason) for v in volumes]

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        if self.raise_on_take is not None:
            raise self.raise_on_take
        return self.result

    async def get_snapshot(self, vm_snapshot_id: str) -> SnapshotResult:
        return self.result

    async def revert_snapshot(self, request: RevertRequest) -> RevertResult:
        return RevertResult(undo=replace(self.result, vm_snapshot_id=request.undo_vm_snapshot_id))

    async def delete_snapshot(self, vm_snapshot_id: str, snapshot: SnapshotResult | None) -> None:
        return None

    async def list_snapshots(self, page: Page, vm_id: str = "") -> SnapshotPage:
        return SnapshotPage((self.result,), self.page_token)


@pytest.fixture
async def served(sockdir: Path) -> AsyncIterator[tuple[ShapedDriver, DriverClient]]:
    driver = ShapedDriver()
    server: Server = await start_driver_server(driver, f"unix://{sockdir}/d.sock", grace_seconds=0)
    client = DriverClient.connect(f"unix://{sockdir}/d.sock", timeout=10)
    yield driver, client
    await client.close()
    await server.stop(0)


def handle_of(size: int, char: str = "h") -> SnapshotResult:
    result = good_result()
    first = replace(result.volume_snapshots[0], handle=char * size)
    return replace(result, volume_snapshots=(first, *result.volume_snapshots[1:]))


OVER = {
    "5 MiB handle": (
        handle_of(5 << 20),
        "volume_snapshots[0].handle is 5242880 bytes; at most 1024",
    ),
    "group handle": (
        replace(good_result(), group_handle="g" * 2000),
        "group_handle is 2000 bytes; at most 1024",
    ),
    "metadata bytes": (
        replace(good_result(), metadata={f"k{i}": "v" * 100 for i in range(50)}),
        "metadata is",
    ),
    "metadata entries": (
        replace(good_result(), metadata={f"k{i}": "" for i in range(65)}),
        "metadata has 65 entries; at most 64",
    ),
    "metadata key": (
        replace(good_result(), metadata={"k" * 129: ""}),
        "metadata has a key of 129 bytes",
    ),
    # Bytes, not characters: 400 chars of 3 bytes each.
    "multi-byte handle": (
        handle_of(400, "€"),
        "volume_snapshots[0].handle is 1200 bytes; at most 1024",
    ),
}


@pytest.mark.parametrize("case", sorted(OVER))
async def test_a_result_over_the_limits_is_refused_naming_the_field(
    served: tuple[ShapedDriver, DriverClient], case: str, caplog: pytest.LogCaptureFixture
) -> None:
    driver, client = served
    driver.result, problem = OVER[case]
    caplog.set_level(logging.ERROR, "vmsnap.server")
    for call in (
        lambda: client.take_snapshot(TAKE),
        lambda: client.get_snapshot("snap-1"),
        lambda: client.list_snapshots(Page()),
        lambda: client.revert_snapshot(RevertRequest("snap-1", good_result(), VM1, True, "undo-1")),
    ):
        with pytest.raises(e.Internal) as caught:
            await call()
        assert problem in caught.value.message, caught.value.message
        assert "size limits" in caught.value.message
        assert caught.value.reason == "ANSWER_OVER_LIMITS"
        assert len(caught.value.message) <= limits.MAX_MESSAGE
    refused = [r for r in caplog.records if "size limits" in r.getMessage()]
    assert len(refused) == 4
    assert all(problem in str(r.__dict__.get("fields")) for r in refused)


async def test_a_result_at_the_limits_is_sent(served: tuple[ShapedDriver, DriverClient]) -> None:
    driver, client = served
    result = handle_of(limits.MAX_HANDLE_BYTES)
    driver.result = replace(
        result,
        group_handle="g" * limits.MAX_GROUP_HANDLE_BYTES,
        # 64 entries, 4096 bytes in all: 64 times (2-byte key + 62-byte value)
        metadata={f"{i:02}": "v" * 62 for i in range(limits.MAX_METADATA_ENTRIES)},
    )
    got = await client.take_snapshot(TAKE)
    assert got.volume_snapshots[0].handle == "h" * limits.MAX_HANDLE_BYTES
    assert sum(len(k) + len(v) for k, v in got.metadata.items()) == limits.MAX_METADATA_BYTES


async def test_a_long_can_handle_reason_is_refused(
    served: tuple[ShapedDriver, DriverClient],
) -> None:
    driver, client = served
    driver.reason = "r" * (limits.MAX_REASON + 1)
    with pytest.raises(e.Internal, match=r"decisions\[0\]\.reason is 1025 chars; at most 1024"):
        await client.can_handle(VM1, VM1.volumes, Operation.TAKE, {})
    driver.reason = "r" * limits.MAX_REASON
    decisions = await client.can_handle(VM1, VM1.volumes, Operation.TAKE, {})
    assert len(decisions[0].reason) == limits.MAX_REASON


async def test_huge_labels_are_refused(served: tuple[ShapedDriver, DriverClient]) -> None:
    driver, client = served
    driver.labels = {f"label-{i}": "l" * 1024 for i in range(10)}
    with pytest.raises(e.Internal, match="labels is 10"):
        await client.get_info()


async def test_a_long_page_token_is_refused(served: tuple[ShapedDriver, DriverClient]) -> None:
    driver, client = served
    driver.page_token = "t" * 2000
    with pytest.raises(e.Internal, match="next_page_token is 2000 chars"):
        await client.list_snapshots(Page())


async def test_long_error_and_probe_messages_are_cut_before_they_are_sent(
    served: tuple[ShapedDriver, DriverClient],
) -> None:
    driver, client = served
    driver.raise_on_take = e.Unavailable("array says: " + "z" * 100_000)
    with pytest.raises(e.Unavailable) as caught:
        await client.take_snapshot(TAKE)
    assert len(caught.value.message) == limits.MAX_MESSAGE
    assert caught.value.message.startswith("array says: zzz")
    rpc_error = caught.value.__cause__
    assert len(rpc_error.details() or "") == limits.MAX_MESSAGE  # type: ignore[union-attr]
    driver.probe_message = "p" * 5000
    probe = await client.probe()
    assert not probe.ready and len(probe.message) == limits.MAX_MESSAGE


class FixtureDriver(ShapedDriver):
    """A test-array driver whose fixture returns the volume the test shaped."""

    def __init__(self) -> None:
        super().__init__()
        self.disk = "vda"

    async def get_info(self) -> DriverInfo:
        info = await super().get_info()
        return replace(info, capabilities=info.capabilities | {Capability.CONFORMANCE_FIXTURE})

    async def create_test_volume(self, name: str, size_bytes: int) -> Volume:
        return Volume(self.disk, f"x://{name}", size_bytes)


async def test_a_fixture_volume_that_is_no_valid_input_is_refused(sockdir: Path) -> None:
    """A test volume must go back into the driver's RPCs as it is: a disk name that
    breaks the disk-name rule (upper case, dots) is refused by the SDK."""
    driver = FixtureDriver()
    server = await start_driver_server(driver, f"unix://{sockdir}/f.sock", grace_seconds=0)
    client = DriverClient.connect(f"unix://{sockdir}/f.sock", timeout=10)
    try:
        made = await client.create_test_volume("Data.Vol-1", 1 << 20)
        assert made.disk == "vda"
        driver.disk = "Data.Vol-1"
        with pytest.raises(e.Internal) as caught:
            await client.create_test_volume("Data.Vol-1", 1 << 20)
        assert caught.value.reason == "ANSWER_INVALID"
        assert "fixture_disk_name" in caught.value.message
    finally:
        await client.close()
        await server.stop(0)


def test_fixture_disk_name_obeys_the_disk_name_rule() -> None:
    from vmsnap_sdk import fixture_disk_name

    for name in ("Data.Vol-1", "A", "x" * 63, "9.a_B-c"):
        assert re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", fixture_disk_name(name)), name
