"""Two-way reconciliation: each rule caught on a fault planted on in-process peers.

The catalog is the real store; drivers are the test fakes and the agent the sim
agent, as objects behind the real registry (its guard included). Records are
planted straight into the catalog (the executor is not involved), objects
straight onto the peers, and the reconciler's clock is moved by hand.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.driver import FakeDriver, Options
from vmsnap_agent.sim import SimAgent, frozen
from vmsnap_host.config import ConfigError, Settings, parse
from vmsnap_host.model import (
    Claim,
    Group,
    GroupKind,
    KeptState,
    OperationRecord,
    OperationType,
    Snapshot,
    SnapshotState,
)
from vmsnap_host.reconcile import Action, Kind, Reconciler, Report
from vmsnap_host.registry import Registry
from vmsnap_host.store import Store
from vmsnap_host.store import store as store_module
from vmsnap_sdk import (
    VM,
    Capability,
    Page,
    Priority,
    QuiesceMethod,
    SnapshotPage,
    SnapshotResult,
    TakeRequest,
    Volume,
    VolumeSnapshot,
)
from vmsnap_sdk.errors import Unavailable

A = "io.vmsnap.test.a"
B = "io.vmsnap.test.b"
AGENT = "sim-1"
GRACE = 300.0
DISK_A = Volume("vda", "a://pool/1")
DISK_B = Volume("vdb", "b://pool/2")


def new_id() -> str:
    return uuid.uuid4().hex


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Bench:
    store: Store
    registry: Registry
    agent: SimAgent
    agent_dir: Path
    a: FakeDriver
    b: FakeDriver
    clock: Clock
    reconciler: Reconciler

    def with_settings(self, **settings: Any) -> Reconciler:
        base = Settings(orphan_grace_seconds=GRACE, call_timeout_seconds=0.5)
        return Reconciler(
            self.store, self.registry, replace(base, **settings), "test-host", clock=self.clock
        )

    async def plant(
        self,
        state: SnapshotState,
        *,
        vm_id: str = "vm1",
        groups: tuple[Group, ...] = (),
        snapshot_id: str = "",
        done: bool = True,
        operation_id: str = "",
    ) -> str:
        """A catalog record in ``state`` with the operation that made it."""
        sid = snapshot_id or new_id()
        snap = Snapshot(
            id=sid, vm_id=vm_id, name=f"n-{sid[:8]}", state=state, agent=AGENT, groups=groups
        )
        op = OperationRecord(
            id=operation_id or new_id(),
            type=OperationType.CREATE,
            vm_id=vm_id,
            vm_snapshot_id=sid,
            request_id=new_id(),
            done=done,
        )
        await self.store.write(self.store.w_create(snap, op))
        return sid

    async def put(self, driver: FakeDriver, object_id: str, vm_id: str = "vm1") -> SnapshotResult:
        """An object on a fake driver, as a take of that id would leave it."""
        disk = DISK_A if driver is self.a else DISK_B
        return await driver.take_snapshot(
            TakeRequest(vm_snapshot_id=object_id, vm=VM(id=vm_id), volumes=(disk,))
        )

    async def vm(self, vm_id: str = "vm1") -> None:
        if vm_id not in {v.id for v in (await self.agent.list_vms(Page())).vms}:
            await self.agent.define_vm(VM(id=vm_id, name=vm_id, volumes=(DISK_A,), memory_mib=64))
            await self.agent.start_vm(vm_id)

    async def native(self, object_id: str, vm_id: str = "vm1") -> None:
        await self.vm(vm_id)
        await self.agent.take_native_snapshot(vm_id, object_id, [], False)

    async def natives(self) -> set[str]:
        return {n.snapshot_id for n in await self.agent.list_native_snapshots("")}

    def kept_rows(self, kind: Kind, action: Action | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.store.findings(10_000)
            if r["kind"] == kind.value and (action is None or r["action"] == action.value)
        ]


def group(kind: GroupKind, owner: str, snapshot_id: str, disk: Volume = DISK_A) -> Group:
    result = SnapshotResult(
        snapshot_id,
        (VolumeSnapshot(disk.disk, disk.locator, f"{snapshot_id}@{disk.disk}"),),
        vm_id="vm1",
    )
    return Group(kind, owner, (Claim(disk.disk, Priority.PLUGIN, ""),), result)


def found(report: Report, kind: Kind, action: Action) -> list[str]:
    """Object ids of the report's findings of that kind and action."""
    return [
        f.object_id for f in report.findings if f.kind == kind.value and f.action == action.value
    ]


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    store = Store.open_sqlite(tmp_path / "catalog.db")
    registry = Registry(call_timeout=2.0)
    a = FakeDriver(Options(name=A, scheme="a"))
    b = FakeDriver(Options(name=B, scheme="b"))
    await registry.add_driver("in-process-a", driver=a)
    await registry.add_driver("in-process-b", driver=b, order=1)
    agent = SimAgent(tmp_path / "agent", name=AGENT)
    await agent.start()
    await registry.add_agent("in-process-agent", agent=agent)
    clock = Clock()
    settings = Settings(orphan_grace_seconds=GRACE, call_timeout_seconds=0.5)
    reconciler = Reconciler(store, registry, settings, "test-host", clock=clock)
    try:
        yield Bench(store, registry, agent, tmp_path / "agent", a, b, clock, reconciler)
    finally:
        await agent.close()
        await registry.close()
        store.close()


