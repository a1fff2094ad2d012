"""The catalog: snapshots, operations and leases, on SQLAlchemy Core.

Opened by URL (:meth:`Store.open`): SQLite is the embedded default (WAL,
synchronous FULL: a committed journal entry survives a power cut);
PostgreSQL (psycopg 3) is what several host replicas share. The SQL is the
same on both but for a few dialect-specific constructs (upserts, the
database's clock, advisory locks), each chosen in one place here.
Reads are synchronous and short. Writes have one form: composable write steps
(``w_*``) that :meth:`Store.write` commits in the writer thread, several in one
transaction and shared with concurrent operations (group commit, see
:mod:`vmsnap_host.store.writer`), so an fsync never blocks the event loop.

Every step that changes a snapshot's state is a compare-and-set from the table
of :mod:`vmsnap_host.state` (``w_move``); every step that writes for an
operation is refused once that operation is finished (``w_journal``,
``w_finish``). A refused step raises, its transaction is rolled back, and the
caller's ``await`` raises :class:`~vmsnap_host.state.StaleMove` or
:class:`~vmsnap_host.state.OperationClosed`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import json
import logging
import os
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Float,
    and_,
    bindparam,
    cast,
    create_engine,
    event,
    exists,
    func,
    inspect,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Row, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.sql.elements import ColumnElement

from vmsnap_host import state as lifecycle
from vmsnap_host.model import (
    CANCEL_KEY,
    ErrorInfo,
    Group,
    GroupKind,
    KeptState,
    OperationRecord,
    OperationType,
    QuiescePolicy,
    Snapshot,
    SnapshotState,
)
from vmsnap_host.store.fence import Fence, current_fence
from vmsnap_host.store.prepared import PreparedStatement
from vmsnap_host.store.schema import (
    CURRENT_PREDICATE,
    SHOWN_PREDICATE,
    audit_records,
    findings,
    kept_states,
    operations,
    registrations,
    replicas,
    vm_leases,
    vm_projects,
    vm_snapshots,
    volume_owners,
)
from vmsnap_host.store.writer import GroupCommitter, Step, transaction
from vmsnap_sdk import Consistency
from vmsnap_sdk.errors import Aborted, Reason, ResourceExhausted, Unavailable

log = logging.getLogger("vmsnap.host.store")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: The newest Alembic revision (migrations/versions). A catalog already there is
#: opened without importing Alembic (~0.4 s of every host start that has a catalog);
#: tests/host/test_store.py checks that this is Alembic's head.
HEAD_REVISION = "0007"


def frozen_refusal(vm_id: str, freeze: OperationRecord) -> Aborted:
    """The answer to work asked on a VM that a third party's freeze holds: refused,
    not queued, since the freeze may be renewed for as long as its caller wants."""
    expires = freeze.journal.get("expires_at")
    until = (
        f" (its lease lapses at {datetime.fromtimestamp(float(expires), UTC):%H:%M:%S} "
        "UTC unless renewed)"
        if expires
        else ""
    )
    return Aborted(
        f"VM {vm_id} is frozen for a third-party tool by operation {freeze.id}{until}; "
        "retry once it is thawed",
        reason=Reason.VM_FROZEN,
    )


def _revision(conn: Connection) -> str | None:
    """The catalog's Alembic revision; None for an empty database."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if version is None else str(version)


# The statements of the hot path, built once with bound parameters: SQLAlchemy
# then reuses their compiled form without rebuilding the expression and its
# cache key on every call (half the cost of a small query, measured).
_DEAD = [SnapshotState.REMOVED.name, SnapshotState.ERROR.name]
# A VM's rows that are not history, and its current one, in the words of their
# partial indexes (schema.SHOWN_PREDICATE, CURRENT_PREDICATE): a VM snapshotted for
# years keeps a create's statements as cheap as a new one's.
_SHOWN = text(f"vm_snapshots.{SHOWN_PREDICATE}")
_IS_CURRENT = text(f"vm_snapshots.{CURRENT_PREDICATE}")
_SNAPSHOT_BY_ID = PreparedStatement(
    select(vm_snapshots).where(vm_snapshots.c.id == bindparam("b_id"))
)
_OPERATION_BY_ID = PreparedStatement(select(operations).where(operations.c.id == bindparam("b_id")))
# What only the catalog knows of a snapshot a state write just wrote from the
# operation's copy (w_read_finished): set by the transaction (parent, times) or by
# others (project, missing mark), and the freeze start as stored.
_SNAPSHOT_BESIDE_COPY = PreparedStatement(
    select(
        vm_snapshots.c.state,
        vm_snapshots.c.parent_id,
        vm_snapshots.c.project,
        vm_snapshots.c.missing,
        vm_snapshots.c.freeze_start,
        vm_snapshots.c.create_time,
        vm_snapshots.c.update_time,
    ).where(vm_snapshots.c.id == bindparam("b_id"))
)
_OPERATION_BY_REQUEST = PreparedStatement(
    select(operations).where(operations.c.request_id == bindparam("b_rid"))
)
_LIVE_BY_NAME = PreparedStatement(
    select(vm_snapshots).where(
        vm_snapshots.c.vm_id == bindparam("b_vm"),
        vm_snapshots.c.name == bindparam("b_name"),
        vm_snapshots.c.state.not_in(_DEAD),
    )
)
# A VM's live snapshots: neither REMOVED nor ERROR.
_LIVE_OF_VM = (
    vm_snapshots.c.vm_id == bindparam("b_vm"),
    _SHOWN,
    vm_snapshots.c.state != SnapshotState.ERROR.name,
)
_LIVE_SNAPSHOTS = PreparedStatement(select(vm_snapshots).where(*_LIVE_OF_VM))
_CURRENT = PreparedStatement(
    select(vm_snapshots).where(vm_snapshots.c.vm_id == bindparam("b_vm"), _IS_CURRENT)
)
_UPDATE_SNAPSHOT = update(vm_snapshots).where(vm_snapshots.c.id == bindparam("b_id"))
# The compare-and-set of every state change (and of every save of a snapshot that
# an operation owns): applied only while the row is in one of ``b_from``.
_MOVE_SNAPSHOT = PreparedStatement(
    update(vm_snapshots).where(
        vm_snapshots.c.id == bindparam("b_id"),
        vm_snapshots.c.state.in_(bindparam("b_from", expanding=True)),
    )
)
_OPEN_OPERATION = PreparedStatement(
    update(operations).where(operations.c.id == bindparam("b_id"), operations.c.done.is_(False))
)
_UNSET_CURRENT = PreparedStatement(
    update(vm_snapshots)
    .where(vm_snapshots.c.vm_id == bindparam("b_vm"), _IS_CURRENT)
    .values(is_current=False)
)
_JOURNAL_OF = PreparedStatement(
    select(operations.c.journal_json, operations.c.done)
    .where(operations.c.id == bindparam("b_id"))
    # Read-modify-write of the journal: the row stays locked until commit.
    .with_for_update()
)
_UPDATE_OPERATION = PreparedStatement(
    update(operations).where(operations.c.id == bindparam("b_id"))
)
_LEASE_OF = PreparedStatement(select(vm_leases).where(vm_leases.c.vm_id == bindparam("b_vm")))
_RELEASE_LEASE = PreparedStatement(
    vm_leases.delete().where(
        vm_leases.c.vm_id == bindparam("b_vm"), vm_leases.c.owner == bindparam("b_owner")
    )
)
# One VM's live snapshots, a page after a sequence number (ListVMSnapshots).
_LIST_VM = PreparedStatement(
    select(vm_snapshots)
    .where(
        vm_snapshots.c.seq > bindparam("b_after"),
        vm_snapshots.c.vm_id == bindparam("b_vm"),
        _SHOWN,
    )
    .order_by(vm_snapshots.c.seq)
    .limit(bindparam("b_limit"))
)
_INSERT_SNAPSHOT = PreparedStatement(vm_snapshots.insert())
_INSERT_OPERATION = PreparedStatement(operations.insert())
_OPEN_OF_VM = (operations.c.vm_id == bindparam("b_vm"), operations.c.done.is_(False))
_RUNNING = select(func.count()).where(*_OPEN_OF_VM).scalar_subquery().label("running")
#: Open FREEZE operations (a third party's freeze holds the VM).
_FROZEN = (
    select(func.count())
    .where(*_OPEN_OF_VM, operations.c.type == OperationType.FREEZE.name)
    .scalar_subquery()
    .label("frozen")
)
# Admission's checks in one statement: the VM's unfinished operations, whether a
# third party's freeze holds it, and (for a take) its live snapshots.
_COUNT_OPEN = PreparedStatement(select(_RUNNING, _FROZEN))
_COUNT_BOUNDS = PreparedStatement(
    select(
        _RUNNING,
        _FROZEN,
        select(func.count()).where(*_LIVE_OF_VM).scalar_subquery().label("live"),
    )
)
_FENCE_OF = PreparedStatement(
    select(vm_leases.c.fence)
    .where(
        vm_leases.c.vm_id == bindparam("b_vm"),
        vm_leases.c.owner == bindparam("b_owner"),
        vm_leases.c.fence == bindparam("b_fence"),
    )
    # Locked until this transaction commits: a takeover's acquisition waits for
    # it, so every write made under the old token lands before the new one exists.
    .with_for_update()
)
_VM_OF_SNAPSHOT = PreparedStatement(
    select(vm_snapshots.c.vm_id).where(vm_snapshots.c.id == bindparam("b_id"))
)
_RELEASE_FENCED = PreparedStatement(
    vm_leases.delete().where(
        vm_leases.c.vm_id == bindparam("b_vm"),
        vm_leases.c.owner == bindparam("b_owner"),
        vm_leases.c.fence == bindparam("b_fence"),
    )
)
_INSERT_AUDIT = PreparedStatement(audit_records.insert())


