"""The SolidFire driver through its RPCs: driver and Element emulator as real processes."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest

from tests.drivers.conftest import DriverProcess, run_driver
from vmsnap_emulators.testing import EmulatorProcess, start_emulator
from vmsnap_sdk import (
    VM,
    Capability,
    Consistency,
    DriverClient,
    Operation,
    Page,
    Priority,
    RevertRequest,
    TakeRequest,
    VMState,
    Volume,
)
from vmsnap_sdk.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    Unavailable,
    VMSnapError,
)

MIB = 1 << 20
_R = TypeVar("_R")


def _id(prefix: str = "snap") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def client(solidfire_driver: DriverProcess) -> AsyncIterator[DriverClient]:
    c = DriverClient.connect(solidfire_driver.address, timeout=30)
    yield c
    await c.close()


async def _volumes(client: DriverClient, count: int) -> list[Volume]:
    made = []
    for i in range(count):
        v = await client.create_test_volume(_id(f"t{i}"), MIB)
        made.append(Volume(f"vd{chr(ord('a') + i)}", v.locator, v.size_bytes))
    return made


async def test_the_fixtures_volume_is_a_valid_input_as_it_is(client: DriverClient) -> None:
    """A test volume goes back into CanHandle and a take unchanged: its disk obeys
    the disk-name rule (1..63 chars of [a-z0-9_-]) whatever the volume's name."""
    made = await client.create_test_volume(_id("Data-Vol"), MIB)
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", made.disk), made.disk
    vm = VM(id=_id("vm"), state=VMState.STOPPED, volumes=(made,))
    decisions = await client.can_handle(vm, vm.volumes, Operation.TAKE, {})
    assert [d.priority for d in decisions] == [Priority.PLUGIN]
    result = await client.take_snapshot(TakeRequest(_id(), vm, vm.volumes))
    assert [s.disk for s in result.volume_snapshots] == [made.disk]
    await client.delete_snapshot(result.vm_snapshot_id, result)
    await client.delete_test_volume(made.locator)


async def test_identity_capabilities_and_probe(client: DriverClient) -> None:
    info = await client.get_info()
    assert info.name == "com.netapp.solidfire"
    assert info.contract_versions == ("v1",)
    assert info.capabilities == {
        Capability.REVERT,
        Capability.REVERT_UNDO,
        Capability.CONSISTENT_GROUP,
        Capability.LIST,
        Capability.LIST_UNMANAGED,
        Capability.CONFORMANCE_FIXTURE,
        Capability.CLONE_VOLUMES,
        Capability.CHANGED_BLOCKS,
        Capability.READ_SNAPSHOT,
    }
    assert info.limits.max_snapshots_per_volume == 32
    probe = await client.probe()
    assert probe.ready, probe.message
    assert "vmsnap-element" in probe.message


async def test_can_handle_claims_its_own_cluster_only(client: DriverClient) -> None:
    vm = VM(
        id="vm-ch",
        volumes=(
            Volume("vda", "element://vmsnap-element/7"),
            Volume("vdb", "element://other-cluster/7"),
            Volume("vdc", "ontap://svm0/vol/disk.img"),
        ),
    )
    decisions = await client.can_handle(vm, vm.volumes, Operation.TAKE, {})
    assert [d.priority for d in decisions] == [
        Priority.PLUGIN,
        Priority.CANT_HANDLE,
        Priority.CANT_HANDLE,
    ]
    assert "other-cluster" in decisions[1].reason
    assert "element://" in decisions[2].reason


