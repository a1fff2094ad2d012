"""After a crash, and on every reconcile tick: nothing stays unfinished forever.

On start every unfinished operation this replica may own is resolved through
the manager's per-VM queue (so it holds the VM's lease like any operation): a
take is rolled back (thaw by the journaled token, or by operation id when the
token was never journaled; DeleteVMSnapshot(same id) on every planned group;
ERROR), a revert is settled on one side, a delete is retried. On the
reconcile interval the same runs for operations left open on purpose (a
delete waiting for an owner, a revert that could not reach either side) or
abandoned. Then, on the leading replica only, owed deletes and kept revert
states are retried until their owners confirm, and the two-way reconciler
sweeps the arrays and agents.

Which open operations a replica may resolve: its own (not running here), and
those of a replica whose heartbeat ran out (:mod:`vmsnap_host.replicas`) —
taken over first by a compare-and-set on the operation's owner, so exactly one
replica resolves each. An operation whose VM lease another replica holds now
waits for a later tick.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from vmsnap_host.manager import Manager
from vmsnap_host.model import OperationRecord, OperationType
from vmsnap_host.replicas import Replicas
from vmsnap_host.store.store import Finished

log = logging.getLogger("vmsnap.host.recovery")


class Recovery:
    def __init__(
        self,
        manager: Manager,
        sweep: Callable[[], Awaitable[object]] | None = None,
        replicas: Replicas | None = None,
    ) -> None:
        self.manager = manager
        self.store = manager.store
        self.registry = manager.registry
        self.executor = manager.executor
        #: The two-way reconciler's pass, run after the owed deletes.
        self.sweep = sweep
        #: The other replicas (None: this host is alone and leads).
        self.replicas = replicas

    async def _mine(self, op: OperationRecord, alive: set[str]) -> OperationRecord | None:
        """``op`` if this replica may resolve it now (taking it over from a dead
        owner first), else None."""
        me = self.manager.owner
        holder = await self.store.read(self.store.lease_holder, op.vm_id)
        if holder is not None and holder != me:
            return None  # a live lease of another replica: it finishes its own work
        if op.owner == me:
            return op
        if op.owner in alive:
            return None  # queued or left open by a live replica: its own to resolve
        claimed = await self.store.write(self.store.w_claim_operation(op.id, op.owner, me))
        if not claimed:
            return None  # another replica took it over first
        log.warning(
            "taking over an operation of a replica that stopped",
            extra={"fields": {"operation": op.id, "from": op.owner or "?", "step": op.step}},
        )
        return replace(op, owner=me)

    async def _alive(self) -> set[str]:
        if self.replicas is None:
            return {self.manager.owner}
        return await self.replicas.alive()

    async def _resume_open(self) -> list[asyncio.Task[Finished | None]]:
        alive = await self._alive()
        tasks = []
        for op in await self.store.read(self.store.unfinished_operations):
            # Asked for each (not once before the read): an operation admitted since
            # is in the catalog and running here, not abandoned.
            if op.id in self.manager.running:
                continue
            mine = await self._mine(op, alive)
            if mine is None:
                continue
            log.info(
                "resolving an unfinished operation",
                extra={"fields": {"operation": op.id, "type": op.type.name, "step": op.step}},
            )
            task = self.manager.resume(mine)
            # A caller's freeze is held until thawed or lapsed: never waited for here
            # (the host must serve, or its caller could not renew or thaw it).
            if task is not None and op.type is not OperationType.FREEZE:
                tasks.append(task)
        return tasks

    async def resolve_on_start(self) -> None:
        """Resolve every unfinished operation this host may own, and wait for them
        (FREEZE operations go on holding in the background)."""
        tasks = await self._resume_open()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def resolve_open(self) -> None:
        """Pick up operations open but not running here (left open on purpose, or
        abandoned by a replica that stopped)."""
        tasks = await self._resume_open()
        # Each ends within its calls' deadlines (or leaves itself open again).
        await asyncio.gather(*tasks, return_exceptions=True)

    async def reconcile_once(self, *, sweep: bool = True) -> None:
        """One round: open operations; then, on the leading replica, owed deletes and
        kept states, then the sweep (not at start: it lists every array, and the
        first tick comes soon enough)."""
        await self.resolve_open()
        if self.replicas is not None and not await self.replicas.lead():
            return
        # Operations in flight on any replica handle their own objects.
        busy = self.manager.running | (await self.store.read(self.store.leased_operations))
        await self.executor.cleanup.retry_owed(frozenset(busy))
        if sweep and self.sweep is not None:
            await self.sweep()

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile_once()
            except Exception:
                log.exception("reconcile round failed")
