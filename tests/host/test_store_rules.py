"""Rules the catalog enforces itself, on both backends: what host replicas sharing
one database rely on instead of an in-process lock."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from vmsnap_host.model import ErrorInfo, OperationRecord, OperationType, Snapshot, SnapshotState
from vmsnap_host.state import LeaseLost
from vmsnap_host.store import Store
from vmsnap_host.store.fence import Fence, LeaseEnd, fenced
from vmsnap_host.store.schema import vm_snapshots
from vmsnap_host.store.store import CatalogUnavailable, Duplicate, database_url, redacted
from vmsnap_sdk.errors import Aborted, ResourceExhausted


def _create(store: Store, sid: str, name: str, *, rid: str = "", vm: str = "vm1") -> None:
    snap = Snapshot(id=sid, vm_id=vm, name=name, state=SnapshotState.ALLOCATED, agent="sim-1")
    op = OperationRecord(
        id=f"o-{sid}",
        type=OperationType.CREATE,
        vm_id=vm,
        vm_snapshot_id=sid,
        request_id=rid or f"r-{sid}",
    )
    store.write_blocking(store.w_create(snap, op))


def test_a_live_name_is_unique_per_vm_in_the_schema(db_url: str) -> None:
    store = Store.open(db_url)
    _create(store, "s1", "nightly")
    with pytest.raises(Duplicate) as caught:
        _create(store, "s2", "nightly")
    assert caught.value.what == "name"
    _create(store, "s3", "nightly", vm="vm2")  # another VM may use the name
    # a failed snapshot gives its name back, and deleting it later collides with nothing
    w = store.write_blocking
    w(store.w_move("s1", SnapshotState.ERROR), store.w_finish("o-s1", ErrorInfo(13, "x"), "failed"))
    _create(store, "s4", "nightly")
    w(store.w_move("s1", SnapshotState.EXPUNGING))
    w(store.w_move("s1", SnapshotState.REMOVED))
    assert store.find_by_name("vm1", "nightly").id == "s4"  # type: ignore[union-attr]
    store.close()


def test_a_request_id_is_used_once(db_url: str) -> None:
    store = Store.open(db_url)
    _create(store, "s1", "a", rid="req-1")
    with pytest.raises(Duplicate) as caught:
        _create(store, "s2", "b", rid="req-1")
    assert caught.value.what == "request_id"
    assert store.get_snapshot("s2") is None  # nothing of the refused insert was kept
    store.close()


def test_one_current_snapshot_per_vm_in_the_schema(db_url: str) -> None:
    store = Store.open(db_url)
    w = store.write_blocking
    for sid in ("s1", "s2"):
        _create(store, sid, sid)
        w(store.w_move(sid, SnapshotState.CREATING))
        w(store.w_move(sid, SnapshotState.READY, current=True))
    assert store.current_snapshot("vm1").id == "s2"  # type: ignore[union-attr]
    # a write that bypasses the store's moves still cannot make a second current one
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(update(vm_snapshots).where(vm_snapshots.c.id == "s1").values(is_current=True))
    store.close()


def test_a_vm_lease_abandoned_mid_operation_goes_only_to_whoever_takes_that_operation_over(
    db_url: str,
) -> None:
    store = Store.open(db_url)
    w = store.write_blocking
    _create(store, "s1", "a")  # operation o-s1, open
    assert w(store.w_acquire_lease("vm1", "replica-a", "o-s1", 0.0)) == 1  # a dies at once
    # another operation on the VM must not run before the abandoned one is resolved
    assert w(store.w_acquire_lease("vm1", "replica-b", "o-other", 30)) == 0
    # the replica that took o-s1 over gets the lease, with a new token
    assert w(store.w_claim_operation("o-s1", "", "replica-b"))
    assert not w(store.w_claim_operation("o-s1", "", "replica-c"))  # one winner
    assert w(store.w_acquire_lease("vm1", "replica-b", "o-s1", 0.0)) == 2
    w(store.w_finish("o-s1", None, "rolled back"))
    # finished: the lease (run out) is anyone's again
    assert w(store.w_acquire_lease("vm1", "replica-c", "o-other", 30)) == 3
    store.close()


async def test_every_write_of_an_operation_checks_its_fence(db_url: str) -> None:
    store = Store.open(db_url)
    _create(store, "s1", "a")
    w = store.write_blocking
    fence_a = w(store.w_acquire_lease("vm1", "replica-a", "o-s1", 30))
    with fenced(Fence("vm1", "replica-a", fence_a)):
        await store.write(store.w_journal("o-s1", "quiescing", 10, quiesce_method="FS"))
        # writes from tasks the operation starts are fenced too
        await asyncio.create_task(store.write(store.w_journal("o-s1", "taking", 30)))
    # the lease runs out and replica b takes the operation over
    w(store.w_renew_lease("vm1", "replica-a", fence_a, 0.0))
    assert w(store.w_claim_operation("o-s1", "", "replica-b"))
    assert w(store.w_acquire_lease("vm1", "replica-b", "o-s1", 30)) == fence_a + 1
    with fenced(Fence("vm1", "replica-a", fence_a)):
        with pytest.raises(LeaseLost):
            await store.write(store.w_move("s1", SnapshotState.CREATING))
        with pytest.raises(LeaseLost):
            await asyncio.create_task(store.write(store.w_finish("o-s1", None, "done")))
    # The finishing write of a run whose lease ends with it: the release is the
    # fence check (one DELETE); the stale token deletes nothing and lands nothing.
    ending = LeaseEnd("o-s1")
    with fenced(Fence("vm1", "replica-a", fence_a, end=ending)), pytest.raises(LeaseLost):
        await store.write(store.w_finish("o-s1", None, "done", journal={"thaw": "thawed"}))
    assert not ending.released
    assert store.lease_owner("vm1") is not None
    assert store.lease_owner("vm1")[0] == "replica-b"  # type: ignore[index]
    snap, op = store.get_snapshot("s1"), store.get_operation("o-s1")
    assert snap is not None and snap.state is SnapshotState.ALLOCATED  # nothing landed
    assert op is not None and not op.done and op.step == "taking"
    assert "thaw" not in op.journal
    # The holder's finishing write releases its lease in the same transaction.
    ending = LeaseEnd("o-s1")
    with fenced(Fence("vm1", "replica-b", fence_a + 1, end=ending)):
        await store.write(store.w_finish("o-s1", None, "done", journal={"thaw": "thawed"}))
    assert ending.released and store.lease_owner("vm1") is None
    op = store.get_operation("o-s1")
    assert op is not None and op.done and op.journal["thaw"] == "thawed"
    assert op.journal["quiesce_method"] == "FS"  # the journal's other entries kept
    store.close()


def test_admission_bounds_count_every_replicas_operations(db_url: str) -> None:
    store = Store.open(db_url)
    _create(store, "s1", "a")
    _create(store, "s2", "b")  # two open operations on vm1, from any replica
    with pytest.raises(Aborted) as full:
        store.write_blocking(store.w_admit("vm1", max_open=2, max_live=None))
    assert full.value.reason == "VM_QUEUE_FULL"
    with pytest.raises(ResourceExhausted):
        store.write_blocking(store.w_admit("vm1", max_open=10, max_live=2))
    store.write_blocking(store.w_admit("vm1", max_open=3, max_live=3))
    store.close()


def test_two_replicas_racing_for_a_lease_get_one_each_turn(pg_url: str) -> None:
    stores = [Store.open(pg_url) for _ in range(4)]
    wins: list[int] = []
    start = threading.Barrier(len(stores))

    def race(i: int) -> None:
        start.wait()
        fence = stores[i].write_blocking(
            stores[i].w_acquire_lease("vm1", f"replica-{i}", f"op-{i}", 30)
        )
        if fence:
            wins.append(fence)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins == [1]
    for s in stores:
        s.close()


def test_database_urls_and_what_an_unreachable_database_says(tmp_path: Path) -> None:
    assert database_url(tmp_path / "h.db") == f"sqlite:///{tmp_path / 'h.db'}"
    assert database_url("postgres://u@db/x").startswith("postgresql+psycopg://")
    with pytest.raises(ValueError, match="sqlite:///PATH"):
        database_url("mysql://u@db/x")
    assert "s3cret" not in redacted("postgresql+psycopg://u:s3cret@db/x")
    url = f"postgresql+psycopg://u:s3cret@/x?host={tmp_path}"  # no server there
    with pytest.raises(CatalogUnavailable) as caught:
        Store.open(url)
    assert caught.value.reason == "CATALOG_UNAVAILABLE"
    assert "s3cret" not in caught.value.message


def test_one_replica_leads_at_a_time_and_the_lead_moves_when_it_goes(db_url: str) -> None:
    from vmsnap_host.store.leader import LeaderLock

    store = Store.open(db_url)
    first, second = LeaderLock(store.engine), LeaderLock(store.engine)
    assert first.hold()
    if store.dialect == "sqlite":
        assert second.hold()  # one host: it always leads
    else:
        assert not second.hold()
        assert first.hold()  # still held, checked on its own connection
        first.release()  # the leader goes (its connection ends)
        assert second.hold()
        assert not first.hold()
    first.release()
    second.release()
    store.close()


def test_a_host_out_of_catalog_connections_answers_unavailable(pg_url: str) -> None:
    store = Store.open(pg_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    # the one connection, held
    with store.engine.connect(), pytest.raises(CatalogUnavailable) as caught:
        store.get_snapshot("s1")
    assert caught.value.reason == "CATALOG_BUSY"
    assert store.get_snapshot("s1") is None  # free again
    store.close()
