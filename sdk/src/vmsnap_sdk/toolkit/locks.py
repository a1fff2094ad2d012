"""One lock per key (a vm_snapshot_id), forgotten as soon as nobody holds or waits for it.

A driver serialises the calls on one id inside its process, so that two
concurrent retries of a take cannot both create the snapshot. A plain dict of
locks would keep one entry per id ever seen; this one stays as small as the
number of ids in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class KeyLocks:
    """``async with locks(key):`` runs one holder of ``key`` at a time."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def __call__(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)
