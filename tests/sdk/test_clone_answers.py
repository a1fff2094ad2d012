"""The SDK's adapter for CloneVolumes: requests are validated before the driver
sees them, and an answer the host could not define a VM with is refused
(INTERNAL, ANSWER_INVALID) in the vendor's own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import pytest

from vmsnap_sdk import (
    VM,
    CloneRequest,
    CloneTarget,
    DriverClient,
    DriverInfo,
    Operation,
    Server,
    SnapshotResult,
    StorageDriver,
    TakeRequest,
    Volume,
    VolumeDecision,
    VolumeSnapshot,
    start_driver_server,
)
from vmsnap_sdk import errors as e

SNAP = SnapshotResult(
    "snap-1",
    (VolumeSnapshot("vda", "x://1", "h1"), VolumeSnapshot("vdb", "x://2", "h2")),
    vm_id="vm-1",
)


class Cloner(StorageDriver):
    """Answers with whatever volumes the test set; records what it was asked."""

    def __init__(self) -> None:
        self.answer: list[Volume] = []
        self.asked: list[CloneRequest] = []

    async def get_info(self) -> DriverInfo:
        return DriverInfo(name="io.vmsnap.test.cloner", vendor_version="1.0.0")

    async def can_handle(
        self, vm: VM, volumes: Sequence[Volume], operation: Operation, options: Mapping[str, str]
    ) -> Sequence[VolumeDecision]:
        return []

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        raise e.Unimplemented("not used")

    async def delete_snapshot(self, vm_snapshot_id: str, snapshot: SnapshotResult | None) -> None:
        return None

    async def clone_volumes(self, request: CloneRequest) -> Sequence[Volume]:
        self.asked.append(request)
        return self.answer


@pytest.fixture
async def served(sockdir: Path) -> AsyncIterator[tuple[Cloner, DriverClient]]:
    driver = Cloner()
    address = f"unix://{sockdir}/cloner.sock"
    server: Server = await start_driver_server(driver, address, grace_seconds=0)
    client = DriverClient.connect(address, timeout=10)
    try:
        yield driver, client
    finally:
        await client.close()
        await server.stop(0)


def _request(*targets: CloneTarget, clone_id: str = "c-1") -> CloneRequest:
    return CloneRequest(clone_id, "snap-1", SNAP, "new-vm", targets)


async def test_a_valid_answer_passes_and_the_driver_sees_the_request(
    served: tuple[Cloner, DriverClient],
) -> None:
    driver, client = served
    driver.answer = [Volume("vda", "x://new-1", 5)]
    made = await client.clone_volumes(_request(CloneTarget("vda", "new-vm-vda")))
    assert made == [Volume("vda", "x://new-1", 5)]
    assert driver.asked[0].targets == (CloneTarget("vda", "new-vm-vda"),)
    assert driver.asked[0].snapshot.volume_snapshots == SNAP.volume_snapshots


@pytest.mark.parametrize(
    ("targets", "field"),
    [
        ((), "targets"),
        ((CloneTarget("vdz", "n"),), "targets[0].disk"),
        ((CloneTarget("vda", "n"), CloneTarget("vda", "m")), "targets[1].disk"),
        ((CloneTarget("vda", "bad_name"),), "targets[0].name"),
    ],
)
async def test_bad_targets_are_invalid_argument_naming_the_field(
    served: tuple[Cloner, DriverClient], targets: tuple[CloneTarget, ...], field: str
) -> None:
    driver, client = served
    with pytest.raises(e.InvalidArgument) as refused:
        await client.clone_volumes(_request(*targets))
    assert [f for f, _ in refused.value.field_violations] == [field]
    assert driver.asked == []


@pytest.mark.parametrize(
    "answer",
    [
        [],  # none for the target
        [Volume("vdb", "x://new-2")],  # another disk
        [Volume("vda", "not-a-uri")],  # no locator the host could use
    ],
)
async def test_an_answer_that_is_no_valid_set_of_volumes_is_refused(
    served: tuple[Cloner, DriverClient], answer: list[Volume]
) -> None:
    driver, client = served
    driver.answer = answer
    with pytest.raises(e.Internal) as refused:
        await client.clone_volumes(_request(CloneTarget("vda", "new-vm-vda")))
    assert refused.value.reason == "ANSWER_INVALID"


async def test_a_driver_without_the_capability_answers_unimplemented(
    sockdir: Path,
) -> None:
    class Plain(Cloner):
        clone_volumes = StorageDriver.clone_volumes  # type: ignore[assignment]

    address = f"unix://{sockdir}/plain.sock"
    server = await start_driver_server(Plain(), address, grace_seconds=0)
    client = DriverClient.connect(address, timeout=10)
    try:
        with pytest.raises(e.Unimplemented):
            await client.clone_volumes(_request(CloneTarget("vda", "n")))
        with pytest.raises(e.Unimplemented):
            await client.delete_cloned_volumes("c-1")
    finally:
        await client.close()
        await server.stop(0)
