"""The catalog on both backends (SQLite, PostgreSQL): migrations, durability
settings, the indexes the hot paths need, compare-and-set moves, leases and
fencing, and the uniqueness rules the schema enforces."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text

from vmsnap_host.model import (
    Claim,
    ErrorInfo,
    Group,
    GroupKind,
    OperationRecord,
    OperationType,
    Snapshot,
    SnapshotState,
)
from vmsnap_host.state import IllegalMove, OperationClosed, StaleMove
from vmsnap_host.store import Store
from vmsnap_host.store.schema import vm_snapshots
from vmsnap_host.store.store import Started
from vmsnap_sdk import Priority
from vmsnap_sdk.errors import Aborted


def test_migrations_run_once_on_either_backend(db_url: str) -> None:
    store = Store.open(db_url)
    store.close()
    store = Store.open(db_url)  # a second start migrates nothing
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0007"
    indexes = {i["name"] for i in inspect(store.engine).get_indexes("vm_snapshots")}
    assert {
        "ix_vm_snapshots_vm_seq",
        "ix_vm_snapshots_vm_name",
        "ux_vm_snapshots_live_name",
        "ux_vm_snapshots_current",
        "ix_vm_snapshots_policy",
        "ix_vm_snapshots_vm_shown",
    } <= indexes
    store.close()


def test_head_revision_is_alembics_head() -> None:
    """A catalog at HEAD_REVISION is opened without running Alembic: the constant
    must move with every new migration, or a catalog one behind would not migrate."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from vmsnap_host.store.store import HEAD_REVISION, MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_heads() == [HEAD_REVISION]


def _shown_columns(store: Store) -> list[str] | None:
    for index in inspect(store.engine).get_indexes("vm_snapshots"):
        if index["name"] == "ix_vm_snapshots_vm_shown":
            return [str(c) for c in index["column_names"]]
    return None


