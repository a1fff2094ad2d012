"""The cleanup registry (csi-test's resources.go).

Every check registers what it creates, before creating it, so that a call
that fails half way is still cleaned up. Cleanup runs last-in first-out
(snapshots before the volumes they are on); each action has its own
deadline, and a failed action is reported, never raised: it cannot turn
another check into a failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from vmsnap_sdk.conformance._rpc import RpcFailure


class Resources:
    """What one check created, and how to remove each thing."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        self._keys: set[str] = set()

    def add(self, key: str, undo: Callable[[], Awaitable[object]]) -> None:
        """Register ``undo`` under ``key`` (a key registered twice is undone once)."""
        if key in self._keys:
            return
        self._keys.add(key)
        self._actions.append((key, undo))

    def __len__(self) -> int:
        return len(self._actions)

    async def cleanup(self, timeout: float) -> list[str]:
        """Undo everything, newest first; returns one line per failed action."""
        problems: list[str] = []
        while self._actions:
            key, undo = self._actions.pop()
            try:
                await asyncio.wait_for(undo(), timeout)
            except RpcFailure as exc:
                problems.append(f"{key}: {exc.summary()}")
            except TimeoutError:
                problems.append(f"{key}: no answer within {timeout:g} s")
            except Exception as exc:  # noqa: BLE001 - report, never cascade
                problems.append(f"{key}: {type(exc).__name__}: {exc}")
        self._keys.clear()
        return problems