def _open_of_type(kind: OperationType, *, newest: bool) -> PreparedStatement:
    """A VM's unfinished operation of one type: the newest, or the oldest."""
    return PreparedStatement(
        select(operations)
        .where(
            operations.c.vm_id == bindparam("b_vm"),
            operations.c.done.is_(False),
            operations.c.type == kind.name,
        )
        .order_by(operations.c.seq.desc() if newest else operations.c.seq)
        .limit(1)
    )


_OPEN_FREEZE = _open_of_type(OperationType.FREEZE, newest=True)
_OPEN_REVERT = _open_of_type(OperationType.REVERT, newest=False)
_OUTCOME_OF = PreparedStatement(
    select(operations.c.done, operations.c.error_code).where(operations.c.id == bindparam("b_id"))
)
#: _UNSET_CURRENT, answering the id of the snapshot that was current (at most one:
#: ux_vm_snapshots_current).
_UNSET_CURRENT_WAS = PreparedStatement(
    update(vm_snapshots)
    .where(vm_snapshots.c.vm_id == bindparam("b_vm"), _IS_CURRENT)
    .values(is_current=False)
    .returning(vm_snapshots.c.id)
)
_OWNERS_OF = PreparedStatement(
    select(volume_owners.c.locator, volume_owners.c.driver).where(
        volume_owners.c.locator.in_(bindparam("b_locators", expanding=True))
    )
)
# A reconcile pass's read of READY snapshots: what their peers must hold, no more.
_READY_REFS = PreparedStatement(
    select(
        vm_snapshots.c.id,
        vm_snapshots.c.vm_id,
        vm_snapshots.c.groups_json,
        vm_snapshots.c.parameters_json,
        vm_snapshots.c.missing,
    ).where(vm_snapshots.c.state == SnapshotState.READY.name)
)
_SNAPSHOT_IDS_IN = PreparedStatement(
    select(vm_snapshots.c.id).where(vm_snapshots.c.state.in_(bindparam("b_states", expanding=True)))
)
_PROJECT_OF_VM = PreparedStatement(
    select(vm_projects.c.project).where(vm_projects.c.vm_id == bindparam("b_vm"))
)


# Statements of the hot path that depend on the dialect (the database's clock, the
# upsert's form) are built once per dialect with bound parameters, not per call:
# building and caching a new statement object for every write cost more CPU than
# running it (docs/design.md, "CPU and freeze time").
@functools.cache
def _acquire_lease_stmt(dialect: str) -> PreparedStatement:
    now = _db_now_of(dialect)
    lease = vm_leases.c
    expire = now + bindparam("b_ttl", type_=Float)
    open_op = exists().where(operations.c.id == lease.operation_id, operations.c.done.is_(False))
    stmt = _upsert_of(dialect, vm_leases).values(
        vm_id=bindparam("b_vm"),
        owner=bindparam("b_owner"),
        operation_id=bindparam("b_op"),
        expire_time=expire,
        fence=1,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[lease.vm_id],
        set_={
            "owner": bindparam("b_owner"),
            "operation_id": bindparam("b_op"),
            "expire_time": expire,
            "fence": lease.fence + 1,
        },
        where=and_(
            or_(lease.owner == bindparam("b_owner"), lease.expire_time <= now),
            or_(lease.operation_id == bindparam("b_op"), ~open_op),
        ),
    ).returning(lease.fence)
    return PreparedStatement(stmt)


def _insert_created(conn: Connection, op_row: dict[str, Any], snap_row: dict[str, Any]) -> None:
    """Insert a new operation and the snapshot it works on (w_create, w_create_leased);
    a uniqueness rule broken is Duplicate when the catalog says which."""
    try:
        _INSERT_OPERATION.execute(conn, op_row)
        _INSERT_SNAPSHOT.execute(conn, snap_row)
    except IntegrityError as exc:
        raise (_duplicate(exc) or exc) from exc


def _lease_fence(conn: Connection, vm_id: str, owner: str, operation_id: str, ttl: float) -> int:
    """Run the lease's acquire statement (Store.w_acquire_lease): the new fencing
    token, or 0 when refused."""
    fence = (
        _acquire_lease_stmt(conn.dialect.name)
        .execute(conn, {"b_vm": vm_id, "b_owner": owner, "b_op": operation_id, "b_ttl": float(ttl)})
        .scalar()
    )
    return int(fence or 0)


@functools.cache
def _renew_lease_stmt(dialect: str) -> PreparedStatement:
    return PreparedStatement(
        update(vm_leases)
        .where(
            vm_leases.c.vm_id == bindparam("b_vm"),
            vm_leases.c.owner == bindparam("b_owner"),
            vm_leases.c.fence == bindparam("b_fence"),
        )
        .values(expire_time=_db_now_of(dialect) + bindparam("b_ttl", type_=Float))
    )


@functools.cache
def _set_owner_stmt(dialect: str) -> PreparedStatement:
    stmt = _upsert_of(dialect, volume_owners).values(
        locator=bindparam("b_locator"),
        driver=bindparam("b_driver"),
        update_time=bindparam("b_time"),
    )
    return PreparedStatement(
        stmt.on_conflict_do_update(
            index_elements=[volume_owners.c.locator],
            set_={"driver": bindparam("b_driver"), "update_time": bindparam("b_time")},
            # The same owner again (every take of the VM records it): nothing
            # written, no page of the catalog changed. update_time: when the
            # volume's owner last changed.
            where=volume_owners.c.driver != stmt.excluded.driver,
        )
    )


#: Namespaces of the PostgreSQL advisory locks vmsnap takes (two-int form: the
#: namespace, then a key), so that they cannot meet another application's.
ADMISSION_LOCKS = 0x766D7301
LEADER_LOCKS = 0x766D7302
#: Longest step text (the column's size; PostgreSQL enforces it).
_MAX_STEP = 255

POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


class CatalogUnavailable(Unavailable):
    """The catalog database cannot be reached (or refused the connection)."""


class Duplicate(Exception):
    """An insert broke a uniqueness rule of the schema: ``what`` is ``request_id``
    or ``name`` (a live snapshot of the VM has that name)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"duplicate {what}")
        self.what = what


def database_url(db: str | Path) -> str:
    """The SQLAlchemy URL of ``--db``: a URL, or a path (SQLite). ``postgres://`` and
    ``postgresql://`` mean psycopg 3. Raises ValueError saying what is accepted."""
    value = str(db)
    if "://" not in value:
        if not value:
            raise ValueError("--db: give sqlite:///PATH, a file path, or postgresql+psycopg://…")
        return f"sqlite:///{Path(value)}"
    scheme, rest = value.split("://", 1)
    if scheme in POSTGRES_SCHEMES:
        return f"postgresql+psycopg://{rest}"
    if scheme == "sqlite":
        return value
    raise ValueError(
        f"--db: unsupported scheme {scheme}://; use sqlite:///PATH or "
        "postgresql+psycopg://USER@HOST/DB (psycopg 3)"
    )


def redacted(url: str) -> str:
    """The URL with any password hidden (for logs and errors)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable database URL>"


def _db_now(conn: Connection) -> ColumnElement[float]:
    """The database's clock in epoch seconds: leases and heartbeats of replicas on
    several machines are compared on one clock, never on each replica's own."""
    return _db_now_of(conn.dialect.name)


def _db_now_of(dialect: str) -> ColumnElement[float]:
    if dialect == "postgresql":
        return cast(func.extract("epoch", func.clock_timestamp()), Float)
    return cast((func.julianday("now") - literal(2440587.5)) * literal(86400.0), Float)


def _upsert(conn: Connection, table: Any) -> Any:
    """INSERT … ON CONFLICT of the connection's dialect (both offer the same API)."""
    return _upsert_of(conn.dialect.name, table)


def _upsert_of(dialect: str, table: Any) -> Any:
    if dialect == "postgresql":
        return pg_dialect.insert(table)
    return sqlite_dialect.insert(table)


def _lock_key(value: str) -> int:
    """A stable signed 32-bit key for an advisory lock."""
    return (zlib.crc32(value.encode()) ^ 0x80000000) - 0x80000000


def _duplicate(exc: IntegrityError) -> Duplicate | None:
    text_ = str(exc.orig)
    if "request_id" in text_:
        return Duplicate("request_id")
    if "ux_vm_snapshots_live_name" in text_ or "vm_snapshots.name" in text_:
        return Duplicate("name")
    return None


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _error(row: Row[Any]) -> ErrorInfo | None:
    if row.error_code is None:
        return None
    return ErrorInfo(row.error_code, row.error_message or "", row.error_reason or "")


def _open_journal(conn: Connection, operation_id: str) -> dict[str, Any]:
    """The journal of an open operation, its row locked until commit (read to be
    merged and written back); OperationClosed when it is finished or unknown."""
    row = _JOURNAL_OF.execute(conn, {"b_id": operation_id}).first()
    if row is None or row.done:
        raise lifecycle.OperationClosed(operation_id)
    journal: dict[str, Any] = json.loads(row.journal_json)
    return journal


