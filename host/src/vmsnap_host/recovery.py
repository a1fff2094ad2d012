"""After a crash, and on every reconcile tick: nothing stays unfinished forever.

On start every unfinished operation whose VM lease is not held by another live
replica is resolved through the manager's per-VM queue (so it holds the VM's
lease like any operation): a take is rolled back (thaw by the journaled token,
or by operation id when the token was never journaled; DeleteVMSnapshot(same
id) on every planned group; ERROR), a revert is settled on one side, a delete
is retried. On the reconcile interval the same runs for operations left open
on purpose (a delete waiting for an owner, a revert that could not reach
either side) or abandoned (their lease ran out), then owed deletes and kept
revert states are retried until their owners confirm, then the two-way
reconciler sweeps the arrays and agents.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from vmsnap_host.manager import Manager
from vmsnap_host.model import OperationRecord

log = logging.getLogger("vmsnap.host.recovery")


class Recovery:
    def __init__(
        self, manager: Manager, sweep: Callable[[], Awaitable[object]] | None = None
    ) -> None:
        self.manager = manager
        self.store = manager.store
        self.registry = manager.registry
        self.executor = manager.executor
        #: The two-way reconciler's pass, run after the owed deletes.
        self.sweep = sweep

    def _ours(self, op: OperationRecord) -> bool:
        lease = self.store.lease_owner(op.vm_id)
        # A live lease of another replica: it finishes its own work.
        return lease is None or lease[0] == self.manager.owner or lease[1] <= time.time()

    async def resolve_on_start(self) -> None:
        """Resolve every unfinished operation this host may own, and wait for them."""
        for op in self.store.unfinished_operations():
            if not self._ours(op):
                continue
            log.info(
                "resolving an unfinished operation",
                extra={"fields": {"operation": op.id, "type": op.type.name, "step": op.step}},
            )
            self.manager.resume(op)
        await self.manager.idle()

    async def resolve_open(self) -> None:
        """Pick up operations open but not running here (left open on purpose, or
        abandoned by an owner whose lease ran out)."""
        running = self.manager.running
        tasks = []
        for op in self.store.unfinished_operations():
            if op.id in running or not self._ours(op):
                continue
            task = self.manager.resume(op)
            if task is not None:
                tasks.append(task)
        # Each ends within its calls' deadlines (or leaves itself open again).
        await asyncio.gather(*tasks, return_exceptions=True)

    async def reconcile_once(self, *, sweep: bool = True) -> None:
        """One round: open operations, owed deletes and kept states, then the sweep
        (not at start: it lists every array, and the first tick comes soon enough)."""
        await self.resolve_open()
        await self.executor.cleanup.retry_owed(self.manager.running)
        if sweep and self.sweep is not None:
            await self.sweep()

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile_once()
            except Exception:
                log.exception("reconcile round failed")
