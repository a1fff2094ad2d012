"""Reads on the event loop's thread (SQLite) run on one kept connection
(store.Store._read): no pool checkout per read, and still every committed write
seen, no snapshot held between reads, errors as CATALOG_UNAVAILABLE."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import event, text

from vmsnap_host.store import Store
from vmsnap_sdk.errors import Unavailable


def _checkouts(store: Store) -> list[int]:
    """Pool checkouts made on this thread from now on (the writer thread's are its own)."""
    seen: list[int] = []
    me = threading.get_ident()

    def checkout(*_: object) -> None:
        if threading.get_ident() == me:
            seen.append(1)

    event.listen(store.engine.pool, "checkout", checkout)
    return seen


async def test_loop_reads_share_one_connection_and_see_every_commit(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        checkouts = _checkouts(store)
        for i in range(20):
            await store.write(store.w_set_vm_project("vm1", f"p{i}"))
            # Each read sees the write committed just before (by the writer thread,
            # on its own connection): the kept connection holds no old snapshot.
            assert store.vm_project("vm1") == f"p{i}"
        assert len(checkouts) <= 1
        # A write from another connection entirely (another process, a tool) too.
        other = sqlite3.connect(tmp_path / "c.db")
        other.execute("UPDATE vm_projects SET project = 'outside' WHERE vm_id = 'vm1'")
        other.commit()
        other.close()
        assert store.vm_project("vm1") == "outside"
        # No read transaction is left open: a checkpoint can truncate the whole WAL.
        with sqlite3.connect(tmp_path / "c.db") as probe:
            busy, _, _ = probe.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
    finally:
        store.close()


async def test_reads_off_the_loop_thread_use_the_pool(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        await store.write(store.w_set_vm_project("vm1", "p"))
        store.vm_project("vm1")  # the loop thread's connection is kept
        here = _checkouts(store)

        def read() -> tuple[str | None, int]:
            there = _checkouts(store)
            return store.vm_project("vm1"), len(there)

        assert await asyncio.to_thread(read) == ("p", 1)  # a pool connection, there
        assert store.vm_project("vm1") == "p"
        assert here == []  # the loop thread still reads on its kept one
    finally:
        store.close()


async def test_a_failing_kept_connection_is_dropped_and_reported_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        await store.write(store.w_set_vm_project("vm1", "p"))
        assert store.vm_project("vm1") == "p"
        with store._read() as kept:
            pass
        raw = kept.connection.dbapi_connection
        assert raw is not None
        raw.close()  # the connection breaks under the store
        with pytest.raises(Unavailable):
            store.vm_project("vm1")
        assert store.vm_project("vm1") == "p"  # a new one is opened
        with store._read() as conn:
            assert conn is not kept
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        store.close()


# --- catalog reads off the event loop (docs/design.md, "Catalog reads off the event loop")


async def test_a_postgresql_read_runs_in_a_reader_thread_and_one_on_the_loop_is_refused(
    pg_url: str,
) -> None:
    """Store.read runs a PostgreSQL read in a reader thread, with the caller's
    context; the same read made by the host's own code on the loop's thread is
    refused (LoopRead) under VMSNAP_STRICT_LOOP_READS, which the suite sets: the
    check that found every read left on the loop. A test's own read passes."""
    import contextvars
    import os

    from vmsnap_host.api.servicer import HostServicer
    from vmsnap_host.model import OperationRecord, OperationType
    from vmsnap_host.store.store import STRICT_LOOP_READS, LoopRead

    assert os.environ.get(STRICT_LOOP_READS) == "1"
    store = Store.open(pg_url)
    try:
        await store.write(store.w_set_vm_project("vm1", "p1"))
        seen: dict[str, object] = {}
        asked = contextvars.ContextVar("asked", default="")
        asked.set("mine")

        def where(vm_id: str) -> str | None:
            seen["thread"] = threading.current_thread().name
            seen["context"] = asked.get()
            return store.vm_project(vm_id)

        assert await store.read(where, "vm1") == "p1"
        assert str(seen["thread"]).startswith("catalog-reader")
        assert seen["context"] == "mine"
        assert store.vm_project("vm1") == "p1"  # this test's own read: not the host's
        # The host's code reading on the loop: the servicer's answer builder, made
        # to be called through Store.read only.
        servicer = HostServicer.__new__(HostServicer)
        servicer.store = store
        op = OperationRecord(
            id="op-1", type=OperationType.CREATE, vm_id="vm1", vm_snapshot_id="s-1", request_id="r"
        )
        with pytest.raises(LoopRead):
            servicer._op_pb(op)
        assert (await servicer._op(op)).id == "op-1"
    finally:
        store.close()


async def test_a_sqlite_read_runs_in_place(tmp_path: Path) -> None:
    """SQLite: no hop (a page-cache read costs less than the thread handoff)."""
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        me = threading.get_ident()
        assert await store.read(threading.get_ident) == me
    finally:
        store.close()