def _error_columns(error: ErrorInfo | None) -> dict[str, Any]:
    if error is None:
        return {"error_code": None, "error_message": None, "error_reason": None}
    return {
        "error_code": error.code,
        "error_message": error.message,
        "error_reason": error.reason,
    }


def snapshot_from_row(row: Row[Any]) -> Snapshot:
    return Snapshot(
        id=row.id,
        vm_id=row.vm_id,
        name=row.name,
        state=SnapshotState[row.state],
        agent=row.agent,
        description=row.description,
        include_memory=bool(row.include_memory),
        quiesce=QuiescePolicy[row.quiesce],
        consistency=Consistency[row.consistency],
        groups=tuple(Group.from_json(g) for g in json.loads(row.groups_json)),
        parent_id=row.parent_id,
        current=bool(row.is_current),
        freeze_start=_ts(row.freeze_start),
        freeze_seconds=row.freeze_seconds,
        error=_error(row),
        warnings=tuple(json.loads(row.warnings_json)),
        parameters=dict(json.loads(row.parameters_json)),
        missing=row.missing or "",
        project=row.project or "",
        policy_id=row.policy_id or "",
        policy_name=row.policy_name or "",
        create_time=_ts(row.create_time),
        update_time=_ts(row.update_time),
    )


def operation_from_row(row: Row[Any]) -> OperationRecord:
    return OperationRecord(
        id=row.id,
        type=OperationType[row.type],
        vm_id=row.vm_id,
        vm_snapshot_id=row.vm_snapshot_id,
        request_id=row.request_id,
        done=bool(row.done),
        error=_error(row),
        progress=row.progress,
        step=row.step,
        journal=json.loads(row.journal_json),
        params=json.loads(row.params_json),
        owner=row.owner,
        project=row.project or "",
        create_time=_ts(row.create_time),
        update_time=_ts(row.update_time),
    )


def _snapshot_identity(s: Snapshot) -> dict[str, Any]:
    """The columns a snapshot is created with: written once, by its insert. Its
    project follows its VM's (w_set_vm_project) and its missing mark is the
    reconciler's (w_set_missing): each changed by its own statement only."""
    return {
        "id": s.id,
        "vm_id": s.vm_id,
        "name": s.name,
        "description": s.description,
        "include_memory": s.include_memory,
        "quiesce": s.quiesce.name,
        "parameters_json": json.dumps(s.parameters),
        "missing": s.missing,
        "project": s.project,
        "policy_id": s.policy_id,
        "policy_name": s.policy_name,
    }


def _snapshot_state(s: Snapshot) -> dict[str, Any]:
    """The columns a state write (w_move, w_save) writes: what a take, a revert or a
    delete may change. Never the others: a state write of an operation's copy read
    earlier would put back what someone changed meanwhile (docs/design.md, "A state
    write writes the state"); and each column named is an index entry SQLite
    rewrites."""
    return {
        "state": s.state.name,
        "agent": s.agent,
        "consistency": s.consistency.name,
        "groups_json": json.dumps([g.to_json() for g in s.groups]),
        "parent_id": s.parent_id,
        "is_current": s.current,
        "freeze_start": _epoch(s.freeze_start),
        "freeze_seconds": s.freeze_seconds,
        "warnings_json": json.dumps(list(s.warnings)),
        **_error_columns(s.error),
    }


def snapshot_row(s: Snapshot, now: float, cleanup_json: str = "[]") -> dict[str, Any]:
    """Every column of a new ``vm_snapshots`` row for ``s`` (w_create's insert; tools
    and benchmarks that bulk-insert a catalog use it too)."""
    return {
        **_snapshot_identity(s),
        **_snapshot_state(s),
        "cleanup_json": cleanup_json,
        "create_time": now,
        "update_time": now,
    }


def _kept_from_row(row: Row[Any]) -> KeptState:
    result = Group.from_json(json.loads(row.result_json)).result if row.result_json else None
    return KeptState(
        id=row.id,
        owner=row.owner,
        kind=GroupKind[row.kind],
        operation_id=row.operation_id,
        vm_id=row.vm_id,
        vm_snapshot_id=row.vm_snapshot_id,
        result=result,
    )


#: Outcomes of operations this process finished, kept for the metrics' read.
_ENDED_KEPT = 4096
#: The step of an operation no work has started yet (manager._new_op).
_QUEUED = "queued"


@dataclass(frozen=True, slots=True)
class HeldObject:
    """One group of a READY snapshot as a reconcile pass checks it: the object its
    peer must list."""

    kind: GroupKind
    owner: str
    #: The peer's object id: its result's id, else the snapshot's.
    object_id: str
    disks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReadyRef:
    """A READY snapshot as a reconcile pass reads it (Store.ready_refs): its id,
    VM, parameters, missing mark and the objects its peers must hold. Parsed from
    the row's JSON without building a Snapshot: a pass reads every READY snapshot,
    in a thread whose Python holds the GIL the event loop needs (docs/design.md,
    "A reconcile pass reads what it checks")."""

    id: str
    vm_id: str
    objects: tuple[HeldObject, ...]
    parameters: dict[str, Any]
    missing: str


def _ready_ref(row: Row[Any]) -> ReadyRef:
    objects = []
    for g in json.loads(row.groups_json):
        result = g.get("result")
        objects.append(
            HeldObject(
                GroupKind[g["kind"]],
                g["owner"],
                (result["id"] if result is not None else "") or row.id,
                tuple(c[0] for c in g["claims"]),
            )
        )
    params = row.parameters_json
    return ReadyRef(
        row.id,
        row.vm_id,
        tuple(objects),
        json.loads(params) if params != "{}" else {},
        row.missing or "",
    )


@dataclass(frozen=True)
class Started:
    """A take's first write as data (``Take.prepare``), for the admission that
    inserts its rows so (``Store.w_create_leased``)."""

    #: The snapshot as CREATING.
    snapshot: Snapshot
    #: Every planned group: owed a delete until READY.
    cleanup: tuple[Group, ...]
    #: locator → driver, for the volumes the plan gave to drivers.
    owners: Mapping[str, str]
    #: The operation's step, progress and journal entries.
    step: str
    progress: int
    journal: Mapping[str, Any]


@dataclass(frozen=True)
class Finished:
    """An operation and its snapshot as the transaction that finished them left
    them (``Store.w_read_finished``, read in it): what a caller waiting for the
    operation is answered, with no read after it (docs/design.md, "A create's
    answer from its last write")."""

    operation: OperationRecord
    snapshot: Snapshot | None


class _Touches:
    """A write step that changes an operation: once its transaction is committed,
    the store's listeners are told (live events), never before."""

    __slots__ = ("body", "failed", "finishes", "operation_id")

    def __init__(
        self, operation_id: str, body: Step, *, finishes: bool = False, failed: bool | None = None
    ) -> None:
        self.operation_id = operation_id
        self.body = body
        #: Whether the step finishes the operation (done = true): the lease of a
        #: fenced run of that operation is released in the same transaction.
        self.finishes = finishes
        #: How it finishes it, when the step says (failed or not).
        self.failed = failed

    def __call__(self, conn: Connection) -> Any:
        return self.body(conn)


_P = ParamSpec("_P")
_T = TypeVar("_T")

#: Reader threads of a PostgreSQL catalog (each holds a pooled connection while
#: it reads: with the writer's, fewer than the pool's ``pool_size``).
READER_THREADS = 3

#: Set (to 1) where a PostgreSQL read on an event loop's thread must fail, not
#: only be logged: the test suite sets it, so that every such read is found.
STRICT_LOOP_READS = "VMSNAP_STRICT_LOOP_READS"


#: Where a read's caller is looked for: the first frame outside the catalog's
#: readers (this module, the policies' catalog) and contextlib.
#: Unresolved, as the frames' ``co_filename`` are (a symlink in the install path
#: must not hide every host frame from the check).
_HOST_DIR = os.path.dirname(os.path.dirname(__file__))
_STORE_FILES = frozenset(
    {__file__, contextlib.__file__, os.path.join(_HOST_DIR, "policies", "catalog.py")}
)


class LoopRead(RuntimeError):
    """A PostgreSQL catalog read ran on an event loop's thread (see Store.read)."""


