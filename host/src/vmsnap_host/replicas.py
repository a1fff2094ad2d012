"""This host among its replicas: heartbeat, who is alive, who leads.

Each replica renews its row in the ``replicas`` table every third of
``host.lease_seconds`` (on the database's clock). An open operation whose
owner's row ran out belongs to nobody: any replica may take it over
(:mod:`vmsnap_host.recovery`). The leader lock (:mod:`vmsnap_host.store.leader`)
picks the one replica that runs the reconciler and the periodic jobs. On SQLite
there is one host, alive and leading; the same code runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from vmsnap_host.store import Store
from vmsnap_host.store.leader import LeaderLock

log = logging.getLogger("vmsnap.host.replicas")


class Replicas:
    def __init__(self, store: Store, owner: str, ttl: float) -> None:
        self.store = store
        self.owner = owner
        self.ttl = ttl
        self._leader = LeaderLock(store.engine)

    async def beat(self) -> None:
        await self.store.write(self.store.w_heartbeat(self.owner, self.ttl))

    async def alive(self) -> set[str]:
        """The replicas whose heartbeat runs now (this one included)."""
        return await self.store.read(self.store.live_replicas) | {self.owner}

    async def lead(self) -> bool:
        """Whether this replica leads now (taking the lock when it is free)."""
        return await asyncio.to_thread(self._leader.hold)

    @property
    def leading(self) -> bool:
        return self._leader.held

    async def run(self) -> None:
        """Heartbeat until cancelled. A failed beat is logged and retried: the
        others take this replica's operations over only once its row ran out."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.beat()
            except Exception:
                log.exception("heartbeat failed")

    async def leave(self) -> None:
        """Stopping cleanly: give up leadership and say so, so that the others need
        not wait out the heartbeat for whatever is left open here."""
        await asyncio.to_thread(self._leader.release)
        with contextlib.suppress(Exception):
            await self.store.write(self.store.w_leave(self.owner))


__all__ = ["Replicas"]