async def test_write_take_write_revert_reads_the_first_bytes_back(client: DriverClient) -> None:
    vols = await _volumes(client, 2)
    vm = VM(id=_id("vm"), state=VMState.STOPPED, volumes=tuple(vols))
    pattern_a = [bytes([0xA0 + i]) * 8192 for i in range(2)]
    pattern_b = [bytes([0xB0 + i]) * 8192 for i in range(2)]
    for v, data in zip(vols, pattern_a, strict=True):
        await client.write_volume(v.locator, 4096, data)

    take = TakeRequest(_id(), vm, tuple(vols), vm_snapshot_name="before the upgrade")
    result = await client.take_snapshot(take)
    assert [s.disk for s in result.volume_snapshots] == ["vda", "vdb"]
    assert all(s.handle for s in result.volume_snapshots)
    assert result.group_handle
    assert result.consistency is Consistency.CRASH
    assert not result.needs_unquiesce
    assert result.ready
    assert result.vm_id == vm.id
    assert result.create_time is not None

    # The idempotent retry returns the same handles; Get returns the same result.
    again = await client.take_snapshot(take)
    assert again.volume_snapshots == result.volume_snapshots
    reordered = await client.take_snapshot(
        TakeRequest(take.vm_snapshot_id, vm, tuple(reversed(vols)))
    )
    assert reordered.volume_snapshots == tuple(reversed(result.volume_snapshots))
    assert again.group_handle == result.group_handle
    assert (await client.get_snapshot(take.vm_snapshot_id)).group_handle == result.group_handle

    for v, data in zip(vols, pattern_b, strict=True):
        await client.write_volume(v.locator, 4096, data)

    undo_id = _id("undo")
    reverted = await client.revert_snapshot(
        RevertRequest(take.vm_snapshot_id, result, vm, True, undo_id)
    )
    for v, data in zip(vols, pattern_a, strict=True):
        assert await client.read_volume(v.locator, 4096, len(data)) == data
    assert reverted.undo is not None
    assert reverted.undo.vm_snapshot_id == undo_id
    assert reverted.undo.group_handle != result.group_handle
    # Retrying the revert does not roll back again nor make a second undo.
    retried = await client.revert_snapshot(
        RevertRequest(take.vm_snapshot_id, result, vm, True, undo_id)
    )
    assert retried.undo is not None
    assert retried.undo.group_handle == reverted.undo.group_handle

    # The undo holds pattern B: reverting to it brings B back.
    await client.revert_snapshot(RevertRequest(undo_id, reverted.undo, vm))
    for v, data in zip(vols, pattern_b, strict=True):
        assert await client.read_volume(v.locator, 4096, len(data)) == data

    # Delete by id alone (no handles), twice: both fine.
    for snapshot_id in (take.vm_snapshot_id, undo_id):
        await client.delete_snapshot(snapshot_id, None)
        await client.delete_snapshot(snapshot_id, None)
    with pytest.raises(NotFound):
        await client.get_snapshot(take.vm_snapshot_id)
    with pytest.raises(NotFound):
        await client.revert_snapshot(RevertRequest(take.vm_snapshot_id, result, vm))
    for v in vols:
        await client.delete_test_volume(v.locator)
        await client.delete_test_volume(v.locator)


async def test_errors_come_back_with_the_documented_codes(client: DriverClient) -> None:
    vols = await _volumes(client, 2)
    vm = VM(id=_id("vm"), state=VMState.STOPPED, volumes=tuple(vols))
    unknown = Volume("vdz", "element://vmsnap-element/987654")
    with pytest.raises(NotFound):
        await client.take_snapshot(TakeRequest(_id(), vm, (unknown,)))
    with pytest.raises(NotFound):
        await client.take_snapshot(
            TakeRequest(_id(), vm, (Volume("vdy", "element://elsewhere/1"),))
        )

    taken = TakeRequest(_id(), vm, (vols[0],))
    await client.take_snapshot(taken)
    with pytest.raises(AlreadyExists):
        await client.take_snapshot(TakeRequest(taken.vm_snapshot_id, vm, tuple(vols)))

    running = VM(id=vm.id, state=VMState.RUNNING, volumes=vm.volumes)
    snapshot = await client.get_snapshot(taken.vm_snapshot_id)
    with pytest.raises(FailedPrecondition):
        await client.revert_snapshot(RevertRequest(taken.vm_snapshot_id, snapshot, running))
    await client.delete_snapshot(taken.vm_snapshot_id, snapshot)


async def test_list_pages_in_a_stable_order_and_filters_by_vm(client: DriverClient) -> None:
    vols = await _volumes(client, 1)
    vm_a = VM(id=_id("vma"), volumes=tuple(vols))
    vm_b = VM(id=_id("vmb"), volumes=tuple(vols))
    ids_a = [_id("la") for _ in range(3)]
    for sid in ids_a:
        await client.take_snapshot(TakeRequest(sid, vm_a, tuple(vols)))
    id_b = _id("lb")
    await client.take_snapshot(TakeRequest(id_b, vm_b, tuple(vols)))

    seen: list[str] = []
    token = ""
    while True:
        page = await client.list_snapshots(Page(size=2, token=token), vm_id=vm_a.id)
        assert len(page.snapshots) <= 2
        seen += [s.vm_snapshot_id for s in page.snapshots]
        token = page.next_token
        if not token:
            break
    assert seen == ids_a
    everything = await client.list_snapshots(Page(size=1000))
    assert {id_b, *ids_a} <= {s.vm_snapshot_id for s in everything.snapshots}
    for sid in [*ids_a, id_b]:
        await client.delete_snapshot(sid, None)