# --- orphans ---------------------------------------------------------------------------


async def test_an_orphan_older_than_the_grace_period_is_deleted_and_reported(bench: Bench) -> None:
    failed = await bench.plant(SnapshotState.ERROR)
    await bench.put(bench.a, failed)  # a compensation that never reached the array
    removed = await bench.plant(SnapshotState.REMOVED)
    await bench.native(removed)  # a delete the agent acknowledged but did not do
    ready = await bench.plant(SnapshotState.READY, groups=(group(GroupKind.DRIVER, A, ""),))
    await bench.put(bench.a, ready)
    safety = f"{ready}-keep-0a1b2c3d"  # a revert's safety copy whose kept state is gone
    await bench.put(bench.b, safety)

    first = await bench.reconciler.run_once()
    assert sorted(found(first, Kind.ORPHAN, Action.KEPT)) == sorted([failed, removed, safety])
    bench.clock.now += 10
    await bench.reconciler.run_once()
    assert {failed, ready} <= set(bench.a.snapshots) and safety in bench.b.snapshots
    assert removed in await bench.natives()
    # Seen again and again, a young orphan is kept once in the catalog, not once a pass.
    assert (
        len([r for r in bench.kept_rows(Kind.ORPHAN, Action.KEPT) if r["object_id"] == failed]) == 1
    )

    bench.clock.now += GRACE
    report = await bench.reconciler.run_once()
    assert sorted(found(report, Kind.ORPHAN, Action.DELETED)) == sorted([failed, removed, safety])
    assert set(bench.a.snapshots) == {ready}
    assert bench.b.snapshots == {}
    assert removed not in await bench.natives()
    by_object = {f.object_id: f for f in report.of_kind(Kind.ORPHAN)}
    assert by_object[failed].peer == A and by_object[failed].vm_snapshot_id == failed
    assert "ERROR" in by_object[failed].detail
    assert by_object[safety].vm_snapshot_id == ready and by_object[safety].peer == B
    assert by_object[removed].peer == AGENT and by_object[removed].vm_id == "vm1"
    kept = {r["object_id"] for r in bench.kept_rows(Kind.ORPHAN, Action.DELETED)}
    assert kept == {failed, removed, safety}