class Store:
    """The host's catalog. One instance per process; safe to share in one event loop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = GroupCommitter(engine)
        #: PostgreSQL: the threads that run reads asked for on the event loop
        #: (:meth:`read`). SQLite: None, they run in place.
        self._readers: concurrent.futures.ThreadPoolExecutor | None = None
        if engine.dialect.name != "sqlite":
            self._readers = concurrent.futures.ThreadPoolExecutor(
                READER_THREADS, thread_name_prefix="catalog-reader"
            )
        self._loop_reads_seen: set[str] = set()
        #: Told the ids of the operations a committed write changed (the events'
        #: broadcaster): on the event loop, after the commit, never inside it.
        self._listeners: list[Callable[[list[str]], Awaitable[None]]] = []
        #: operation id → failed, for operations this process finished (a finished
        #: operation never changes): :meth:`operation_outcome` without a read.
        self._ended: dict[str, bool] = {}
        #: SQLite: the event loop thread's read connection, kept checked out (thread
        #: id, connection). A pool checkout and return cost more than most of the
        #: loop's reads; a SELECT outside a write starts no SQLite transaction, so
        #: the connection holds no snapshot between reads. PostgreSQL reads use the
        #: pool (its pre-ping replaces a connection the server dropped).
        self._loop_reader: tuple[int, Connection] | None = None
        self._keep_reader = engine.dialect.name == "sqlite"
        self._reader_lock = threading.Lock()

    def on_operation_change(self, listener: Callable[[list[str]], Awaitable[None]]) -> None:
        """Await ``listener`` with the ids of the operations each committed
        :meth:`write` changed (journal, end, insert, cancel), before the write
        returns to its caller."""
        self._listeners.append(listener)

    async def _committed(self, steps: Sequence[Step]) -> None:
        ids = [s.operation_id for s in steps if isinstance(s, _Touches)]
        if not ids:
            return
        for listener in self._listeners:
            try:
                await listener(ids)
            except Exception:
                log.exception("operation listener failed")

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return str(self.engine.dialect.name)

    @property
    def url(self) -> str:
        """The database URL with any password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    @classmethod
    def open(
        cls,
        db: str | Path,
        *,
        pool_size: int = 4,
        max_overflow: int = 4,
        pool_timeout: float = 10.0,
    ) -> Store:
        """Open (and migrate) the catalog at ``db``: ``sqlite:///PATH`` (or a path)
        or ``postgresql+psycopg://…``. On PostgreSQL a replica holds at most
        ``pool_size + max_overflow`` connections for reads and writes (the writer
        thread keeps one), plus one for the leader lock (:class:`LeaderLock`)."""
        url = database_url(db)
        if url.startswith("sqlite"):
            engine = create_engine(url)

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                # WAL lets readers run beside the writer; FULL makes each commit
                # durable before we go on to a side effect the journal entry describes.
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=FULL")
                cursor.execute("PRAGMA busy_timeout=5000")
                cursor.close()

        else:
            engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=max_overflow,
                # A request waits this long for a free connection, then fails
                # UNAVAILABLE rather than queueing without bound.
                pool_timeout=pool_timeout,
                # A connection the server dropped (restart, failover) is replaced
                # before use instead of failing the request that drew it.
                pool_pre_ping=True,
                pool_recycle=1800,
                connect_args={"connect_timeout": 5, "application_name": "vmsnap-host"},
            )
        store = cls(engine)
        try:
            store.migrate()
        except DBAPIError as exc:
            engine.dispose()
            raise CatalogUnavailable(
                f"cannot open the catalog at {redacted(url)}: {_first_line(exc)}",
                reason=Reason.CATALOG_UNAVAILABLE,
            ) from exc
        return store

    @classmethod
    def open_sqlite(cls, path: str | Path) -> Store:
        """Open (and migrate) the SQLite catalog at ``path``."""
        return cls.open(f"sqlite:///{path}")

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision. On PostgreSQL replicas
        starting together take turns (an advisory lock held for the transaction)."""
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:ns, 0)"), {"ns": ADMISSION_LOCKS})
            if _revision(conn) == HEAD_REVISION:
                return  # what `alembic upgrade head` would do: nothing
            from alembic import command
            from alembic.config import Config

            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def close(self) -> None:
        self._writer.close()
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        with self._reader_lock:
            self._keep_reader = False
            kept, self._loop_reader = self._loop_reader, None
        if kept is not None:
            kept[1].close()
        self.engine.dispose()

    async def write(self, *steps: Step) -> Any:
        """Run write steps (the ``w_*`` builders) in one durable transaction, off the
        event loop and shared with concurrent callers (group commit); returns the
        last step's result once committed. A refused compare-and-set raises here.

        Inside an operation's work (:func:`~vmsnap_host.store.fence.fenced`) the
        transaction first checks the operation's lease and fencing token: a
        replica that lost the lease is refused (LeaseLost) with nothing written.
        An unreachable database raises CatalogUnavailable (UNAVAILABLE)."""
        fence = current_fence()
        releases = False
        if fence is not None:
            end = fence.end
            releases = (
                end is not None
                and not end.released
                and any(
                    isinstance(s, _Touches) and s.finishes and s.operation_id == end.operation_id
                    for s in steps
                )
            )
            # The operation ends in this transaction: its lease with it (before the
            # caller's steps, so the last step's result stays the write's result),
            # the fence checked by the release itself.
            first = self.w_end_lease(fence) if releases else self.w_check_fence(fence)
            steps = (first, *steps)
        try:
            result = await self._writer.run(*steps)
        except (DBAPIError, PoolTimeout) as exc:
            _raise_unavailable(exc)
            raise
        if releases and fence is not None and fence.end is not None:
            fence.end.released = True
        for step in steps:
            if isinstance(step, _Touches) and step.failed is not None:
                self._ended[step.operation_id] = step.failed
                if len(self._ended) > _ENDED_KEPT:
                    del self._ended[next(iter(self._ended))]
        if self._listeners:
            await self._committed(steps)
        return result

    def write_blocking(self, *steps: Step) -> Any:
        """The same, for code without an event loop (tools, benchmarks, test set-up)."""
        try:
            return transaction(self.engine, steps)
        except (DBAPIError, PoolTimeout) as exc:
            _raise_unavailable(exc)
            raise

    async def read(self, query: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run a read method of this store (``query``) for the event loop without
        blocking it: on PostgreSQL in a reader thread (a round trip to the server,
        and the pool's pre-ping, hold only that thread), on SQLite in place (a read
        of a local file, mostly from the page cache: a hop to a thread and back
        costs more than most reads; docs/design.md, "Catalog reads off the event
        loop")."""
        if self._readers is None:
            return query(*args, **kwargs)
        call = functools.partial(contextvars.copy_context().run, query, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._readers, call)

    def _check_off_loop(self) -> None:
        """A PostgreSQL read by the host's code on an event loop's thread blocks
        every call the loop serves for a round trip: refused where
        STRICT_LOOP_READS is set (the tests), else logged once per place (use
        :meth:`read`). Reads by other code (a test's own checks, tools) pass."""
        if self._readers is None or asyncio._get_running_loop() is None:
            return
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename in _STORE_FILES:
            frame = frame.f_back  # type: ignore[assignment]
        if frame is None or not frame.f_code.co_filename.startswith(_HOST_DIR):
            return
        if os.environ.get(STRICT_LOOP_READS) == "1":
            raise LoopRead("a PostgreSQL catalog read on the event loop; use Store.read")
        where = "".join(traceback.format_stack(limit=6)[:-2])
        if where not in self._loop_reads_seen and len(self._loop_reads_seen) < 100:
            self._loop_reads_seen.add(where)
            log.error(
                "catalog read on the event loop (it blocks every call for a round trip)",
                extra={"fields": {"where": where}},
            )

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        self._check_off_loop()
        kept = self._kept_reader()
        if kept is None:
            try:
                with self.engine.connect() as conn:
                    yield conn
            except (DBAPIError, PoolTimeout) as exc:
                _raise_unavailable(exc)
                raise
            return
        try:
            yield kept
        except (DBAPIError, PoolTimeout) as exc:
            self._drop_reader(kept)
            _raise_unavailable(exc)
            raise
        finally:
            if kept.in_transaction():
                kept.rollback()  # SQLAlchemy's bookkeeping: no SQLite transaction is open

    def _kept_reader(self) -> Connection | None:
        """The loop thread's kept read connection (opened on its first read), or None
        off that thread, off an event loop, and on PostgreSQL."""
        if not self._keep_reader or asyncio._get_running_loop() is None:
            return None
        ident = threading.get_ident()
        kept = self._loop_reader
        if kept is None:
            with self._reader_lock:
                if self._loop_reader is None and self._keep_reader:
                    try:
                        self._loop_reader = (ident, self.engine.connect())
                    except (DBAPIError, PoolTimeout) as exc:
                        _raise_unavailable(exc)
                        raise
                kept = self._loop_reader
        return kept[1] if kept is not None and kept[0] == ident else None

    def _drop_reader(self, conn: Connection) -> None:
        with self._reader_lock:
            if self._loop_reader is not None and self._loop_reader[1] is conn:
                self._loop_reader = None
        with contextlib.suppress(Exception):
            conn.invalidate()
            conn.close()

    def w_check_fence(self, fence: Fence) -> Step:
        """Refuse the transaction (LeaseLost) unless the VM's lease still has this
        owner and token; locks the lease row until commit."""

        def step(conn: Connection) -> None:
            row = _FENCE_OF.execute(
                conn, {"b_vm": fence.vm_id, "b_owner": fence.owner, "b_fence": fence.token}
            ).first()
            if row is None:
                raise lifecycle.LeaseLost(fence.vm_id, fence.owner, fence.token)

        return step

    def w_end_lease(self, fence: Fence) -> Step:
        """:meth:`w_check_fence` and the lease's release in one statement: the
        DELETE matches only while the lease has this owner and token (LeaseLost
        otherwise), and holds the row's lock until commit as the check's
        ``FOR UPDATE`` does."""

        def step(conn: Connection) -> None:
            gone = _RELEASE_FENCED.execute(
                conn, {"b_vm": fence.vm_id, "b_owner": fence.owner, "b_fence": fence.token}
            )
            if gone.rowcount != 1:
                raise lifecycle.LeaseLost(fence.vm_id, fence.owner, fence.token)

        return step

    def w_admit(self, vm_id: str, *, max_open: int, max_live: int | None) -> Step:
        """The per-VM bounds, checked in the transaction that inserts the new
        operation, across every replica: no third party's freeze holding the VM
        (frozen_refusal, ABORTED), at most ``max_open`` unfinished operations
        (running, queued or left open) else ABORTED, at most ``max_live`` live
        snapshots else RESOURCE_EXHAUSTED. On PostgreSQL the VM's admissions take
        turns (a transaction-scoped advisory lock), so two replicas cannot both
        count below the bound."""

        def step(conn: Connection) -> None:
            if conn.dialect.name == "postgresql":
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:ns, :key)"),
                    {"ns": ADMISSION_LOCKS, "key": _lock_key(vm_id)},
                )
            if max_live is None:
                counts = _COUNT_OPEN.execute(conn, {"b_vm": vm_id}).first()
                live = 0
            else:
                counts = _COUNT_BOUNDS.execute(conn, {"b_vm": vm_id}).first()
                live = int(counts.live)
            running = int(counts.running)
            if counts.frozen:
                freeze = _OPEN_FREEZE.execute(conn, {"b_vm": vm_id}).first()
                if freeze is not None:
                    raise frozen_refusal(vm_id, operation_from_row(freeze))
            if running >= max_open:
                raise Aborted(
                    f"VM {vm_id} already has {running} operations running or queued (the "
                    f"bound is {max_open} across the host's replicas); retry when they finish",
                    reason=Reason.VM_QUEUE_FULL,
                )
            if max_live is not None and live >= max_live:
                raise ResourceExhausted(
                    f"VM {vm_id} has {live} snapshots, the maximum is {max_live}; delete "
                    "old ones first (or raise host.max_snapshots_per_vm)",
                    reason=Reason.TOO_MANY_SNAPSHOTS,
                )

        return step

    # --- snapshots: writes --------------------------------------------------------

    def w_create(self, snapshot: Snapshot, operation: OperationRecord) -> Step:
        """Insert a snapshot and the operation that works on it."""

        def step(conn: Connection) -> None:
            now = time.time()
            _insert_created(
                conn, self._operation_columns(operation, now), snapshot_row(snapshot, now)
            )

        return _Touches(operation.id, step)

    def w_create_leased(
        self,
        snapshot: Snapshot,
        operation: OperationRecord,
        owner: str,
        ttl: float,
        started: Started | None = None,
    ) -> Step:
        """w_create with the VM's lease asked first, in the same transaction (as
        w_acquire_lease: one statement, granted to one replica); the step returns the
        new fencing token, or 0 when refused. Granted, and ``started`` given (a
        take's first write, ``Take.prepare``), the rows are inserted as that write
        leaves them: the snapshot CREATING with every planned group owed a delete,
        the operation at its first step with its journal, the volumes' owners
        recorded. The same rows as w_create, then w_move, w_set_owners and
        w_journal, three statements fewer (docs/design.md, "Fewer statements per
        create"). Refused, the snapshot is ALLOCATED and the operation queued, as
        w_create leaves them."""

        def step(conn: Connection) -> int:
            fence = _lease_fence(conn, operation.vm_id, owner, operation.id, ttl)
            now = time.time()
            op_row = self._operation_columns(operation, now)
            snap_row = snapshot_row(snapshot, now)
            if fence and started is not None:
                op_row.update(
                    step=started.step[:_MAX_STEP],
                    progress=started.progress,
                    journal_json=json.dumps({**operation.journal, **started.journal}),
                )
                snap_row = snapshot_row(
                    started.snapshot,
                    now,
                    json.dumps([g.to_json() for g in started.cleanup]),
                )
            _insert_created(conn, op_row, snap_row)
            if fence and started is not None and started.owners:
                self.w_set_owners(dict(started.owners))(conn)
            return fence

        return _Touches(operation.id, step)

    def w_move(
        self,
        snapshot_id: str,
        to: SnapshotState,
        *,
        only: frozenset[SnapshotState] | None = None,
        snapshot: Snapshot | None = None,
        cleanup: Sequence[Group] | None = None,
        current: bool | None = None,
        parent_from_current: bool = False,
    ) -> Step:
        """Move a snapshot to ``to`` if it is in an allowed from-state (compare-and-set;
        :data:`vmsnap_host.state.MOVES`, narrowed by ``only``), writing the state fields
        of ``snapshot`` too when given (_snapshot_state: never those it was created
        with). Raises StaleMove when the row was not in a from-state.
        ``current=True`` makes it the VM's current snapshot;
        ``parent_from_current`` (with it) sets its parent to the snapshot that was
        current, read in the same transaction (a new take's parent)."""
        allowed = lifecycle.sources(to, only)
        columns: dict[str, Any] = {}
        if snapshot is not None:
            if snapshot.id != snapshot_id:
                raise ValueError("w_move: the snapshot does not match the id")
            columns.update(_snapshot_state(snapshot))
        columns["state"] = to.name
        if cleanup is not None:
            columns["cleanup_json"] = json.dumps([g.to_json() for g in cleanup])
        if current is not None:
            columns["is_current"] = current
        from_names = [s.name for s in allowed]

        # A snapshot's VM never changes: the caller's copy names it (one read less).
        known_vm = snapshot.vm_id if snapshot is not None else None

        def step(conn: Connection) -> None:
            values = columns
            if current:
                vm_id = known_vm or _VM_OF_SNAPSHOT.execute(conn, {"b_id": snapshot_id}).scalar()
                if vm_id is not None:
                    if parent_from_current:
                        # The current one unset and named in one statement: the parent.
                        was = _UNSET_CURRENT_WAS.execute(conn, {"b_vm": vm_id}).scalar() or ""
                        values = {**columns, "parent_id": "" if was == snapshot_id else was}
                    else:
                        _UNSET_CURRENT.execute(conn, {"b_vm": vm_id})
            moved = _MOVE_SNAPSHOT.execute(
                conn,
                {"b_id": snapshot_id, "b_from": from_names, **values, "update_time": time.time()},
            )
            if moved.rowcount != 1:
                raise lifecycle.StaleMove(snapshot_id, to, allowed)

        return step

    def w_save(self, snapshot: Snapshot) -> Step:
        """Write the state fields of a snapshot that is still in ``snapshot.state``
        (_snapshot_state; compare-and-set on the state it was read in; raises
        StaleMove)."""
        columns = _snapshot_state(snapshot)
        expect = snapshot.state

        def step(conn: Connection) -> None:
            saved = _MOVE_SNAPSHOT.execute(
                conn,
                {
                    "b_id": snapshot.id,
                    "b_from": [expect.name],
                    **columns,
                    "update_time": time.time(),
                },
            )
            if saved.rowcount != 1:
                raise lifecycle.StaleMove(snapshot.id, expect, frozenset({expect}))

        return step

    def w_make_current(self, vm_id: str, snapshot_id: str) -> Step:
        """Make one READY snapshot (or none, with "") the VM's current one."""

        def step(conn: Connection) -> None:
            _UNSET_CURRENT.execute(conn, {"b_vm": vm_id})
            if snapshot_id:
                conn.execute(
                    update(vm_snapshots)
                    .where(
                        vm_snapshots.c.id == snapshot_id,
                        vm_snapshots.c.state == SnapshotState.READY.name,
                    )
                    .values(is_current=True, update_time=time.time())
                )

        return step

    def w_detach(self, snapshot: Snapshot) -> Step:
        """Take a snapshot out of the tree: children re-pointed to its parent, and
        when it was current, its parent becomes current."""

        def step(conn: Connection) -> None:
            now = time.time()
            conn.execute(
                update(vm_snapshots)
                .where(vm_snapshots.c.parent_id == snapshot.id)
                .values(parent_id=snapshot.parent_id, update_time=now)
            )
            row = conn.execute(
                select(vm_snapshots.c.is_current).where(vm_snapshots.c.id == snapshot.id)
            ).first()
            if row is not None and row.is_current:
                conn.execute(
                    update(vm_snapshots)
                    .where(vm_snapshots.c.id == snapshot.id)
                    .values(is_current=False, update_time=now)
                )
                if snapshot.parent_id:
                    conn.execute(
                        update(vm_snapshots)
                        .where(
                            vm_snapshots.c.id == snapshot.parent_id,
                            vm_snapshots.c.state == SnapshotState.READY.name,
                        )
                        .values(is_current=True, update_time=now)
                    )

        return step

    def w_set_cleanup(self, snapshot_id: str, groups: Sequence[Group]) -> Step:
        """Record the groups whose delete is still owed (empty: nothing left)."""
        cleanup = json.dumps([g.to_json() for g in groups])

        def step(conn: Connection) -> None:
            conn.execute(
                _UPDATE_SNAPSHOT,
                {"b_id": snapshot_id, "cleanup_json": cleanup, "update_time": time.time()},
            )

        return step

    def w_set_missing(self, snapshot_id: str, cause: str) -> Step:
        """Mark (or, with "", clear) why a READY snapshot cannot restore."""

        def step(conn: Connection) -> None:
            conn.execute(
                _UPDATE_SNAPSHOT,
                {"b_id": snapshot_id, "missing": cause, "update_time": time.time()},
            )

        return step

    # --- snapshots: reads ---------------------------------------------------------

    def get_snapshot(self, snapshot_id: str) -> Snapshot | None:
        with self._read() as conn:
            row = _SNAPSHOT_BY_ID.execute(conn, {"b_id": snapshot_id}).first()
        return snapshot_from_row(row) if row else None

    def list_snapshots(
        self,
        vm_id: str,
        after_seq: int,
        limit: int,
        show_removed: bool,
        projects: frozenset[str] | None = None,
    ) -> list[tuple[int, Snapshot]]:
        """Oldest first, after ``after_seq`` (keyset paging: constant cost per page);
        only those of ``projects`` when given."""
        if vm_id and not show_removed and projects is None:  # the common case, prebuilt
            with self._read() as conn:
                rows = _LIST_VM.execute(
                    conn, {"b_after": after_seq, "b_vm": vm_id, "b_limit": limit}
                )
                return [(row.seq, snapshot_from_row(row)) for row in rows]
        query = select(vm_snapshots).where(vm_snapshots.c.seq > after_seq)
        if vm_id:
            query = query.where(vm_snapshots.c.vm_id == vm_id)
        if not show_removed:
            query = query.where(_SHOWN)
        if projects is not None:
            query = query.where(vm_snapshots.c.project.in_(sorted(projects)))
        query = query.order_by(vm_snapshots.c.seq).limit(limit)
        with self._read() as conn:
            return [(row.seq, snapshot_from_row(row)) for row in conn.execute(query)]

    def live_snapshots(self, vm_id: str) -> list[Snapshot]:
        """Every snapshot of a VM that is not REMOVED or ERROR."""
        with self._read() as conn:
            return [
                snapshot_from_row(row) for row in _LIVE_SNAPSHOTS.execute(conn, {"b_vm": vm_id})
            ]

    def snapshot_states(self, snapshot_ids: Sequence[str]) -> dict[str, SnapshotState]:
        """The state of each of these snapshots that the catalog has a record of."""
        out: dict[str, SnapshotState] = {}
        ids = list(dict.fromkeys(snapshot_ids))
        with self._read() as conn:
            for start in range(0, len(ids), 500):
                rows = conn.execute(
                    select(vm_snapshots.c.id, vm_snapshots.c.state).where(
                        vm_snapshots.c.id.in_(ids[start : start + 500])
                    )
                )
                out.update({r.id: SnapshotState[r.state] for r in rows})
        return out

    def ready_refs(self, only: Collection[str]) -> list[ReadyRef]:
        """The READY snapshots among ``only`` (ids), as a reconcile pass checks them
        against its peers' listings: the rows' JSON parsed, no Snapshot built, and
        the rows of other ids skipped unparsed."""
        with self._read() as conn:
            rows = _READY_REFS.iterate(conn)
            return [_ready_ref(row) for row in rows if row.id in only]

    def snapshot_ids_in(self, states: Sequence[SnapshotState]) -> set[str]:
        """The ids of the snapshots in ``states`` (a reconciler pass's first read:
        ids only, a catalog's worth of rows without parsing one)."""
        with self._read() as conn:
            rows = _SNAPSHOT_IDS_IN.iterate(conn, {"b_states": [s.name for s in states]})
            return {row[0] for row in rows}

    def count_by_state(self) -> dict[str, int]:
        """How many snapshots the catalog holds in each state (metrics)."""
        query = select(vm_snapshots.c.state, func.count()).group_by(vm_snapshots.c.state)
        with self._read() as conn:
            return {str(state): int(count) for state, count in conn.execute(query)}

    def find_by_name(self, vm_id: str, name: str) -> Snapshot | None:
        """A snapshot of that VM with that name that still counts (not REMOVED/ERROR)."""
        with self._read() as conn:
            row = _LIVE_BY_NAME.execute(conn, {"b_vm": vm_id, "b_name": name}).first()
        return snapshot_from_row(row) if row else None

    def open_freeze(self, vm_id: str) -> OperationRecord | None:
        """The VM's unfinished FREEZE operation (a third party's freeze), if any."""
        return self._open(_OPEN_FREEZE, vm_id)

    def open_revert(self, vm_id: str) -> OperationRecord | None:
        """The VM's oldest unfinished REVERT operation (running or waiting), if any."""
        return self._open(_OPEN_REVERT, vm_id)

    def _open(self, statement: PreparedStatement, vm_id: str) -> OperationRecord | None:
        with self._read() as conn:
            row = statement.execute(conn, {"b_vm": vm_id}).first()
        return operation_from_row(row) if row else None

    def ended_here(self, operation_id: str) -> tuple[bool, bool] | None:
        """(True, failed) of an operation this process finished, once, from memory
        (no read: nothing to take off the event loop); else None."""
        failed = self._ended.pop(operation_id, None)
        return None if failed is None else (True, failed)

    def operation_outcome(self, operation_id: str) -> tuple[bool, bool] | None:
        """(done, failed) of an operation; None when unknown (for the metrics)."""
        known = self.ended_here(operation_id)
        if known is not None:
            return known
        with self._read() as conn:
            row = _OUTCOME_OF.execute(conn, {"b_id": operation_id}).first()
        return (bool(row.done), row.error_code is not None) if row else None

    def current_snapshot(self, vm_id: str) -> Snapshot | None:
        with self._read() as conn:
            row = _CURRENT.execute(conn, {"b_vm": vm_id}).first()
        return snapshot_from_row(row) if row else None

    def get_cleanup(self, snapshot_id: str) -> list[Group]:
        with self._read() as conn:
            row = conn.execute(
                select(vm_snapshots.c.cleanup_json).where(vm_snapshots.c.id == snapshot_id)
            ).first()
        return [Group.from_json(g) for g in json.loads(row.cleanup_json)] if row else []

    def snapshots_with_cleanup(self) -> list[Snapshot]:
        query = select(vm_snapshots).where(vm_snapshots.c.cleanup_json != "[]")
        with self._read() as conn:
            return [snapshot_from_row(row) for row in conn.execute(query)]

    # --- operations ---------------------------------------------------------------

    @staticmethod
    def _operation_columns(op: OperationRecord, now: float) -> dict[str, Any]:
        return {
            "id": op.id,
            "type": op.type.name,
            "vm_id": op.vm_id,
            "vm_snapshot_id": op.vm_snapshot_id,
            "request_id": op.request_id,
            "done": op.done,
            "progress": op.progress,
            "step": op.step[:_MAX_STEP],
            "journal_json": json.dumps(op.journal),
            "params_json": json.dumps(op.params),
            "owner": op.owner,
            "project": op.project,
            "create_time": now,
            "update_time": now,
            **_error_columns(op.error),
        }

    def w_insert_operation(self, op: OperationRecord) -> Step:
        def step(conn: Connection) -> None:
            try:
                _INSERT_OPERATION.execute(conn, self._operation_columns(op, time.time()))
            except IntegrityError as exc:
                raise (_duplicate(exc) or exc) from exc

        return _Touches(op.id, step)

    def w_read_finished(self, operation_id: str, written: Snapshot) -> Step:
        """The operation and its snapshot as this transaction leaves them (the last
        step of the write that finishes an operation; its result is the write's),
        read on the writer's connection, inside the transaction: what the waiter is
        answered is exactly what committed. ``written``: the snapshot as this
        transaction's state write wrote it (``w_move`` with ``snapshot``); only what
        the catalog alone knows is read (parent, times, project, missing mark: no
        whole row parsed again)."""

        def step(conn: Connection) -> Finished | None:
            op_row = _OPERATION_BY_ID.execute(conn, {"b_id": operation_id}).first()
            row = _SNAPSHOT_BESIDE_COPY.execute(conn, {"b_id": written.id}).first()
            if op_row is None or row is None or row.state != written.state.name:
                return None  # not as written: the waiter reads the catalog
            snapshot = replace(
                written,
                parent_id=row.parent_id,
                project=row.project or "",
                missing=row.missing or "",
                freeze_start=_ts(row.freeze_start),
                create_time=_ts(row.create_time),
                update_time=_ts(row.update_time),
            )
            return Finished(operation_from_row(op_row), snapshot)

        return step

    def get_operation(self, operation_id: str) -> OperationRecord | None:
        with self._read() as conn:
            row = _OPERATION_BY_ID.execute(conn, {"b_id": operation_id}).first()
        return operation_from_row(row) if row else None

    def operation_by_request(self, request_id: str) -> OperationRecord | None:
        with self._read() as conn:
            row = _OPERATION_BY_REQUEST.execute(conn, {"b_rid": request_id}).first()
        return operation_from_row(row) if row else None

    def w_journal(self, operation_id: str, step: str, progress: int, **entries: Any) -> Step:
        """Record progress and journal entries (before the side effect they name);
        refused (OperationClosed) once the operation is finished."""

        def run(conn: Connection) -> None:
            journal = _open_journal(conn, operation_id)
            journal.update(entries)
            _UPDATE_OPERATION.execute(
                conn,
                {
                    "b_id": operation_id,
                    "step": step[:_MAX_STEP],
                    "progress": progress,
                    "journal_json": json.dumps(journal),
                    "update_time": time.time(),
                },
            )

        return _Touches(operation_id, run)

    def w_finish(
        self,
        operation_id: str,
        error: ErrorInfo | None,
        step: str,
        *,
        journal: Mapping[str, Any] | None = None,
        refuse_cancelled: bool = False,
    ) -> Step:
        """Finish an open operation (compare-and-set on done = false; raises
        OperationClosed when it was finished already). ``journal``: entries added
        to its journal in the same UPDATE (as :meth:`w_journal` would, without its
        statements); ``refuse_cancelled``: refused (CancelRequested) when a cancel
        was recorded, as :meth:`w_refuse_cancelled` is, on the same read."""

        def run(conn: Connection) -> None:
            params = {
                "b_id": operation_id,
                "done": True,
                "progress": 100,
                "step": step[:_MAX_STEP],
                "update_time": time.time(),
                **_error_columns(error),
            }
            if journal or refuse_cancelled:
                entries = _open_journal(conn, operation_id)
                if refuse_cancelled and CANCEL_KEY in entries:
                    raise lifecycle.CancelRequested(operation_id)
                if journal:
                    entries.update(journal)
                    params["journal_json"] = json.dumps(entries)
            finished = _OPEN_OPERATION.execute(conn, params)
            if finished.rowcount != 1:
                raise lifecycle.OperationClosed(operation_id)

        return _Touches(operation_id, run, finishes=True, failed=error is not None)

    # --- cancel (docs/design.md, "Live events, cancel and traces") ---------------------------

    def w_drop_queued(self, operation_id: str, error: ErrorInfo, snapshot: Snapshot | None) -> Step:
        """Finish an operation that has not started (its step is still ``queued``:
        every operation's first write changes it, in the transaction of its first
        compare-and-set) as cancelled, and move a take's ALLOCATED ``snapshot`` to
        ERROR in the same transaction. True when dropped; False when it had started
        or ended (nothing written)."""

        def run(conn: Connection) -> bool:
            dropped = conn.execute(
                update(operations)
                .where(
                    operations.c.id == operation_id,
                    operations.c.done.is_(False),
                    operations.c.step == _QUEUED,
                )
                .values(
                    done=True,
                    progress=100,
                    step="cancelled",
                    update_time=time.time(),
                    **_error_columns(error),
                )
            )
            if dropped.rowcount != 1:
                return False
            if snapshot is not None:
                failed = replace(snapshot, state=SnapshotState.ERROR, error=error, current=False)
                self.w_move(snapshot.id, SnapshotState.ERROR, snapshot=failed)(conn)
            return True

        return _Touches(operation_id, run)

    def w_request_cancel(self, operation_id: str) -> Step:
        """Record a cancel request in a running operation's journal (checked by
        the work at its next step, :meth:`w_refuse_cancelled`). False when the
        operation is finished (nothing written)."""

        def run(conn: Connection) -> bool:
            row = _JOURNAL_OF.execute(conn, {"b_id": operation_id}).first()
            if row is None or row.done:
                return False
            journal = json.loads(row.journal_json)
            journal[CANCEL_KEY] = time.time()
            conn.execute(
                update(operations)
                .where(operations.c.id == operation_id)
                .values(journal_json=json.dumps(journal), update_time=time.time())
            )
            return True

        return _Touches(operation_id, run)

    def w_refuse_cancelled(self, operation_id: str) -> Step:
        """Refuse the transaction (CancelRequested) when the operation was asked to
        stop: the compare-and-set that keeps a cancelled take from committing
        READY, or a cancelled revert from starting to move disks."""

        def run(conn: Connection) -> None:
            row = _JOURNAL_OF.execute(conn, {"b_id": operation_id}).first()
            if row is not None and CANCEL_KEY in json.loads(row.journal_json):
                raise lifecycle.CancelRequested(operation_id)

        return run

    def cancel_requested(self, operation_id: str) -> bool:
        """Whether a cancel of the operation was recorded (one indexed read)."""
        op = self.get_operation(operation_id)
        return op is not None and CANCEL_KEY in op.journal

    def operations_changed_since(
        self, vm_id: str, since: float, limit: int
    ) -> list[OperationRecord]:
        """Operations (of one VM, or all) changed at or after ``since``, oldest change
        first, at most ``limit`` (the newest ones)."""
        query = select(operations).where(operations.c.update_time >= since)
        if vm_id:
            query = query.where(operations.c.vm_id == vm_id)
        query = query.order_by(operations.c.update_time.desc()).limit(limit)
        with self._read() as conn:
            rows = [operation_from_row(row) for row in conn.execute(query)]
        return rows[::-1]

    def list_operations(
        self,
        vm_id: str,
        before_seq: int | None,
        limit: int,
        only_running: bool,
        projects: frozenset[str] | None = None,
    ) -> list[tuple[int, OperationRecord]]:
        """Newest first, before ``before_seq``; only those of ``projects`` when given."""
        query = select(operations)
        if projects is not None:
            query = query.where(operations.c.project.in_(sorted(projects)))
        if before_seq is not None:
            query = query.where(operations.c.seq < before_seq)
        if vm_id:
            query = query.where(operations.c.vm_id == vm_id)
        if only_running:
            query = query.where(operations.c.done.is_(False))
        query = query.order_by(operations.c.seq.desc()).limit(limit)
        with self._read() as conn:
            return [(row.seq, operation_from_row(row)) for row in conn.execute(query)]

    def unfinished_operations(self) -> list[OperationRecord]:
        query = select(operations).where(operations.c.done.is_(False)).order_by(operations.c.seq)
        with self._read() as conn:
            return [operation_from_row(row) for row in conn.execute(query)]

    def operations_done(self, operation_ids: Sequence[str]) -> dict[str, bool]:
        """For each known operation id, whether it is finished."""
        ids = list(dict.fromkeys(operation_ids))
        out: dict[str, bool] = {}
        with self._read() as conn:
            for start in range(0, len(ids), 500):
                rows = conn.execute(
                    select(operations.c.id, operations.c.done).where(
                        operations.c.id.in_(ids[start : start + 500])
                    )
                )
                out.update({r.id: bool(r.done) for r in rows})
        return out

    # --- per-VM leases ------------------------------------------------------------

    def w_acquire_lease(self, vm_id: str, owner: str, operation_id: str, ttl: float) -> Step:
        """Own the VM for ``ttl`` seconds; the step returns the new fencing token
        (> 0), or 0 when refused. One statement (INSERT … ON CONFLICT DO UPDATE …
        WHERE), so two replicas cannot both win. Granted when the VM has no lease,
        or when its lease is this owner's or ran out *and* the lease's operation is
        this one or finished. A lease stays with its operation until that is
        finished: one abandoned by a dead replica is resolved by whoever takes it
        over before anything else runs on the VM, and two operations of one
        replica never hold the VM together. (A new take's admission asks for it
        with its inserts: w_create_leased.)"""

        def step(conn: Connection) -> int:
            return _lease_fence(conn, vm_id, owner, operation_id, ttl)

        return step

    def w_renew_lease(self, vm_id: str, owner: str, fence: int, ttl: float) -> Step:
        """Extend a lease still held with this fencing token; the step returns False
        when it was lost (expired and taken, or released)."""

        def step(conn: Connection) -> bool:
            renewed = _renew_lease_stmt(conn.dialect.name).execute(
                conn,
                {"b_vm": vm_id, "b_owner": owner, "b_fence": fence, "b_ttl": float(ttl)},
            )
            return bool(renewed.rowcount == 1)

        return step

    def w_release_lease(self, vm_id: str, owner: str, fence: int | None = None) -> Step:
        def step(conn: Connection) -> None:
            if fence is None:
                _RELEASE_LEASE.execute(conn, {"b_vm": vm_id, "b_owner": owner})
                return
            _RELEASE_FENCED.execute(conn, {"b_vm": vm_id, "b_owner": owner, "b_fence": fence})

        return step

    def lease_owner(self, vm_id: str) -> tuple[str, float] | None:
        with self._read() as conn:
            row = _LEASE_OF.execute(conn, {"b_vm": vm_id}).first()
        return (row.owner, row.expire_time) if row else None

    def lease_holder(self, vm_id: str) -> str | None:
        """The owner of the VM's lease while it runs (on the database's clock)."""
        with self._read() as conn:
            row = conn.execute(
                select(vm_leases.c.owner).where(
                    vm_leases.c.vm_id == vm_id, vm_leases.c.expire_time > _db_now(conn)
                )
            ).first()
        return row.owner if row else None

    def leased_operations(self) -> set[str]:
        """Ids of the operations whose VM lease runs now (on any replica)."""
        with self._read() as conn:
            rows = conn.execute(
                select(vm_leases.c.operation_id).where(vm_leases.c.expire_time > _db_now(conn))
            )
            return {r.operation_id for r in rows}

    # --- replicas -----------------------------------------------------------------

    def w_heartbeat(self, replica: str, ttl: float) -> Step:
        """This replica is alive for ``ttl`` more seconds."""

        def step(conn: Connection) -> None:
            now = _db_now(conn)
            stmt = _upsert(conn, replicas).values(
                id=replica, expire_time=now + ttl, start_time=time.time()
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[replicas.c.id], set_={"expire_time": now + ttl}
                )
            )

        return step

    def w_leave(self, replica: str) -> Step:
        """A replica stopping cleanly: its operations may be taken over at once."""

        def step(conn: Connection) -> None:
            conn.execute(replicas.delete().where(replicas.c.id == replica))

        return step

    def live_replicas(self) -> set[str]:
        with self._read() as conn:
            rows = conn.execute(select(replicas.c.id).where(replicas.c.expire_time > _db_now(conn)))
            return {r.id for r in rows}

    def w_claim_operation(self, operation_id: str, previous: str, owner: str) -> Step:
        """Take over an open operation from ``previous`` (compare-and-set on its
        owner): True for the one replica that wins."""

        def step(conn: Connection) -> bool:
            claimed = conn.execute(
                update(operations)
                .where(
                    operations.c.id == operation_id,
                    operations.c.owner == previous,
                    operations.c.done.is_(False),
                )
                .values(owner=owner, update_time=time.time())
            )
            return bool(claimed.rowcount == 1)

        return step

    # --- kept states of reverts ---------------------------------------------------

    def w_keep(self, kept: KeptState) -> Step:
        """Journal a kept state before it is made (its result comes later)."""

        def step(conn: Connection) -> None:
            conn.execute(
                kept_states.insert().values(
                    id=kept.id,
                    owner=kept.owner,
                    kind=kept.kind.name,
                    operation_id=kept.operation_id,
                    vm_id=kept.vm_id,
                    vm_snapshot_id=kept.vm_snapshot_id,
                    result_json=_kept_result_json(kept),
                    create_time=time.time(),
                )
            )

        return step

    def w_kept_result(self, kept: KeptState) -> Step:
        """Record what the owner answered for a kept state."""

        def step(conn: Connection) -> None:
            conn.execute(
                update(kept_states)
                .where(kept_states.c.id == kept.id, kept_states.c.owner == kept.owner)
                .values(result_json=_kept_result_json(kept))
            )

        return step

    def w_forget_kept(self, kept_id: str, owner: str) -> Step:
        """The owner confirmed the kept state is gone."""

        def step(conn: Connection) -> None:
            conn.execute(
                kept_states.delete().where(
                    kept_states.c.id == kept_id, kept_states.c.owner == owner
                )
            )

        return step

    def kept_states(self, operation_id: str = "") -> list[KeptState]:
        """Kept states still held (of one operation, or all)."""
        query = select(kept_states).order_by(kept_states.c.create_time)
        if operation_id:
            query = query.where(kept_states.c.operation_id == operation_id)
        with self._read() as conn:
            return [_kept_from_row(row) for row in conn.execute(query)]

    # --- volume owners ------------------------------------------------------------

    def w_set_owners(self, owners: dict[str, str]) -> Step:
        """Record locator → driver for the volumes a plan gave to drivers."""

        def step(conn: Connection) -> None:
            now = time.time()
            stmt = _set_owner_stmt(conn.dialect.name)
            for locator, driver in sorted(owners.items()):
                stmt.execute(conn, {"b_locator": locator, "b_driver": driver, "b_time": now})

        return step

    def w_forget_owner(self, driver: str) -> Step:
        """An operator removed the driver: its volumes have no owner any more."""

        def step(conn: Connection) -> None:
            conn.execute(volume_owners.delete().where(volume_owners.c.driver == driver))

        return step

    def volume_owners(self, locators: Sequence[str]) -> dict[str, str]:
        """locator → the driver that last owned it, for those that have one."""
        if not locators:
            return {}
        with self._read() as conn:
            rows = _OWNERS_OF.execute(conn, {"b_locators": list(locators)})
            return {r.locator: r.driver for r in rows}

    # --- reconciler findings ------------------------------------------------------

    def w_add_finding(
        self,
        kind: str,
        *,
        peer: str = "",
        object_id: str = "",
        vm_id: str = "",
        vm_snapshot_id: str = "",
        action: str = "",
        detail: str = "",
    ) -> Step:
        def step(conn: Connection) -> None:
            conn.execute(
                findings.insert().values(
                    time=time.time(),
                    kind=kind,
                    peer=peer,
                    object_id=object_id,
                    vm_id=vm_id,
                    vm_snapshot_id=vm_snapshot_id,
                    action=action,
                    detail=detail,
                )
            )

        return step

    def findings(self, limit: int = 1000, before_seq: int | None = None) -> list[dict[str, Any]]:
        """The newest findings first (older than ``before_seq`` when given: paging)."""
        query = select(findings)
        if before_seq is not None:
            query = query.where(findings.c.seq < before_seq)
        query = query.order_by(findings.c.seq.desc()).limit(limit)
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    # --- registrations ------------------------------------------------------------

    def w_save_registration(
        self, kind: str, address: str, name: str, order: int, tls: dict[str, str]
    ) -> Step:
        def step(conn: Connection) -> None:
            values = {"name": name, "sort_order": order, "tls_json": json.dumps(tls)}
            stmt = _upsert(conn, registrations).values(kind=kind, address=address, **values)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[registrations.c.kind, registrations.c.address], set_=values
                )
            )

        return step

    def w_remove_registration(self, kind: str, address: str) -> Step:
        def step(conn: Connection) -> None:
            conn.execute(
                registrations.delete().where(
                    and_(registrations.c.kind == kind, registrations.c.address == address)
                )
            )

        return step

    def registrations(self, kind: str) -> list[tuple[str, str, int, dict[str, str]]]:
        """(address, name, order, tls) of every registration of a kind."""
        query = select(registrations).where(registrations.c.kind == kind)
        with self._read() as conn:
            return [
                (r.address, r.name, r.sort_order, dict(json.loads(r.tls_json)))
                for r in conn.execute(query)
            ]

    # --- projects of VMs (issue 12) ------------------------------------------------

    def vm_project(self, vm_id: str) -> str | None:
        """The project of a VM, or None when it has none."""
        with self._read() as conn:
            row = _PROJECT_OF_VM.execute(conn, {"b_vm": vm_id}).first()
        return row.project if row else None

    def vm_project_map(self, vm_ids: Sequence[str]) -> dict[str, str]:
        """vm id → project, for those that have one."""
        ids = list(dict.fromkeys(vm_ids))
        out: dict[str, str] = {}
        with self._read() as conn:
            for start in range(0, len(ids), 500):
                rows = conn.execute(
                    select(vm_projects).where(vm_projects.c.vm_id.in_(ids[start : start + 500]))
                )
                out.update({r.vm_id: r.project for r in rows})
        return out

    def w_set_vm_project(self, vm_id: str, project: str) -> Step:
        """Give a VM its project; its snapshots and operations of no project follow
        (adopting a VM that existed before projects)."""

        def step(conn: Connection) -> None:
            now = time.time()
            conn.execute(vm_projects.delete().where(vm_projects.c.vm_id == vm_id))
            conn.execute(vm_projects.insert().values(vm_id=vm_id, project=project, update_time=now))
            conn.execute(
                update(vm_snapshots)
                .where(vm_snapshots.c.vm_id == vm_id, vm_snapshots.c.project == "")
                .values(project=project)
            )
            conn.execute(
                update(operations)
                .where(operations.c.vm_id == vm_id, operations.c.project == "")
                .values(project=project)
            )

        return step

    def w_forget_vm_project(self, vm_id: str) -> Step:
        """The VM is undefined: its id may be defined again, in any project (its
        snapshots' records keep the project they were taken in)."""

        def step(conn: Connection) -> None:
            conn.execute(vm_projects.delete().where(vm_projects.c.vm_id == vm_id))

        return step

    # --- the audit log (issue 12) ---------------------------------------------------

    def w_audit(self, **record: Any) -> Step:
        """Append one audit record (columns of ``audit_records``; time now)."""

        def step(conn: Connection) -> None:
            _INSERT_AUDIT.execute(conn, {"time": time.time(), **record})

        return step

    def audit_records(
        self,
        limit: int,
        before_seq: int | None = None,
        *,
        principal: str = "",
        project: str = "",
        only_refused: bool = False,
    ) -> list[dict[str, Any]]:
        """Newest first (older than ``before_seq`` when given: paging)."""
        query = select(audit_records)
        if before_seq is not None:
            query = query.where(audit_records.c.seq < before_seq)
        if principal:
            query = query.where(audit_records.c.principal == principal)
        if project:
            query = query.where(audit_records.c.project == project)
        if only_refused:
            query = query.where(audit_records.c.refused.is_(True))
        query = query.order_by(audit_records.c.seq.desc()).limit(limit)
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]


def _first_line(exc: BaseException) -> str:
    """The driver's own first line (psycopg and sqlite3 never put a password in it)."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0][:300] if lines else type(orig).__name__


def _raise_unavailable(exc: DBAPIError | PoolTimeout) -> None:
    """Raise a connection-level failure as UNAVAILABLE; return for anything else (a
    constraint, a bug in SQL), which the caller re-raises as it is."""
    if isinstance(exc, PoolTimeout):
        raise CatalogUnavailable(
            "every catalog connection of this host stayed busy; nothing was done: "
            "retry, or give the host more connections",
            reason=Reason.CATALOG_BUSY,
        ) from exc
    if isinstance(exc, IntegrityError) or not (
        exc.connection_invalidated or type(exc).__name__ in ("OperationalError", "InterfaceError")
    ):
        return
    raise CatalogUnavailable(
        f"the catalog database is unreachable ({_first_line(exc)}); nothing was done: "
        "retry once it is back",
        reason=Reason.CATALOG_UNAVAILABLE,
    ) from exc


def _kept_result_json(kept: KeptState) -> str:
    if kept.result is None:
        return ""
    return json.dumps(kept.group.to_json())
