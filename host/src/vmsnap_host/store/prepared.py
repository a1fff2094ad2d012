"""Prepared statements: the catalog's hot statements on the DBAPI cursor.

SQLAlchemy Core costs about 70-100 µs of CPU per executed statement on top of
the DBAPI's 10-20 µs (cache key, parameter and result processing, result
metadata), and a create runs about 30 statements in one process whose event
loop and catalog writer share one GIL (docs/design.md, "The catalog's hot
statements"). A :class:`PreparedStatement` is compiled by SQLAlchemy once per
dialect (and, for INSERT and UPDATE, per set of column names; for an expanding
``IN``, per list length): the same SQL text SQLAlchemy sends, with SQLAlchemy's
own bind and result processors. Each execution then runs that text on the
connection's DBAPI cursor, inside the connection's transaction.

What stays as with ``Connection.execute``: the transaction is the
:class:`~sqlalchemy.Connection`'s (begin, commit, rollback, the pool's reset);
a DBAPI error is raised as SQLAlchemy raises it (``IntegrityError``,
``OperationalError``, … with ``.orig``; a lost connection is invalidated), so
callers catch what they caught before. Rows are named tuples with the column
names as attributes. Statements that are not hot keep ``Connection.execute``.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.dml import ValuesBase

_Processor = Callable[[Any], Any]
#: Rows fetched at a time by :meth:`PreparedStatement.iterate` (see there).
_BATCH = 20


class Result:
    """The rows a statement returned (all fetched) and its rowcount."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def first(self) -> Any:
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def scalar_one(self) -> Any:
        if len(self.rows) != 1:
            raise ValueError(f"expected one row, got {len(self.rows)}")
        return self.rows[0][0]

    def all(self) -> list[Any]:
        return list(self.rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)


class _Plan:
    """One compiled form: SQL text, parameter order and processors."""

    __slots__ = (
        "_types",
        "bind",
        "dialect",
        "expanding",
        "fixed",
        "order",
        "result",
        "row",
        "sql",
    )

    def __init__(self, compiled: Any, dialect: Dialect, params: Mapping[str, Any]) -> None:
        self.dialect = dialect
        # The caller's lists for an expanding IN (literal lists SQLAlchemy binds itself).
        expanding = tuple(
            name for bind, name in compiled.bind_names.items() if bind.expanding and name in params
        )
        defaults = dict(params)
        # Columns with a scalar default that the caller left out (INSERT).
        for column in getattr(compiled, "insert_prefetch", ()) or ():
            default = column.default
            if default is None or not default.is_scalar:
                raise TypeError(
                    f"PreparedStatement: give {column.key!r} (its default is not a constant)"
                )
            defaults.setdefault(column.key, default.arg)
        if getattr(compiled, "update_prefetch", None):
            raise TypeError("PreparedStatement: UPDATE with on-update defaults is not supported")
        state = compiled.construct_expanded_state(defaults)
        self.sql: str = state.statement
        self.expanding = expanding
        given = set(params)
        for name in expanding:
            given.update(f"{name}_{i}" for i in range(1, len(params[name]) + 1))
        #: Values SQLAlchemy bound itself (literals, constants, INSERT defaults).
        self.fixed = {k: v for k, v in state.parameters.items() if k not in given}
        self.order: tuple[str, ...] | None = (
            tuple(state.positiontup) if compiled.positional else None
        )
        processors: dict[str, _Processor] = {**compiled._bind_processors, **state.processors}
        names = set(state.parameters)
        self.bind = tuple((k, p) for k, p in processors.items() if k in names)
        keys = [c.keyname for c in compiled._result_columns]
        self.row: Any = collections.namedtuple("Row", keys, rename=True) if keys else None
        self._types = [c.type for c in compiled._result_columns]
        #: Result processors, set from the first cursor description.
        self.result: tuple[tuple[int, _Processor], ...] | None = None

    def values(self, params: Mapping[str, Any]) -> Any:
        values = {**self.fixed, **params}
        for name in self.expanding:
            for i, item in enumerate(values.pop(name), 1):
                values[f"{name}_{i}"] = item
        for name, process in self.bind:
            values[name] = process(values[name])
        if self.order is None:
            return values
        return tuple(values[name] for name in self.order)

    def convert(self, cursor: Any) -> Callable[[Any], Any]:
        """A function making one of the cursor's raw rows what SQLAlchemy would
        give: result processors applied, a named tuple."""
        if self.result is None:
            found = []
            for i, (entry, type_) in enumerate(zip(cursor.description, self._types, strict=False)):
                process = type_._cached_result_processor(self.dialect, entry[1])
                if process is not None:
                    found.append((i, process))
            self.result = tuple(found)
        make = self.row._make if self.row is not None else tuple
        processors = self.result
        if not processors:
            return make

        def convert(raw: Any) -> Any:
            items = list(raw)
            for i, process in processors:
                items[i] = process(items[i])
            return make(items)

        return convert


class PreparedStatement:
    """A statement compiled once per dialect, run on the DBAPI cursor."""

    __slots__ = ("_dml", "_plans", "statement")

    def __init__(self, statement: ClauseElement) -> None:
        #: The SQLAlchemy statement (for tools and tests that explain it).
        self.statement = statement
        self._dml = isinstance(statement, ValuesBase)
        self._plans: dict[tuple[Any, ...], _Plan] = {}

    def _plan(self, dialect: Dialect, params: Mapping[str, Any]) -> _Plan:
        # The SQL depends on the dialect, an INSERT's or UPDATE's columns, and the
        # length of each list given for an expanding IN.
        lists = tuple((k, len(v)) for k, v in params.items() if isinstance(v, list | tuple))
        key = (dialect.name, tuple(params) if self._dml else None, lists)
        plan = self._plans.get(key)
        if plan is None:
            compiled = self.statement.compile(
                dialect=dialect, column_keys=list(params) if self._dml else None
            )
            plan = self._plans[key] = _Plan(compiled, dialect, params)
        return plan

    def execute(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Result:
        """Run on ``conn`` (in its transaction) with ``params`` by bind name."""
        with self._cursor(conn, params) as (plan, cursor):
            rows = []
            if cursor.description is not None:
                rows = list(map(plan.convert(cursor), cursor.fetchall()))
            return Result(rows, cursor.rowcount)

    def iterate(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """The rows of a query a few at a time, each converted as it is read: for
        reads of many rows (a reconcile pass reads every READY snapshot) in a worker
        thread, whose caller keeps only what it makes of each row. Long fetches
        there stall the event loop that shares the GIL: with 100k snapshots, a
        catalog read's p99 in the bench's ``catalog`` section was 196 ms with every
        row fetched at once, 56 ms with 500 at a time, 12 ms with 20 (16 ms through
        ``Connection.execute``)."""
        with self._cursor(conn, params) as (plan, cursor):
            convert = plan.convert(cursor)
            while batch := cursor.fetchmany(_BATCH):
                yield from map(convert, batch)

    @contextlib.contextmanager
    def _cursor(
        self, conn: Connection, params: Mapping[str, Any] | None
    ) -> Iterator[tuple[_Plan, Any]]:
        """The statement run on a DBAPI cursor of ``conn``; a DBAPI error raised
        while it runs or is read is raised as SQLAlchemy raises it (and a lost
        connection invalidated)."""
        params = params or {}
        plan = self._plan(conn.dialect, params)
        values = plan.values(params)
        cursor = None
        try:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            cursor.execute(plan.sql, values)
            yield plan, cursor
            cursor.close()
        except conn.dialect.loaded_dbapi.Error as exc:
            conn._handle_dbapi_exception(exc, plan.sql, values, cursor, None)