async def test_the_create_time_counts_when_the_peer_gives_one(bench: Bench) -> None:
    with_time = await bench.plant(SnapshotState.ERROR)
    await bench.native(with_time)  # the sim agent reports when it made the snapshot
    without_time = await bench.plant(SnapshotState.ERROR)
    await bench.put(bench.a, without_time)  # the fake driver reports no create time

    bench.clock.now += GRACE + 1
    report = await bench.reconciler.run_once()

    assert found(report, Kind.ORPHAN, Action.DELETED) == [with_time]
    # Without a create time an object must be seen orphaned for the grace period first.
    assert found(report, Kind.ORPHAN, Action.KEPT) == [without_time]
    assert without_time in bench.a.snapshots


async def test_a_young_orphan_is_kept(bench: Bench) -> None:
    young = await bench.plant(SnapshotState.ERROR)
    await bench.native(young)
    bench.clock.now += GRACE - 5
    report = await bench.reconciler.run_once()
    assert found(report, Kind.ORPHAN, Action.KEPT) == [young]
    assert young in await bench.natives()
    (finding,) = report.of_kind(Kind.ORPHAN)
    assert "host.orphan_grace_seconds" in finding.detail


async def test_objects_of_live_snapshots_and_kept_states_are_never_touched(bench: Bench) -> None:
    live = {}
    for state in (
        SnapshotState.ALLOCATED,
        SnapshotState.CREATING,
        SnapshotState.READY,
        SnapshotState.REVERTING,
        SnapshotState.EXPUNGING,
    ):
        sid = new_id()
        groups = (group(GroupKind.DRIVER, A, sid),)
        live[state] = await bench.plant(state, snapshot_id=sid, groups=groups, done=False)
        await bench.put(bench.a, sid)
        await bench.native(sid)
    ready = live[SnapshotState.READY]
    kept_id = f"{ready}-keep-77777777"
    await bench.store.write(
        bench.store.w_keep(KeptState(kept_id, B, GroupKind.DRIVER, "op-revert", "vm1", ready))
    )
    await bench.put(bench.b, kept_id)
    # A revert in flight: its safety copy may exist before (old executors) its row.
    reverting_copy = f"{live[SnapshotState.REVERTING]}-keep-12345678"
    await bench.put(bench.b, reverting_copy)
    before_a, before_b, before_native = (
        set(bench.a.snapshots),
        set(bench.b.snapshots),
        await bench.natives(),
    )

    for _ in range(2):
        bench.clock.now += 100 * GRACE
        report = await bench.reconciler.run_once()
        assert report.of_kind(Kind.ORPHAN) == []

    assert set(bench.a.snapshots) == before_a
    assert set(bench.b.snapshots) == before_b == {kept_id, reverting_copy}
    assert await bench.natives() == before_native
    assert not [c for c in bench.a.calls + bench.b.calls if c[0] == "delete"]


async def test_objects_this_catalog_never_recorded_are_left_alone(bench: Bench) -> None:
    elsewhere = new_id()  # another installation sharing the array
    await bench.put(bench.a, elsewhere, vm_id="their-vm")
    by_hand = "manual-backup-2024"
    await bench.native(by_hand, vm_id="vm-admin")
    mismatch = await bench.plant(SnapshotState.ERROR, vm_id="vm1")
    await bench.put(bench.b, mismatch, vm_id="vm-of-someone-else")  # same id, other VM

    for _ in range(2):
        bench.clock.now += 100 * GRACE
        report = await bench.reconciler.run_once()

    assert elsewhere in bench.a.snapshots and mismatch in bench.b.snapshots
    assert by_hand in await bench.natives()
    assert report.of_kind(Kind.ORPHAN) == []
    foreign = {f.peer: f for f in report.of_kind(Kind.FOREIGN)}
    assert set(foreign) == {A, B, AGENT}
    assert all(f.action == Action.KEPT.value for f in foreign.values())
    assert elsewhere in foreign[A].detail and "1 objects" in foreign[A].detail


# --- dry run -----------------------------------------------------------------------------


