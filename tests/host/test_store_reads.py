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
