"""One replica at a time: the leader lock (docs/design.md, "Replicas").

The reconciler's sweep and the other periodic jobs run on the replica holding
this lock. On PostgreSQL it is a session-level advisory lock held on a
connection of its own, outside the pool: the server releases it the moment
that connection ends, so when the leader dies (its process killed, its
machine gone: TCP keepalives end the connection within seconds) the next
replica to try gets it. On SQLite there is one host: it always leads.

A leader that lost its connection learns it at its next :meth:`LeaderLock.hold`
(every reconcile tick); for up to one tick two replicas may both sweep, which
is safe: the sweep lists the peers before it reads the catalog, and every
action it takes is idempotent.
"""

from __future__ import annotations

import contextlib
import logging

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from vmsnap_host.store.store import LEADER_LOCKS

log = logging.getLogger("vmsnap.host.leader")


class LeaderLock:
    def __init__(self, engine: Engine, key: int = 0) -> None:
        self._key = key
        self._postgres = engine.dialect.name == "postgresql"
        self._engine: Engine | None = None
        if self._postgres:
            self._engine = create_engine(
                engine.url,
                poolclass=NullPool,
                connect_args={
                    "connect_timeout": 5,
                    "application_name": "vmsnap-host leader",
                    "keepalives": 1,
                    "keepalives_idle": 5,
                    "keepalives_interval": 2,
                    "keepalives_count": 3,
                },
            )
        self._conn: Connection | None = None

    @property
    def held(self) -> bool:
        return not self._postgres or self._conn is not None

    def hold(self) -> bool:
        """True while this replica leads: checks the lock's connection, or tries to
        take the lock. Blocking (short): call it off the event loop."""
        if not self._postgres:
            return True
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1"))
                return True
            except DBAPIError:
                log.warning("leader lock's connection lost; no longer leading")
                self._drop()
        assert self._engine is not None
        try:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except DBAPIError:
            return False
        try:
            got = conn.execute(
                text("SELECT pg_try_advisory_lock(:ns, :key)"),
                {"ns": LEADER_LOCKS, "key": self._key},
            ).scalar()
        except DBAPIError:
            got = False
        if not got:
            with contextlib.suppress(DBAPIError):
                conn.close()
            return False
        self._conn = conn
        log.info("leading: the reconciler and periodic jobs run here")
        return True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(DBAPIError):
                conn.close()

    def release(self) -> None:
        """Give the lock up (closing its connection releases it)."""
        self._drop()
        if self._engine is not None:
            self._engine.dispose()


__all__ = ["LeaderLock"]
