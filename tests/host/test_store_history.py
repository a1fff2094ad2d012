"""A create's catalog work does not grow with its VM's history.

Removed snapshots stay in the catalog (the audit of what existed). A VM that a
policy snapshots every hour for a year has thousands of REMOVED rows. The
statements on a create's path (admission's live count, the current snapshot,
making the new one current), the live-name check and the first page of a
listing must read what is live, not every row the VM ever had: on SQLite,
counted in the virtual machine's instructions (a progress handler), not in time;
on PostgreSQL, in the rows its plan reads and throws away.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from vmsnap_host.model import OperationRecord, OperationType, Snapshot, SnapshotState
from vmsnap_host.store import Store
from vmsnap_host.store import store as store_module

VM = "vm-old"


def _history(store: Store, removed: int) -> None:
    """``removed`` REMOVED snapshots of VM, then one READY current one; other VMs'
    rows beside them."""
    now = time.time()
    rows: list[dict[str, Any]] = []
    for i in range(removed):
        for vm in (VM, f"vm-other-{i % 7}"):
            snap = Snapshot(
                id=f"{vm}-s{i}", vm_id=vm, name=f"n{i}", state=SnapshotState.REMOVED, agent="sim-1"
            )
            rows.append(store_module.snapshot_row(snap, now))
    current = Snapshot(
        id=f"{VM}-ready",
        vm_id=VM,
        name="ready",
        state=SnapshotState.READY,
        agent="sim-1",
        current=True,
    )
    rows.append(store_module.snapshot_row(current, now))
    with store.engine.begin() as conn:
        conn.execute(store_module._INSERT_SNAPSHOT.statement, rows)
        if store.dialect == "postgresql":
            conn.execute(text("ANALYZE vm_snapshots"))


def _create_path(store: Store, n: int) -> None:
    """What a create does on the VM's rows: admission, CREATING, READY and current."""
    snap = Snapshot(
        id=f"new-{n}", vm_id=VM, name=f"new-{n}", state=SnapshotState.ALLOCATED, agent="sim-1"
    )
    op = OperationRecord(
        id=f"op-{n}",
        type=OperationType.CREATE,
        vm_id=VM,
        vm_snapshot_id=snap.id,
        request_id=f"r-{n}",
    )
    w = store.write_blocking
    w(store.w_admit(VM, max_open=10, max_live=100_000), store.w_create(snap, op))
    w(store.w_move(snap.id, SnapshotState.CREATING))
    w(store.w_move(snap.id, SnapshotState.READY, current=True, parent_from_current=True))
    w(store.w_finish(op.id, None, "done"))
    assert store.current_snapshot(VM) is not None
    assert store.find_by_name(VM, snap.name) is not None
    assert store.list_snapshots(VM, 0, 10, show_removed=False)
    assert store.live_snapshots(VM)


@contextmanager
def _counting(store: Store) -> Iterator[Callable[[], int]]:
    """Count SQLite VM instructions (in hundreds) run on any of the store's
    connections meanwhile."""
    counted = [0]

    def tick() -> int:
        counted[0] += 1
        return 0  # go on

    def install(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.set_progress_handler(tick, 100)

    store.engine.dispose()  # new connections get the handler
    event.listen(store.engine, "connect", install)
    try:
        yield lambda: counted[0]
    finally:
        event.remove(store.engine, "connect", install)
        store.engine.dispose()


def _work_with_history(tmp_path: Path, removed: int) -> int:
    store = Store.open_sqlite(tmp_path / f"c{removed}.db")
    try:
        _history(store, removed)
        _create_path(store, 0)  # warm: statements compiled, pages cached
        with _counting(store) as work:
            for n in range(1, 4):
                _create_path(store, n)
            return work()
    finally:
        store.close()


def test_a_creates_catalog_work_does_not_grow_with_the_vms_history(tmp_path: Path) -> None:
    short = _work_with_history(tmp_path, 20)
    long = _work_with_history(tmp_path, 4000)
    # Before the partial indexes of migration 0006 the long history cost ~100x.
    assert long <= 1.5 * short + 5, (short, long)


_HOT = {
    "admission bounds": (store_module._COUNT_BOUNDS.statement, {"b_vm": VM}),
    "current": (store_module._CURRENT.statement, {"b_vm": VM}),
    "unset current": (store_module._UNSET_CURRENT.statement, {"b_vm": VM}),
    "unset current, naming it": (store_module._UNSET_CURRENT_WAS.statement, {"b_vm": VM}),
    "listing": (store_module._LIST_VM.statement, {"b_vm": VM, "b_after": 0, "b_limit": 100}),
}


@pytest.mark.parametrize("name", sorted(_HOT))
def test_the_hot_statements_skip_the_history_on_postgresql(pg_url: str, name: str) -> None:
    store = Store.open(pg_url)
    try:
        with store.engine.begin() as conn:
            conn.execute(text("DELETE FROM vm_snapshots"))
        _history(store, 3000)
        statement, params = _HOT[name]

        def explain(_conn: Any, _cursor: Any, sql: str, parameters: Any, *_: Any) -> Any:
            return f"EXPLAIN (ANALYZE, FORMAT TEXT) {sql}", parameters

        event.listen(store.engine, "before_cursor_execute", explain, retval=True)
        try:
            with store.engine.begin() as conn:  # rolled back: EXPLAIN ANALYZE runs an update
                plan = "\n".join(str(r[0]) for r in conn.execute(statement, params))
                conn.rollback()
        finally:
            event.remove(store.engine, "before_cursor_execute", explain)
        removed = [
            int(line.rsplit(":", 1)[1]) for line in plan.splitlines() if "Rows Removed by" in line
        ]
        assert sum(removed) < 100, plan
    finally:
        store.close()