def test_a_catalog_one_revision_behind_is_migrated(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from vmsnap_host.store.store import MIGRATIONS

    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = Store.open(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:  # as a host one release older left it
        config.attributes["connection"] = conn
        command.downgrade(config, "0006")
    assert _shown_columns(store) == ["vm_id", "seq"]
    store.close()
    store = Store.open(url)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0007"
    assert _shown_columns(store) == ["vm_id", "seq", "state"]
    store.close()


def test_a_catalog_of_two_releases_ago_is_migrated(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from vmsnap_host.store.store import MIGRATIONS

    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = Store.open(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0005")
    assert _shown_columns(store) is None
    store.close()
    store = Store.open(url)
    assert _shown_columns(store) == ["vm_id", "seq", "state"]
    store.close()


def test_the_live_count_reads_the_index_alone(tmp_path: Path) -> None:
    """Admission counts a VM's live snapshots (max_snapshots_per_vm) in its
    transaction: from the index's entries, no table row read per snapshot."""
    from vmsnap_host.store import store as store_module

    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    compiled = store_module._COUNT_BOUNDS.statement.compile(dialect=store.engine.dialect)
    with store.engine.connect() as conn:
        plan = " | ".join(
            str(row[3])
            for row in conn.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {compiled}", ("vm1", "vm1", "FREEZE", "vm1", "ERROR")
            )
        )
    assert "COVERING INDEX ix_vm_snapshots_vm_shown" in plan, plan
    store.close()


def test_sqlite_runs_with_wal_and_full_sync(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    store.close()


def test_postgresql_gets_a_bounded_pool_and_no_sqlite_pragmas(pg_url: str) -> None:
    store = Store.open(pg_url)
    assert store.dialect == "postgresql"
    assert store.engine.pool.size() == 4  # type: ignore[attr-defined]
    with store.engine.connect() as conn:
        name = conn.execute(text("SELECT current_setting('application_name')")).scalar()
    assert name == "vmsnap-host"
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


def test_listing_one_vm_uses_its_index_on_postgresql(pg_url: str) -> None:
    store = Store.open(pg_url)
    query = (
        select(vm_snapshots)
        .where(vm_snapshots.c.vm_id == "vm1", vm_snapshots.c.seq > 0)
        .order_by(vm_snapshots.c.seq)
        .limit(100)
    )
    compiled = query.compile(store.engine, compile_kwargs={"literal_binds": True})
    with store.engine.connect() as conn:
        # An empty table is scanned whatever the indexes: ask what the plan would be
        # on a big one.
        conn.execute(text("SET enable_seqscan = off"))
        plan = " ".join(str(r[0]) for r in conn.execute(text(f"EXPLAIN {compiled}")))
    assert "ix_vm_snapshots_vm_seq" in plan, plan
    store.close()


def test_leases_belong_to_one_owner_until_they_expire(db_url: str) -> None:
    store = Store.open(db_url)
    w = store.write_blocking
    assert w(store.w_acquire_lease("vm1", "replica-a", "op1", 30))
    assert not w(store.w_acquire_lease("vm1", "replica-b", "op2", 30))
    assert w(store.w_acquire_lease("vm1", "replica-a", "op3", 30))  # its own: renewable
    w(store.w_release_lease("vm1", "replica-a"))
    assert w(store.w_acquire_lease("vm1", "replica-b", "op2", 0.0))
    assert w(store.w_acquire_lease("vm1", "replica-a", "op4", 30))  # b's lease ran out
    store.close()


def test_a_lease_holder_that_lost_its_lease_is_fenced_off(db_url: str) -> None:
    store = Store.open(db_url)
    w = store.write_blocking
    fence_a = w(store.w_acquire_lease("vm1", "replica-a", "op1", 0.0))  # runs out at once
    fence_b = w(store.w_acquire_lease("vm1", "replica-b", "op2", 30))  # b takes over
    assert fence_b > fence_a
    # a wakes up and renews with its old token: refused, it must stop its work
    assert not w(store.w_renew_lease("vm1", "replica-a", fence_a, 30))
    assert w(store.w_renew_lease("vm1", "replica-b", fence_b, 30))
    # a's release does not free b's lease
    w(store.w_release_lease("vm1", "replica-a", fence_a))
    assert store.lease_owner("vm1") is not None
    assert store.lease_owner("vm1")[0] == "replica-b"  # type: ignore[index]
    store.close()


def _snap_and_op(store: Store) -> None:
    snap = Snapshot(id="s1", vm_id="vm1", name="n", state=SnapshotState.ALLOCATED, agent="sim-1")
    op = OperationRecord(
        id="o1", type=OperationType.CREATE, vm_id="vm1", vm_snapshot_id="s1", request_id="r1"
    )
    store.write_blocking(store.w_create(snap, op))


def test_every_state_change_is_a_compare_and_set_from_the_table(db_url: str) -> None:
    store = Store.open(db_url)
    _snap_and_op(store)
    w = store.write_blocking
    w(store.w_move("s1", SnapshotState.CREATING))
    # READY may not be entered from ALLOCATED any more: the row is CREATING now
    with pytest.raises(StaleMove):
        w(store.w_move("s1", SnapshotState.CREATING))
    # a move the table does not allow at all is a bug, refused before the statement
    with pytest.raises(IllegalMove):
        store.w_move("s1", SnapshotState.REVERTING, only=frozenset({SnapshotState.CREATING}))
    w(store.w_move("s1", SnapshotState.READY))
    w(store.w_move("s1", SnapshotState.EXPUNGING))
    # a revert queued before the delete ran finds the snapshot EXPUNGING: refused,
    # and the row is unchanged
    with pytest.raises(StaleMove):
        w(store.w_move("s1", SnapshotState.REVERTING))
    got = store.get_snapshot("s1")
    assert got is not None and got.state is SnapshotState.EXPUNGING
    # a save of a snapshot read in an older state is refused too
    with pytest.raises(StaleMove):
        w(store.w_save(replace(got, state=SnapshotState.READY, description="stale")))
    store.close()


def test_an_operation_is_finished_once_and_then_closed_to_writes(db_url: str) -> None:
    store = Store.open(db_url)
    _snap_and_op(store)
    w = store.write_blocking
    w(store.w_finish("o1", None, "done"))
    with pytest.raises(OperationClosed):
        w(store.w_finish("o1", ErrorInfo(10, "late"), "failed"))
    with pytest.raises(OperationClosed):
        w(store.w_journal("o1", "stale step", 50))
    got = store.get_operation("o1")
    assert got is not None and got.error is None and got.step == "done"
    store.close()


def test_a_snapshot_and_its_operation_are_written_together(db_url: str) -> None:
    store = Store.open(db_url)
    _snap_and_op(store)
    store.write_blocking(store.w_journal("o1", "quiescing", 10, quiesce_token="q-1"))
    store.write_blocking(store.w_journal("o1", "taking", 30, called=["a"]))
    got = store.get_operation("o1")
    assert got is not None and got.journal == {"quiesce_token": "q-1", "called": ["a"]}
    assert [o.id for o in store.unfinished_operations()] == ["o1"]
    store.close()


def test_a_take_started_at_once_is_inserted_as_its_first_write_leaves_it(db_url: str) -> None:
    """w_create_leased: the lease granted, the snapshot is CREATING with its groups
    owed a delete, the operation at its first step with its journal, the owners
    recorded, as w_create then the first write would leave them; the lease refused
    (another replica holds the VM), ALLOCATED and queued, nothing else."""
    store = Store.open(db_url)
    w = store.write_blocking
    group = Group(GroupKind.DRIVER, "io.vmsnap.test.a", (Claim("vda", Priority.PLUGIN, "a"),))

    def admit(n: int, owner: str) -> int:
        snap = Snapshot(
            id=f"s{n}", vm_id="vm1", name=f"n{n}", state=SnapshotState.ALLOCATED, agent="sim-1"
        )
        op = OperationRecord(
            id=f"o{n}",
            type=OperationType.CREATE,
            vm_id="vm1",
            vm_snapshot_id=f"s{n}",
            request_id=f"r{n}",
            step="queued",
        )
        creating = replace(snap, state=SnapshotState.CREATING, groups=(group,))
        started = Started(
            snapshot=creating,
            cleanup=(group,),
            owners={f"a://pool/{n}": "io.vmsnap.test.a"},
            step="quiescing and taking 1 groups",
            progress=15,
            journal={"freeze_needed": True, "called": ["io.vmsnap.test.a"]},
        )
        return int(w(store.w_create_leased(snap, op, owner, 30.0, started)))

    assert admit(1, "replica-a") > 0
    snap, op = store.get_snapshot("s1"), store.get_operation("o1")
    assert snap is not None and snap.state is SnapshotState.CREATING and snap.groups == (group,)
    assert store.get_cleanup("s1") == [group]
    assert op is not None and op.step == "quiescing and taking 1 groups" and op.progress == 15
    assert op.journal == {"freeze_needed": True, "called": ["io.vmsnap.test.a"]}
    assert store.volume_owners(["a://pool/1"]) == {"a://pool/1": "io.vmsnap.test.a"}

    assert admit(2, "replica-b") == 0  # o1 is open and holds the VM
    snap, op = store.get_snapshot("s2"), store.get_operation("o2")
    assert snap is not None and snap.state is SnapshotState.ALLOCATED and snap.groups == ()
    assert store.get_cleanup("s2") == []
    assert op is not None and op.step == "queued" and op.journal == {}
    assert store.volume_owners(["a://pool/2"]) == {}
    store.close()


def test_admission_refuses_a_vm_a_third_partys_freeze_holds(db_url: str) -> None:
    """w_admit refuses work on a VM with an open FREEZE operation in the admitting
    transaction itself (whichever replica admitted the freeze), with every bound:
    ABORTED VM_FROZEN naming the freeze and when its lease lapses. Another open
    operation is only counted."""
    store = Store.open(db_url)
    w = store.write_blocking
    admit_take = store.w_admit("vm1", max_open=2, max_live=10)
    admit_other = store.w_admit("vm1", max_open=2, max_live=None)
    w(store.w_insert_operation(OperationRecord("o1", OperationType.CREATE, "vm1", "s1", "r1")))
    w(admit_take)
    w(admit_other)
    w(
        store.w_insert_operation(
            OperationRecord(
                "f1", OperationType.FREEZE, "vm1", "", "r2", journal={"expires_at": 1_900_000_000}
            )
        )
    )
    for admit in (admit_take, admit_other):
        with pytest.raises(Aborted) as caught:
            w(admit)
        assert caught.value.reason == "VM_FROZEN"
        assert "operation f1" in caught.value.message and "lapses at" in caught.value.message
    w(store.w_admit("vm2", max_open=2, max_live=10))  # another VM is not held
    w(store.w_finish("f1", None, "thawed"))
    w(admit_take)
    store.close()


def test_a_transaction_rolled_back_for_a_deadlock_is_run_again(pg_url: str) -> None:
    """Replicas can lock the same rows in different orders; PostgreSQL then rolls
    one transaction back (deadlock_detected) and asks for it to be run again. It
    was reported as CATALOG_UNAVAILABLE and failed a take (3 replicas hammering
    the same VMs, in CI)."""
    store = Store.open(pg_url)
    try:
        store.write_blocking(
            lambda c: c.execute(text("CREATE TABLE t_deadlock (id int PRIMARY KEY, v int)")),
            lambda c: c.execute(text("INSERT INTO t_deadlock VALUES (1, 0), (2, 0)")),
        )
        both_hold_one = threading.Barrier(2)
        tries = {"a": 0, "b": 0}

        def locking(name: str, first: int, second: int) -> Any:
            def step(conn: Any) -> None:
                tries[name] += 1
                bump = text("UPDATE t_deadlock SET v = v + 1 WHERE id = :id")
                conn.execute(bump, {"id": first})
                if tries[name] == 1:
                    both_hold_one.wait(timeout=10)
                conn.execute(bump, {"id": second})

            return step

        with ThreadPoolExecutor(2) as pool:
            done = [
                pool.submit(store.write_blocking, locking("a", 1, 2)),
                pool.submit(store.write_blocking, locking("b", 2, 1)),
            ]
            for future in done:
                future.result(timeout=60)
        with store.engine.connect() as conn:
            rows = dict(conn.execute(text("SELECT id, v FROM t_deadlock")).all())
        assert rows == {1: 2, 2: 2}  # both transactions committed, each once
        assert tries["a"] + tries["b"] == 3  # one was rolled back and run again
    finally:
        store.close()


def test_a_volumes_owner_is_written_only_when_it_changes(db_url: str) -> None:
    """Every take records its volumes' owners; the same owner again writes nothing
    (the row, and its update_time, stay as they were); another owner replaces it."""
    store = Store.open(db_url)
    w = store.write_blocking
    w(store.w_set_owners({"a://pool/1": "io.vmsnap.test.a"}))

    def row() -> tuple[str, float]:
        with store.engine.connect() as conn:
            found = conn.execute(
                text("SELECT driver, update_time FROM volume_owners WHERE locator = 'a://pool/1'")
            ).one()
            return str(found[0]), float(found[1])

    first = row()
    time.sleep(0.01)
    w(store.w_set_owners({"a://pool/1": "io.vmsnap.test.a"}))
    assert row() == first
    w(store.w_set_owners({"a://pool/1": "io.vmsnap.test.b"}))
    driver, changed = row()
    assert driver == "io.vmsnap.test.b" and changed > first[1]
    assert store.volume_owners(["a://pool/1"]) == {"a://pool/1": "io.vmsnap.test.b"}
    store.close()