async def test_a_dry_run_changes_nothing_and_says_what_it_would_do(bench: Bench) -> None:
    orphan = await bench.plant(SnapshotState.ERROR)
    await bench.put(bench.a, orphan)
    gone = await bench.plant(SnapshotState.READY, groups=(group(GroupKind.DRIVER, A, ""),))
    op_done = await _finished_operation(bench)
    await bench.vm("vm-frozen")
    await bench.agent.quiesce("vm-frozen", QuiesceMethod.OVERLAY, 600, False, op_done)

    await bench.reconciler.run_once(dry_run=True)
    bench.clock.now += GRACE + 1
    report = await bench.reconciler.run_once(dry_run=True)

    assert report.dry_run
    assert found(report, Kind.ORPHAN, Action.WOULD_DELETE) == [orphan]
    assert found(report, Kind.MISSING, Action.WOULD_MARK) == [gone]
    assert [f.vm_id for f in report.of_kind(Kind.STALE_FREEZE)] == ["vm-frozen"]
    assert report.of_kind(Kind.STALE_FREEZE)[0].action == Action.WOULD_THAW.value
    assert orphan in bench.a.snapshots
    snap = bench.store.get_snapshot(gone)
    assert snap is not None and snap.missing == ""
    assert frozen(bench.agent_dir, "vm-frozen")
    assert not [c for c in bench.a.calls if c[0] == "delete"]
    recorded = {(r["kind"], r["action"]) for r in bench.store.findings()}
    assert {
        ("ORPHAN", "WOULD_DELETE"),
        ("MISSING", "WOULD_MARK"),
        ("STALE_FREEZE", "WOULD_THAW"),
    } <= recorded


# --- READY snapshots whose objects vanished ------------------------------------------------


async def test_a_ready_snapshot_whose_object_vanished_is_marked_and_cleared_when_back(
    bench: Bench,
) -> None:
    sid = new_id()
    await bench.plant(
        SnapshotState.READY,
        snapshot_id=sid,
        groups=(group(GroupKind.DRIVER, A, sid), group(GroupKind.HYPERVISOR, AGENT, sid)),
    )
    await bench.put(bench.a, sid)
    await bench.native(sid)
    assert (await bench.reconciler.run_once()).findings == ()

    del bench.a.snapshots[sid]  # the array lost it (an admin, a failed volume)
    report = await bench.reconciler.run_once()
    (marked,) = report.of_kind(Kind.MISSING)
    assert (marked.action, marked.peer, marked.vm_snapshot_id) == ("MARKED", A, sid)
    snap = bench.store.get_snapshot(sid)
    assert snap is not None and f"driver {A} no longer holds {sid} (vda)" in snap.missing
    assert "cannot restore" in snap.missing

    again = await bench.reconciler.run_once()
    assert [f.action for f in again.of_kind(Kind.MISSING)] == ["NONE"]
    assert len(bench.kept_rows(Kind.MISSING, Action.MARKED)) == 1

    await bench.put(bench.a, sid)  # it comes back (the array was restored)
    back = await bench.reconciler.run_once()
    assert found(back, Kind.FOUND, Action.CLEARED) == [sid]
    snap = bench.store.get_snapshot(sid)
    assert snap is not None and snap.missing == ""

    await bench.agent.delete_native_snapshot("vm1", sid)
    report = await bench.reconciler.run_once()
    (marked,) = report.of_kind(Kind.MISSING)
    assert marked.peer == AGENT
    snap = bench.store.get_snapshot(sid)
    assert snap is not None and f"agent {AGENT} no longer holds {sid}" in snap.missing


async def test_a_snapshot_that_became_ready_during_the_listing_is_not_marked(
    bench: Bench,
) -> None:
    sid = await bench.plant(
        SnapshotState.CREATING, groups=(group(GroupKind.DRIVER, A, ""),), done=False
    )
    listed = bench.a.list_snapshots

    async def list_then_commit(page: Page, vm_id: str = "") -> SnapshotPage:
        # Listed before the take's object exists, READY before the catalog is read.
        result = await listed(page, vm_id)
        await bench.store.write(bench.store.w_move(sid, SnapshotState.READY))
        return result

    bench.a.list_snapshots = list_then_commit  # type: ignore[method-assign]
    report = await bench.reconciler.run_once()
    assert report.of_kind(Kind.MISSING) == []
    snap = bench.store.get_snapshot(sid)
    assert snap is not None and snap.state is SnapshotState.READY and snap.missing == ""

    bench.a.list_snapshots = listed  # type: ignore[method-assign]
    # READY before the next listing and still not on the array: now it is judged.
    assert found(await bench.reconciler.run_once(), Kind.MISSING, Action.MARKED) == [sid]