async def test_snapshot_limit_is_resource_exhausted(tmp_path: Path) -> None:
    with (
        start_emulator(
            "element",
            tmp_path / "el",
            extra_args=["--max-snapshots-per-volume", "2"],
            durable=False,
        ) as emu,
        run_driver("solidfire", emu, "--conformance-fixture") as driver,
    ):
        client = DriverClient.connect(driver.address, timeout=30)
        try:
            vols = await _volumes(client, 1)
            vm = VM(id="vm-limit", volumes=tuple(vols))
            for _ in range(2):
                await client.take_snapshot(TakeRequest(_id(), vm, tuple(vols)))
            with pytest.raises(ResourceExhausted) as caught:
                await client.take_snapshot(TakeRequest(_id(), vm, tuple(vols)))
            assert "xMaxSnapshotsPerVolumeExceeded" in caught.value.message
        finally:
            await client.close()


async def test_stopped_array_is_unavailable_and_bad_credentials_say_so(tmp_path: Path) -> None:
    """Also: the password appears in no error message and no line of the driver's log."""
    errors: list[VMSnapError] = []
    with start_emulator("element", tmp_path / "el", durable=False) as emu:
        wrong = EmulatorProcess(
            "element", emu.data_dir, user=emu.user, password="Wr0ng-" + emu.password
        )
        wrong.info = emu.info
        with run_driver("solidfire", wrong, "--cluster", "vmsnap-element") as driver:
            client = DriverClient.connect(driver.address, timeout=30)
            vm = VM(id="vm-creds", volumes=(Volume("vda", "element://vmsnap-element/1"),))
            with pytest.raises(FailedPrecondition) as caught:
                await client.take_snapshot(TakeRequest(_id(), vm, vm.volumes))
            assert "credentials" in caught.value.message
            errors.append(caught.value)
            probe = await client.probe()
            assert not probe.ready and "credentials" in probe.message
            await client.close()
            assert wrong.password not in driver.log()

        with run_driver("solidfire", emu, "--conformance-fixture") as driver:
            client = DriverClient.connect(driver.address, timeout=30)
            vols = await _volumes(client, 1)
            vm = VM(id="vm-down", volumes=tuple(vols))
            emu.stop()
            with pytest.raises(Unavailable) as down:
                await client.take_snapshot(TakeRequest(_id(), vm, tuple(vols)))
            errors.append(down.value)
            with pytest.raises(Unavailable) as down_delete:
                await client.delete_snapshot(_id(), None)
            errors.append(down_delete.value)
            probe = await client.probe()
            assert not probe.ready
            assert "cannot reach" in probe.message
            info = await client.get_info()
            assert emu.password not in repr(info), "credentials must never reach the host"

            # The array comes back (same address): the driver works again by itself.
            emu.start(port=emu.port)
            assert (await client.probe()).ready
            again = await client.take_snapshot(TakeRequest(_id(), vm, tuple(vols)))
            await client.delete_snapshot(again.vm_snapshot_id, again)
            await client.close()
            log = driver.log()
            assert log, "the driver logged nothing"
            assert emu.password not in log
    for error in errors:
        assert emu.password not in error.message
        assert emu.password not in str(error.metadata)


async def test_concurrent_retries_of_one_take_make_one_snapshot(client: DriverClient) -> None:
    vols = await _volumes(client, 2)
    vm = VM(id=_id("vm"), volumes=tuple(vols))
    take = TakeRequest(_id(), vm, tuple(vols), quiesced=True)
    results = await asyncio.gather(*(client.take_snapshot(take) for _ in range(3)))
    assert len({r.volume_snapshots for r in results}) == 1
    listed = await client.list_snapshots(Page(size=1000), vm_id=vm.id)
    assert [s.vm_snapshot_id for s in listed.snapshots] == [take.vm_snapshot_id]
    await client.delete_snapshot(take.vm_snapshot_id, None)
    assert (await client.list_snapshots(Page(size=1000), vm_id=vm.id)).snapshots == ()


