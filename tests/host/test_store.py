"""The catalog: migrations, durability settings, the indexes the hot paths need."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, select, text

from vmsnap_host.model import OperationRecord, OperationType, Snapshot, SnapshotState
from vmsnap_host.store import Store
from vmsnap_host.store.schema import vm_snapshots


def test_migrations_run_once_and_set_wal_and_full_sync(tmp_path: Path) -> None:
    store = Store.open_sqlite(tmp_path / "c.db")
    store.close()
    store = Store.open_sqlite(tmp_path / "c.db")  # a second start migrates nothing
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"
    indexes = {i["name"] for i in inspect(store.engine).get_indexes("vm_snapshots")}
    assert {"ix_vm_snapshots_vm_seq", "ix_vm_snapshots_vm_name"} <= indexes
    store.close()


def test_listing_one_vm_uses_its_index(tmp_path: Path) -> None:
    store = Store.open_sqlite(tmp_path / "c.db")
    query = (
        select(vm_snapshots)
        .where(vm_snapshots.c.vm_id == "vm1", vm_snapshots.c.seq > 0)
        .order_by(vm_snapshots.c.seq)
        .limit(100)
    )
    compiled = query.compile(store.engine, compile_kwargs={"literal_binds": True})
    with store.engine.connect() as conn:
        plan = " ".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
    assert "ix_vm_snapshots_vm_seq" in plan, plan
    store.close()


def test_leases_belong_to_one_owner_until_they_expire(tmp_path: Path) -> None:
    store = Store.open_sqlite(tmp_path / "c.db")
    assert store.acquire_lease("vm1", "replica-a", "op1", 30)
    assert not store.acquire_lease("vm1", "replica-b", "op2", 30)
    assert store.acquire_lease("vm1", "replica-a", "op3", 30)  # its own: renewable
    store.release_lease("vm1", "replica-a")
    assert store.acquire_lease("vm1", "replica-b", "op2", 0.0)
    assert store.acquire_lease("vm1", "replica-a", "op4", 30)  # b's lease ran out
    store.close()


def test_a_snapshot_and_its_operation_are_written_together(tmp_path: Path) -> None:
    store = Store.open_sqlite(tmp_path / "c.db")
    snap = Snapshot(id="s1", vm_id="vm1", name="n", state=SnapshotState.ALLOCATED, agent="sim-1")
    op = OperationRecord(
        id="o1", type=OperationType.CREATE, vm_id="vm1", vm_snapshot_id="s1", request_id="r1"
    )
    store.create(snap, op)
    store.journal("o1", "quiescing", 10, quiesce_token="q-1")
    store.journal("o1", "taking", 30, called=["a"])
    got = store.get_operation("o1")
    assert got is not None and got.journal == {"quiesce_token": "q-1", "called": ["a"]}
    assert [o.id for o in store.unfinished_operations()] == ["o1"]
    store.close()
