"""The catalog: snapshots, operations and leases, on SQLAlchemy Core.

SQLite is the embedded default (WAL, synchronous FULL: a committed journal
entry survives a power cut); the SQL is portable so PostgreSQL can follow.
Reads are synchronous and short. Writes come in two forms: the synchronous
methods (one transaction each, on the caller's thread) and composable write
steps (``w_*``) that :meth:`Store.write` commits in the writer thread, several
in one transaction and shared with concurrent operations (group commit, see
:mod:`vmsnap_host.store.writer`): the hot path of an operation uses those, so
an fsync never blocks the event loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Row

from vmsnap_host.model import (
    ErrorInfo,
    Group,
    OperationRecord,
    OperationType,
    QuiescePolicy,
    Snapshot,
    SnapshotState,
)
from vmsnap_host.store.schema import operations, registrations, vm_leases, vm_snapshots
from vmsnap_host.store.writer import GroupCommitter, Step
from vmsnap_sdk import Consistency

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# The statements of the hot path, built once with bound parameters: SQLAlchemy
# then reuses their compiled form without rebuilding the expression and its
# cache key on every call (half the cost of a small query, measured).
_DEAD = [SnapshotState.REMOVED.name, SnapshotState.ERROR.name]
_SNAPSHOT_BY_ID = select(vm_snapshots).where(vm_snapshots.c.id == bindparam("b_id"))
_OPERATION_BY_ID = select(operations).where(operations.c.id == bindparam("b_id"))
_OPERATION_BY_REQUEST = select(operations).where(operations.c.request_id == bindparam("b_rid"))
_LIVE_BY_NAME = select(vm_snapshots).where(
    vm_snapshots.c.vm_id == bindparam("b_vm"),
    vm_snapshots.c.name == bindparam("b_name"),
    vm_snapshots.c.state.not_in(_DEAD),
)
_COUNT_LIVE = select(func.count()).where(
    vm_snapshots.c.vm_id == bindparam("b_vm"), vm_snapshots.c.state.not_in(_DEAD)
)
_CURRENT = select(vm_snapshots).where(
    vm_snapshots.c.vm_id == bindparam("b_vm"), vm_snapshots.c.is_current.is_(True)
)
_UPDATE_SNAPSHOT = update(vm_snapshots).where(vm_snapshots.c.id == bindparam("b_id"))
_UNSET_CURRENT = (
    update(vm_snapshots)
    .where(vm_snapshots.c.vm_id == bindparam("b_vm"), vm_snapshots.c.is_current.is_(True))
    .values(is_current=False)
)
_JOURNAL_OF = select(operations.c.journal_json).where(operations.c.id == bindparam("b_id"))
_UPDATE_OPERATION = update(operations).where(operations.c.id == bindparam("b_id"))
_LEASE_OF = select(vm_leases).where(vm_leases.c.vm_id == bindparam("b_vm"))
_UPDATE_LEASE = update(vm_leases).where(vm_leases.c.vm_id == bindparam("b_vm"))
_RELEASE_LEASE = vm_leases.delete().where(
    vm_leases.c.vm_id == bindparam("b_vm"), vm_leases.c.owner == bindparam("b_owner")
)
# One VM's live snapshots, a page after a sequence number (ListVMSnapshots).
_LIST_VM = (
    select(vm_snapshots)
    .where(
        vm_snapshots.c.seq > bindparam("b_after"),
        vm_snapshots.c.vm_id == bindparam("b_vm"),
        vm_snapshots.c.state != SnapshotState.REMOVED.name,
    )
    .order_by(vm_snapshots.c.seq)
    .limit(bindparam("b_limit"))
)
_INSERT_SNAPSHOT = vm_snapshots.insert()
_INSERT_OPERATION = operations.insert()
_INSERT_LEASE = vm_leases.insert()


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _error(row: Row[Any]) -> ErrorInfo | None:
    if row.error_code is None:
        return None
    return ErrorInfo(row.error_code, row.error_message or "", row.error_reason or "")


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
        create_time=_ts(row.create_time),
        update_time=_ts(row.update_time),
    )


def _snapshot_columns(s: Snapshot) -> dict[str, Any]:
    return {
        "id": s.id,
        "vm_id": s.vm_id,
        "name": s.name,
        "description": s.description,
        "state": s.state.name,
        "agent": s.agent,
        "include_memory": s.include_memory,
        "quiesce": s.quiesce.name,
        "consistency": s.consistency.name,
        "groups_json": json.dumps([g.to_json() for g in s.groups]),
        "parent_id": s.parent_id,
        "is_current": s.current,
        "freeze_start": _epoch(s.freeze_start),
        "freeze_seconds": s.freeze_seconds,
        "warnings_json": json.dumps(list(s.warnings)),
        "parameters_json": json.dumps(s.parameters),
        **_error_columns(s.error),
    }


class Store:
    """The host's catalog. One instance per process; safe to share in one event loop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = GroupCommitter(engine)

    @classmethod
    def open_sqlite(cls, path: str | Path) -> Store:
        """Open (and migrate) the SQLite catalog at ``path``."""
        engine = create_engine(f"sqlite:///{path}", future=True)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets readers run beside the writer; FULL makes each commit durable
            # before we go on to a side effect that the journal entry describes.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

        store = cls(engine)
        store.migrate()
        return store

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def close(self) -> None:
        self._writer.close()
        self.engine.dispose()

    async def write(self, *steps: Step) -> Any:
        """Run write steps (the ``w_*`` builders) in one durable transaction, off the
        event loop and shared with concurrent callers (group commit); returns the
        last step's result once committed."""
        return await self._writer.run(*steps)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # --- snapshots ----------------------------------------------------------------

    def create(self, snapshot: Snapshot, operation: OperationRecord) -> None:
        """Insert a snapshot and the operation that works on it, in one transaction."""
        with self._tx() as conn:
            self.w_create(snapshot, operation)(conn)

    def w_create(self, snapshot: Snapshot, operation: OperationRecord) -> Step:
        def step(conn: Connection) -> None:
            now = time.time()
            conn.execute(
                _INSERT_SNAPSHOT,
                {
                    **_snapshot_columns(snapshot),
                    "cleanup_json": "[]",
                    "create_time": now,
                    "update_time": now,
                },
            )
            conn.execute(_INSERT_OPERATION, self._operation_columns(operation, now))

        return step

    def get_snapshot(self, snapshot_id: str) -> Snapshot | None:
        with self.engine.connect() as conn:
            row = conn.execute(_SNAPSHOT_BY_ID, {"b_id": snapshot_id}).first()
        return snapshot_from_row(row) if row else None

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Write every field of an existing snapshot."""
        with self._tx() as conn:
            self.w_save_snapshot(snapshot)(conn)

    def w_save_snapshot(self, snapshot: Snapshot) -> Step:
        def step(conn: Connection) -> None:
            conn.execute(
                _UPDATE_SNAPSHOT,
                {"b_id": snapshot.id, **_snapshot_columns(snapshot), "update_time": time.time()},
            )

        return step

    def commit_ready(self, snapshot: Snapshot) -> None:
        """Save a snapshot that became READY, make it current, clear owed deletes:
        one transaction, so a crash leaves either all of it or none."""
        with self._tx() as conn:
            self.w_commit_ready(snapshot)(conn)

    def w_commit_ready(self, snapshot: Snapshot) -> Step:
        def step(conn: Connection) -> None:
            conn.execute(_UNSET_CURRENT, {"b_vm": snapshot.vm_id})
            conn.execute(
                _UPDATE_SNAPSHOT,
                {
                    "b_id": snapshot.id,
                    **_snapshot_columns(snapshot),
                    "cleanup_json": "[]",
                    "update_time": time.time(),
                },
            )

        return step

    def set_state(self, snapshot_id: str, state: SnapshotState) -> None:
        with self._tx() as conn:
            self.w_set_state(snapshot_id, state)(conn)

    def w_set_state(self, snapshot_id: str, state: SnapshotState) -> Step:
        def step(conn: Connection) -> None:
            conn.execute(
                update(vm_snapshots)
                .where(vm_snapshots.c.id == snapshot_id)
                .values(state=state.name, update_time=time.time())
            )

        return step

    def list_snapshots(
        self, vm_id: str, after_seq: int, limit: int, show_removed: bool
    ) -> list[tuple[int, Snapshot]]:
        """Oldest first, after ``after_seq`` (keyset paging: constant cost per page)."""
        if vm_id and not show_removed:  # the common case, prebuilt
            with self.engine.connect() as conn:
                rows = conn.execute(
                    _LIST_VM, {"b_after": after_seq, "b_vm": vm_id, "b_limit": limit}
                )
                return [(row.seq, snapshot_from_row(row)) for row in rows]
        query = select(vm_snapshots).where(vm_snapshots.c.seq > after_seq)
        if vm_id:
            query = query.where(vm_snapshots.c.vm_id == vm_id)
        if not show_removed:
            query = query.where(vm_snapshots.c.state != SnapshotState.REMOVED.name)
        query = query.order_by(vm_snapshots.c.seq).limit(limit)
        with self.engine.connect() as conn:
            return [(row.seq, snapshot_from_row(row)) for row in conn.execute(query)]

    def live_snapshots(self, vm_id: str) -> list[Snapshot]:
        """Every snapshot of a VM that is not REMOVED or ERROR."""
        query = select(vm_snapshots).where(
            and_(
                vm_snapshots.c.vm_id == vm_id,
                vm_snapshots.c.state.not_in([SnapshotState.REMOVED.name, SnapshotState.ERROR.name]),
            )
        )
        with self.engine.connect() as conn:
            return [snapshot_from_row(row) for row in conn.execute(query)]

    def count_live(self, vm_id: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(_COUNT_LIVE, {"b_vm": vm_id}).scalar_one())

    def find_by_name(self, vm_id: str, name: str) -> Snapshot | None:
        """A snapshot of that VM with that name that still counts (not REMOVED/ERROR)."""
        with self.engine.connect() as conn:
            row = conn.execute(_LIVE_BY_NAME, {"b_vm": vm_id, "b_name": name}).first()
        return snapshot_from_row(row) if row else None

    def current_snapshot(self, vm_id: str) -> Snapshot | None:
        with self.engine.connect() as conn:
            row = conn.execute(_CURRENT, {"b_vm": vm_id}).first()
        return snapshot_from_row(row) if row else None

    def make_current(self, vm_id: str, snapshot_id: str) -> None:
        """Make one snapshot (or none, with "") the VM's current one."""
        with self._tx() as conn:
            conn.execute(
                update(vm_snapshots)
                .where(and_(vm_snapshots.c.vm_id == vm_id, vm_snapshots.c.is_current.is_(True)))
                .values(is_current=False)
            )
            if snapshot_id:
                conn.execute(
                    update(vm_snapshots)
                    .where(vm_snapshots.c.id == snapshot_id)
                    .values(is_current=True, update_time=time.time())
                )

    def detach(self, snapshot: Snapshot) -> None:
        """Take a snapshot out of the tree: children re-pointed to its parent, and
        when it was current, its parent becomes current (one transaction)."""
        now = time.time()
        with self._tx() as conn:
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
                        .where(vm_snapshots.c.id == snapshot.parent_id)
                        .values(is_current=True, update_time=now)
                    )

    def get_cleanup(self, snapshot_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(vm_snapshots.c.cleanup_json).where(vm_snapshots.c.id == snapshot_id)
            ).first()
        return list(json.loads(row.cleanup_json)) if row else []

    def set_cleanup(self, snapshot_id: str, groups: Sequence[Group]) -> None:
        """Record the groups whose delete is still owed (empty: nothing left)."""
        with self._tx() as conn:
            self.w_set_cleanup(snapshot_id, groups)(conn)

    def w_set_cleanup(self, snapshot_id: str, groups: Sequence[Group]) -> Step:
        cleanup = json.dumps([g.to_json() for g in groups])

        def step(conn: Connection) -> None:
            conn.execute(
                _UPDATE_SNAPSHOT,
                {"b_id": snapshot_id, "cleanup_json": cleanup, "update_time": time.time()},
            )

        return step

    def snapshots_with_cleanup(self) -> list[Snapshot]:
        query = select(vm_snapshots).where(vm_snapshots.c.cleanup_json != "[]")
        with self.engine.connect() as conn:
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
            "step": op.step,
            "journal_json": json.dumps(op.journal),
            "params_json": json.dumps(op.params),
            "owner": op.owner,
            "create_time": now,
            "update_time": now,
            **_error_columns(op.error),
        }

    def insert_operation(self, op: OperationRecord) -> None:
        with self._tx() as conn:
            conn.execute(operations.insert().values(**self._operation_columns(op, time.time())))

    def get_operation(self, operation_id: str) -> OperationRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(_OPERATION_BY_ID, {"b_id": operation_id}).first()
        return operation_from_row(row) if row else None

    def operation_by_request(self, request_id: str) -> OperationRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(_OPERATION_BY_REQUEST, {"b_rid": request_id}).first()
        return operation_from_row(row) if row else None

    def journal(self, operation_id: str, step: str, progress: int, **entries: Any) -> None:
        """Record progress and journal entries durably (before the side effect they name)."""
        with self._tx() as conn:
            self.w_journal(operation_id, step, progress, **entries)(conn)

    def w_journal(self, operation_id: str, step: str, progress: int, **entries: Any) -> Step:
        def run(conn: Connection) -> None:
            row = conn.execute(_JOURNAL_OF, {"b_id": operation_id}).first()
            journal = json.loads(row.journal_json) if row else {}
            journal.update(entries)
            conn.execute(
                _UPDATE_OPERATION,
                {
                    "b_id": operation_id,
                    "step": step,
                    "progress": progress,
                    "journal_json": json.dumps(journal),
                    "update_time": time.time(),
                },
            )

        return run

    def finish_operation(self, operation_id: str, error: ErrorInfo | None, step: str) -> None:
        with self._tx() as conn:
            self.w_finish_operation(operation_id, error, step)(conn)

    def w_finish_operation(self, operation_id: str, error: ErrorInfo | None, step: str) -> Step:
        def run(conn: Connection) -> None:
            conn.execute(
                _UPDATE_OPERATION,
                {
                    "b_id": operation_id,
                    "done": True,
                    "progress": 100,
                    "step": step,
                    "update_time": time.time(),
                    **_error_columns(error),
                },
            )

        return run

    def list_operations(
        self, vm_id: str, before_seq: int | None, limit: int, only_running: bool
    ) -> list[tuple[int, OperationRecord]]:
        """Newest first, before ``before_seq``."""
        query = select(operations)
        if before_seq is not None:
            query = query.where(operations.c.seq < before_seq)
        if vm_id:
            query = query.where(operations.c.vm_id == vm_id)
        if only_running:
            query = query.where(operations.c.done.is_(False))
        query = query.order_by(operations.c.seq.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [(row.seq, operation_from_row(row)) for row in conn.execute(query)]

    def unfinished_operations(self) -> list[OperationRecord]:
        query = select(operations).where(operations.c.done.is_(False)).order_by(operations.c.seq)
        with self.engine.connect() as conn:
            return [operation_from_row(row) for row in conn.execute(query)]

    # --- per-VM leases ------------------------------------------------------------

    def acquire_lease(self, vm_id: str, owner: str, operation_id: str, ttl: float) -> bool:
        """Own the VM for ``ttl`` seconds unless another live owner holds it."""
        with self._tx() as conn:
            return bool(self.w_acquire_lease(vm_id, owner, operation_id, ttl)(conn))

    def w_acquire_lease(self, vm_id: str, owner: str, operation_id: str, ttl: float) -> Step:
        def step(conn: Connection) -> bool:
            now = time.time()
            row = conn.execute(_LEASE_OF, {"b_vm": vm_id}).first()
            if row is None:
                conn.execute(
                    _INSERT_LEASE,
                    {
                        "vm_id": vm_id,
                        "owner": owner,
                        "operation_id": operation_id,
                        "expire_time": now + ttl,
                    },
                )
                return True
            if row.owner != owner and row.expire_time > now:
                return False
            conn.execute(
                _UPDATE_LEASE,
                {
                    "b_vm": vm_id,
                    "owner": owner,
                    "operation_id": operation_id,
                    "expire_time": now + ttl,
                },
            )
            return True

        return step

    def renew_lease(self, vm_id: str, owner: str, ttl: float) -> None:
        with self._tx() as conn:
            self.w_renew_lease(vm_id, owner, ttl)(conn)

    def w_renew_lease(self, vm_id: str, owner: str, ttl: float) -> Step:
        def step(conn: Connection) -> None:
            conn.execute(
                update(vm_leases)
                .where(and_(vm_leases.c.vm_id == vm_id, vm_leases.c.owner == owner))
                .values(expire_time=time.time() + ttl)
            )

        return step

    def release_lease(self, vm_id: str, owner: str) -> None:
        with self._tx() as conn:
            self.w_release_lease(vm_id, owner)(conn)

    def w_release_lease(self, vm_id: str, owner: str) -> Step:
        def step(conn: Connection) -> None:
            conn.execute(_RELEASE_LEASE, {"b_vm": vm_id, "b_owner": owner})

        return step

    def lease_owner(self, vm_id: str) -> tuple[str, float] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(vm_leases).where(vm_leases.c.vm_id == vm_id)).first()
        return (row.owner, row.expire_time) if row else None

    # --- registrations ------------------------------------------------------------

    def save_registration(
        self, kind: str, address: str, name: str, order: int, tls: dict[str, str]
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                registrations.delete().where(
                    and_(registrations.c.kind == kind, registrations.c.address == address)
                )
            )
            conn.execute(
                registrations.insert().values(
                    kind=kind,
                    address=address,
                    name=name,
                    sort_order=order,
                    tls_json=json.dumps(tls),
                )
            )

    def remove_registration(self, kind: str, address: str) -> None:
        with self._tx() as conn:
            conn.execute(
                registrations.delete().where(
                    and_(registrations.c.kind == kind, registrations.c.address == address)
                )
            )

    def registrations(self, kind: str) -> list[tuple[str, str, int, dict[str, str]]]:
        """(address, name, order, tls) of every registration of a kind."""
        query = select(registrations).where(registrations.c.kind == kind)
        with self.engine.connect() as conn:
            return [
                (r.address, r.name, r.sort_order, dict(json.loads(r.tls_json)))
                for r in conn.execute(query)
            ]
