"""PreparedStatement statements (store/prepared.py) behave as ``Connection.execute`` does,
on SQLite and on PostgreSQL: the same rows with the same Python types, lists of
any length in an expanding IN, the columns' constant defaults, the connection's
transaction, and DBAPI errors raised as SQLAlchemy's (what the catalog's
callers catch)."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError

from vmsnap_host.store import Store
from vmsnap_host.store.prepared import PreparedStatement
from vmsnap_host.store.schema import operations

_BY_ID = select(operations).where(operations.c.id == bindparam("b_id"))
_IN = select(operations.c.id, operations.c.done).where(
    operations.c.id.in_(bindparam("b_ids", expanding=True))
)


def _row(n: int, *, done: bool = False) -> dict[str, object]:
    now = time.time()
    return {
        "id": f"op-{n}",
        "type": "CREATE",
        "vm_id": "vm-1",
        "vm_snapshot_id": f"s-{n}",
        "request_id": uuid.uuid4().hex,
        "done": done,
        "journal_json": '{"a": 1}',
        "create_time": now,
        "update_time": now,
    }


@pytest.fixture
def store(db_url: str) -> Store:
    s = Store.open(db_url)
    yield s  # type: ignore[misc]
    s.close()


def test_rows_and_types_match_sqlalchemys(store: Store) -> None:
    insert = PreparedStatement(operations.insert())
    with store.engine.begin() as conn:
        # progress, step, params_json, owner, project left out: their defaults.
        insert.execute(conn, _row(1, done=True))
        insert.execute(conn, _row(2))
    with store.engine.connect() as conn:
        for n in (1, 2):
            ours = PreparedStatement(_BY_ID).execute(conn, {"b_id": f"op-{n}"}).first()
            theirs = conn.execute(_BY_ID, {"b_id": f"op-{n}"}).first()
            assert theirs is not None
            assert tuple(ours) == tuple(theirs)
            assert [type(v) for v in ours] == [type(v) for v in theirs]
            assert ours.done is (n == 1)  # a bool on SQLite too (its 0/1 processed)
            assert ours.step == "" and ours.params_json == "{}" and ours.progress == 0
        assert PreparedStatement(_BY_ID).execute(conn, {"b_id": "none"}).first() is None


def test_an_expanding_in_takes_lists_of_any_length(store: Store) -> None:
    insert = PreparedStatement(operations.insert())
    with store.engine.begin() as conn:
        for n in range(5):
            insert.execute(conn, _row(n, done=n % 2 == 0))
    prepared = PreparedStatement(_IN)
    with store.engine.connect() as conn:
        for ids in (["op-1"], ["op-0", "op-3", "op-4"], ["op-2", "op-9"], ["op-1"]):
            got = {r.id: r.done for r in prepared.execute(conn, {"b_ids": ids})}
            want = {r.id: r.done for r in conn.execute(_IN, {"b_ids": ids})}
            assert got == want and set(got) <= set(ids)


def test_writes_are_in_the_connections_transaction(store: Store) -> None:
    insert = PreparedStatement(operations.insert())
    with store.engine.connect() as conn:
        with conn.begin() as tx:
            insert.execute(conn, _row(1))
            tx.rollback()
        with conn.begin():
            insert.execute(conn, _row(2))
    with store.engine.connect() as conn:
        ids = {r.id for r in PreparedStatement(_IN).execute(conn, {"b_ids": ["op-1", "op-2"]})}
    assert ids == {"op-2"}


def test_a_constraint_violation_is_sqlalchemys_integrity_error(store: Store) -> None:
    insert = PreparedStatement(operations.insert())
    with store.engine.begin() as conn:
        insert.execute(conn, _row(1))
    duplicate = {**_row(2), "request_id": "same"}
    with store.engine.begin() as conn:
        insert.execute(conn, duplicate)
    with pytest.raises(IntegrityError) as caught, store.engine.begin() as conn:
        insert.execute(conn, {**_row(3), "request_id": "same"})
    # The store's callers read the driver's error (its text, PostgreSQL's sqlstate).
    assert "request_id" in str(caught.value.orig)
    # The connection is usable again, and nothing of the failed insert is there.
    with store.engine.connect() as conn:
        ids = {r.id for r in PreparedStatement(_IN).execute(conn, {"b_ids": ["op-2", "op-3"]})}
    assert ids == {"op-2"}


def test_a_column_without_a_constant_default_must_be_given(store: Store) -> None:
    row = _row(1)
    del row["create_time"]  # no default at all: the database refuses it
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        PreparedStatement(operations.insert()).execute(conn, row)


def test_iterate_gives_the_rows_execute_gives(store: Store) -> None:
    insert = PreparedStatement(operations.insert())
    with store.engine.begin() as conn:
        for n in range(55):  # more than one batch
            insert.execute(conn, _row(n, done=n % 3 == 0))
    ids = [f"op-{n}" for n in range(60)]
    prepared = PreparedStatement(_IN)
    with store.engine.connect() as conn:
        streamed = list(prepared.iterate(conn, {"b_ids": ids}))
        fetched = prepared.execute(conn, {"b_ids": ids}).all()
    assert len(streamed) == 55
    assert sorted(streamed) == sorted(fetched)
    assert all(type(r.done) is bool for r in streamed)