class _SlowElement:
    """The Element calls of a take and a clone, as the SDK's client makes them, on
    lists kept here; ``held`` ("create" or "clone") waits for ``gate`` first: a
    vendor call still running after its caller's deadline."""

    def __init__(self, held: str) -> None:
        self.held = held
        self.gate = threading.Event()
        self.groups: list[Any] = []
        self.volumes: list[Any] = []

    def __call__(self) -> _SlowElement:  # ElementArray._connect
        return self

    def list_group_snapshots(self, **_: Any) -> Any:
        return SimpleNamespace(group_snapshots=list(self.groups))

    def create_group_snapshot(self, volumes: list[int], name: str, attributes: Any) -> Any:
        if self.held == "create":
            self.gate.wait(10)
        group = SimpleNamespace(
            group_snapshot_id=len(self.groups) + 1,
            group_snapshot_uuid=f"uuid-{len(self.groups) + 1}",
            create_time="2026-12-01T12:00:00Z",
            name=name,
            attributes=attributes,
            members=[
                SimpleNamespace(volume_id=v, snapshot_id=100 + v, total_size=1 << 20)
                for v in volumes
            ],
        )
        self.groups.append(group)
        return SimpleNamespace(group_snapshot_id=group.group_snapshot_id, group_snapshot=group)

    def list_volumes(self, **_: Any) -> Any:
        return SimpleNamespace(volumes=list(self.volumes))

    def list_deleted_volumes(self, **_: Any) -> Any:
        return SimpleNamespace(volumes=[])

    def clone_multiple_volumes(self, params: list[Any], group_snapshot_id: int) -> Any:
        if self.held == "clone":
            self.gate.wait(10)
        for p in params:
            self.volumes.append(
                SimpleNamespace(
                    volume_id=1000 + len(self.volumes),
                    total_size=1 << 20,
                    name=p.name,
                    attributes=p.attributes,
                )
            )
        return SimpleNamespace(async_handle=7, group_clone_id=len(self.volumes))

    def get_async_result(self, handle: int, keep_result: bool) -> Any:
        return {"status": "complete"}


def _driver_on(element: _SlowElement) -> Any:
    from vmsnap_driver_solidfire._array import ElementArray
    from vmsnap_driver_solidfire._config import Config
    from vmsnap_driver_solidfire._driver import SolidFireDriver
    from vmsnap_sdk.toolkit.secrets import Secret

    config = Config(host="element.invalid", port=443, user="u", password=Secret("p"), cluster="c1")
    array = ElementArray(config)
    array._connect = element  # type: ignore[method-assign]
    return SolidFireDriver(config, array=array)


async def _abandoned_then_retried(
    element: _SlowElement, method: str, call: Callable[[], Awaitable[_R]]
) -> _R:
    """``call`` under a 50 ms deadline (DEADLINE_EXCEEDED, its vendor call left
    running), then again; the held vendor call is let go once the retry is in."""
    from vmsnap_sdk._context import CallContext, _reset_call, _set_call
    from vmsnap_sdk.errors import DeadlineExceeded

    token = _set_call(CallContext(method, deadline=time.monotonic() + 0.05))
    try:
        with pytest.raises(DeadlineExceeded):
            await call()
    finally:
        _reset_call(token)
    retry = asyncio.ensure_future(call())
    await asyncio.sleep(0.2)  # the retry is in; the first call still runs
    element.gate.set()
    return await asyncio.wait_for(retry, 10)


VOLS = (Volume("vda", "element://c1/1"), Volume("vdb", "element://c1/2"))


async def test_a_take_abandoned_at_its_deadline_is_not_made_twice_by_its_retry() -> None:
    """A take whose caller's deadline passes while the array still creates its group
    snapshot: the retry waits for that creation to end and answers it, instead of
    finding nothing yet and creating a second group snapshot (Element names need
    not be unique). Seen once in CI as the conformance check
    deadlines.short_take_converges listing one snapshot twice."""
    element = _SlowElement("create")
    driver = _driver_on(element)
    take = TakeRequest("snap-1", VM(id="vm-1", volumes=VOLS), VOLS, quiesced=True)
    result = await _abandoned_then_retried(
        element, "TakeVMSnapshot", lambda: driver.take_snapshot(take)
    )
    assert len(element.groups) == 1, [g.group_snapshot_id for g in element.groups]
    assert [s.handle for s in result.volume_snapshots] == ["101", "102"]


async def test_a_clone_abandoned_at_its_deadline_is_not_made_twice_by_its_retry() -> None:
    """The same race for CloneVolumes: the caller's deadline passes while the array
    still runs CloneMultipleVolumes. The retry must wait for it and answer its
    volumes, not find none yet and clone a second set (a volume per disk leaked,
    tagged with the same clone id)."""
    from vmsnap_sdk import CloneRequest, CloneTarget

    element = _SlowElement("clone")
    driver = _driver_on(element)
    taken = await driver.take_snapshot(
        TakeRequest("snap-1", VM(id="vm-1", volumes=VOLS), VOLS, quiesced=True)
    )
    clone = CloneRequest(
        clone_id="clone-1",
        vm_snapshot_id="snap-1",
        snapshot=taken,
        new_vm_id="vm-2",
        targets=(CloneTarget("vda", "vm-2-vda"), CloneTarget("vdb", "vm-2-vdb")),
    )
    made = await _abandoned_then_retried(
        element, "CloneVolumes", lambda: driver.clone_volumes(clone)
    )
    assert len(element.volumes) == 2, [v.name for v in element.volumes]
    assert sorted(v.locator for v in made) == ["element://c1/1000", "element://c1/1001"]