def _count_ready_rows(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many READY rows a pass parses, and how many Snapshots the store builds."""
    counts = {"refs": 0, "snapshots": 0}
    ref, snapshot = store_module._ready_ref, store_module.snapshot_from_row

    def counting_ref(row: Any) -> Any:
        counts["refs"] += 1
        return ref(row)

    def counting_snapshot(row: Any) -> Snapshot:
        counts["snapshots"] += 1
        return snapshot(row)

    monkeypatch.setattr(store_module, "_ready_ref", counting_ref)
    monkeypatch.setattr(store_module, "snapshot_from_row", counting_snapshot)
    return counts


async def _plant_ready_on_a(bench: Bench, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        sid = new_id()
        await bench.plant(
            SnapshotState.READY, snapshot_id=sid, groups=(group(GroupKind.DRIVER, A, sid),)
        )
        await bench.put(bench.a, sid)
        ids.append(sid)
    return ids


async def test_a_pass_reads_the_catalogs_ready_snapshots_once(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pass runs every reconcile_interval_seconds over the whole catalog, in a
    # thread whose Python holds the GIL the event loop serves with: each READY
    # snapshot parsed twice per pass doubled what a catalog of many snapshots
    # costs every ten seconds, and a whole Snapshot built per row (52 µs) cost
    # 3.7 times what the check reads (docs/design.md, "A reconcile pass reads
    # what it checks").
    await _plant_ready_on_a(bench, 20)
    counts = _count_ready_rows(monkeypatch)
    report = await bench.reconciler.run_once()
    assert report.of_kind(Kind.MISSING) == []
    assert counts == {"refs": 20, "snapshots": 0}


async def test_a_pass_whose_peers_listed_nothing_parses_no_ready_snapshot(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a complete listing can show an object missing (or back): with every
    # peer failing its listing, the pass has nothing to check READY snapshots
    # against, and a catalog of 100k of them cost the host seconds of GIL per pass
    # for nothing (the bench's catalog section: a host with no peers).
    (sid,) = await _plant_ready_on_a(bench, 1)
    await bench.store.write(bench.store.w_set_missing(sid, "marked by an earlier pass"))

    async def unavailable(page: Page, vm_id: str = "") -> SnapshotPage:
        raise Unavailable("array not reachable (test)")

    async def no_natives(vm_id: str = "") -> Any:
        raise Unavailable("agent not reachable (test)")

    monkeypatch.setattr(bench.a, "list_snapshots", unavailable)
    monkeypatch.setattr(bench.b, "list_snapshots", unavailable)
    monkeypatch.setattr(bench.agent, "list_native_snapshots", no_natives)
    counts = _count_ready_rows(monkeypatch)
    report = await bench.reconciler.run_once()
    assert counts == {"refs": 0, "snapshots": 0}
    assert report.of_kind(Kind.MISSING) == [] and report.of_kind(Kind.FOUND) == []
    snap = bench.store.get_snapshot(sid)
    assert snap is not None and snap.missing == "marked by an earlier pass"  # not cleared

    # Listed again: the same pass parses it, finds its object and clears the mark.
    monkeypatch.undo()
    counts = _count_ready_rows(monkeypatch)
    report = await bench.reconciler.run_once()
    assert counts == {"refs": 1, "snapshots": 0}
    assert found(report, Kind.FOUND, Action.CLEARED) == [sid]


async def test_a_pass_with_no_peer_to_list_reads_no_ready_snapshot(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A host with no driver or agent registered (or none serving) lists nothing: its
    # passes read no READY id and parse no READY row.
    await _plant_ready_on_a(bench, 3)
    read_ids: list[object] = []
    real = bench.store.snapshot_ids_in

    def ids_in(states: Any) -> set[str]:
        read_ids.append(states)
        return real(states)

    monkeypatch.setattr(bench.store, "snapshot_ids_in", ids_in)
    counts = _count_ready_rows(monkeypatch)
    alone = Reconciler(
        bench.store, Registry(call_timeout=2.0), bench.reconciler.settings, "test-host"
    )
    report = await alone.run_once()
    assert report.findings == ()
    assert read_ids == [] and counts == {"refs": 0, "snapshots": 0}
    # The same catalog with its peers: read once, parsed once.
    await bench.reconciler.run_once()
    assert len(read_ids) == 1 and counts == {"refs": 3, "snapshots": 0}


# --- freezes -----------------------------------------------------------------------------


async def _finished_operation(bench: Bench, done: bool = True) -> str:
    op = new_id()
    await bench.plant(
        SnapshotState.ERROR if done else SnapshotState.CREATING, operation_id=op, done=done
    )
    return op


async def test_a_freeze_whose_operation_is_finished_or_unknown_is_thawed(bench: Bench) -> None:
    finished = await _finished_operation(bench)
    running = await _finished_operation(bench, done=False)
    for vm_id, op in (
        ("vm-done", finished),
        ("vm-running", running),
        ("vm-unknown", "op-the-catalog-never-saw"),
        ("vm-nobody", ""),
    ):
        await bench.vm(vm_id)
        await bench.agent.quiesce(vm_id, QuiesceMethod.OVERLAY, 600, False, op)

    report = await bench.reconciler.run_once()

    stale = {f.vm_id: f for f in report.of_kind(Kind.STALE_FREEZE)}
    assert set(stale) == {"vm-done", "vm-unknown"}
    assert all(f.action == Action.THAWED.value for f in stale.values())
    assert "is finished" in stale["vm-done"].detail
    assert "unknown to the catalog" in stale["vm-unknown"].detail
    assert not frozen(bench.agent_dir, "vm-done")
    assert not frozen(bench.agent_dir, "vm-unknown")
    assert frozen(bench.agent_dir, "vm-running")  # its operation thaws it
    assert frozen(bench.agent_dir, "vm-nobody")  # not this host's: left to its lease
    assert [f.vm_id for f in report.of_kind(Kind.FOREIGN)] == ["vm-nobody"]
    assert len(bench.kept_rows(Kind.STALE_FREEZE, Action.THAWED)) == 2


# --- failing peers, bounds -----------------------------------------------------------------


def _replace_list(
    driver: FakeDriver, list_snapshots: Callable[..., Awaitable[SnapshotPage]]
) -> None:
    driver.list_snapshots = list_snapshots  # type: ignore[method-assign]


async def test_one_peer_failing_its_listing_does_not_stop_the_others(bench: Bench) -> None:
    reconciler = bench.with_settings(orphan_grace_seconds=0)
    hanging = FakeDriver(Options(name="io.vmsnap.test.hang", scheme="h"))
    broken = FakeDriver(Options(name="io.vmsnap.test.broken", scheme="x"))
    await bench.registry.add_driver("in-process-hang", driver=hanging)
    await bench.registry.add_driver("in-process-broken", driver=broken)

    async def unavailable(page: Page, vm_id: str = "") -> SnapshotPage:
        raise Unavailable("array not reachable (test)")

    async def hang(page: Page, vm_id: str = "") -> SnapshotPage:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def bug(page: Page, vm_id: str = "") -> SnapshotPage:
        raise RuntimeError("a bug in the driver")

    _replace_list(bench.a, unavailable)
    _replace_list(hanging, hang)
    _replace_list(broken, bug)
    orphan = await bench.plant(SnapshotState.ERROR)
    await bench.put(bench.b, orphan)
    on_a = await bench.plant(SnapshotState.READY, groups=(group(GroupKind.DRIVER, A, ""),))

    started = time.monotonic()
    report = await reconciler.run_once()

    assert time.monotonic() - started < 5  # the hanging driver cost one call deadline
    assert found(report, Kind.ORPHAN, Action.DELETED) == [orphan]
    assert bench.b.snapshots == {}
    errors = {f.peer: f.detail for f in report.of_kind(Kind.PEER_ERROR)}
    assert set(errors) == {A, "io.vmsnap.test.hang", "io.vmsnap.test.broken"}
    assert "UNAVAILABLE: array not reachable" in errors[A]
    assert "no answer within host.call_timeout_seconds" in errors["io.vmsnap.test.hang"]
    assert "unexpected RuntimeError" in errors["io.vmsnap.test.broken"]
    assert "a bug" not in errors["io.vmsnap.test.broken"]  # no driver internals echoed
    # A driver that could not be listed is no evidence that its objects are gone.
    assert report.of_kind(Kind.MISSING) == []
    snap = bench.store.get_snapshot(on_a)
    assert snap is not None and snap.missing == ""


async def test_a_listing_whose_token_repeats_is_cut_short(bench: Bench) -> None:
    calls = 0

    async def endless(page: Page, vm_id: str = "") -> SnapshotPage:
        nonlocal calls
        calls += 1
        return SnapshotPage((), next_token="same-again")

    _replace_list(bench.a, endless)
    sid = await bench.plant(SnapshotState.READY, groups=(group(GroupKind.DRIVER, A, ""),))
    report = await bench.reconciler.run_once()
    assert calls == 2
    (error,) = report.of_kind(Kind.PEER_ERROR)
    assert error.peer == A and "cut short" in error.detail
    assert report.of_kind(Kind.MISSING) == []
    snap = bench.store.get_snapshot(sid)
    assert snap is not None and snap.missing == ""


async def test_a_driver_without_the_list_capability_is_not_judged(bench: Bench) -> None:
    quiet = FakeDriver(
        Options(
            name="io.vmsnap.test.nolist", scheme="n", capabilities=frozenset({Capability.REVERT})
        )
    )
    await bench.registry.add_driver("in-process-nolist", driver=quiet)
    orphan = await bench.plant(SnapshotState.ERROR)
    await quiet.take_snapshot(
        TakeRequest(vm_snapshot_id=orphan, vm=VM(id="vm1"), volumes=(Volume("vdn", "n://1"),))
    )
    ready = await bench.plant(
        SnapshotState.READY, groups=(group(GroupKind.DRIVER, "io.vmsnap.test.nolist", ""),)
    )
    report = await bench.with_settings(orphan_grace_seconds=0).run_once()
    assert report.findings == ()
    assert orphan in quiet.snapshots
    snap = bench.store.get_snapshot(ready)
    assert snap is not None and snap.missing == ""


def test_the_grace_period_is_a_bounded_setting() -> None:
    assert parse({}).settings.orphan_grace_seconds == 300
    assert parse({"host": {"orphan_grace_seconds": 0}}).settings.orphan_grace_seconds == 0
    with pytest.raises(ConfigError, match=r"host\.orphan_grace_seconds: must be a number in 0\.\."):
        parse({"host": {"orphan_grace_seconds": -1}})


async def test_an_orphaned_memory_state_is_deleted(bench: Bench) -> None:
    """A memory snapshot's saved RAM (adopted during a pause) whose take failed and
    whose compensation never reached the agent: deleted after the grace period."""
    failed = await bench.plant(SnapshotState.ERROR)
    await bench.vm()
    q = await bench.agent.quiesce("vm1", QuiesceMethod.PAUSE_AND_SAVE_MEMORY, 30, True, "op-m")
    taken = await bench.agent.take_native_snapshot("vm1", failed, [], True)
    assert taken.memory_state is not None
    await bench.agent.unquiesce(q.token)
    await bench.reconciler.run_once()
    bench.clock.now += GRACE + 10
    report = await bench.reconciler.run_once()
    assert failed in found(report, Kind.ORPHAN, Action.DELETED)
    assert failed not in await bench.natives()
