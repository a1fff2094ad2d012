"""The leader's policy task: claim due runs, start them, apply retention.

Each tick (on the replica holding the leader lock; on SQLite the one host):

1. **Claim.** For every policy whose next run is due, one transaction moves its
   ``next_run`` from the due time to the schedule's first time *after now*
   (compare-and-set on the old value) and inserts a PENDING run per target VM.
   However many fire times passed while no host ran, one run is made for them
   (its ``missed`` says how many were folded in). A replica that lost the race, a
   second pass, a restart: the compare-and-set refuses them, nothing is doubled.
2. **Start.** A PENDING run becomes a CreateVMSnapshot through the manager (the
   normal path: checks, journal, per-VM queue), with a request id derived from
   policy, VM and scheduled time: a crash after the claim, or before the run was
   marked RUNNING, re-sends the same request and gets the same operation.
3. **Finish.** A RUNNING run whose operation is done gets its outcome; after a
   success the policy's retention runs for that VM (only this policy's snapshots,
   never the VM's current one), then the run is SUCCEEDED with what it deleted.

The clock is injected (tests drive it); times are epoch seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import grpc

from vmsnap_host import metrics
from vmsnap_host.manager import Manager
from vmsnap_host.model import Snapshot, SnapshotState
from vmsnap_host.policies.catalog import PolicyCatalog
from vmsnap_host.policies.model import (
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Policy,
    Run,
    retention_request_id,
    snapshot_name,
    zone,
)
from vmsnap_host.policies.retention import keep
from vmsnap_sdk.errors import VMSnapError

log = logging.getLogger("vmsnap.host.policies")

#: A run refused for a reason that may pass (catalog or agent unreachable, VM queue
#: full) is tried again on later ticks, until this long after its scheduled time.
RETRY_SECONDS = 300.0
_TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED}
)
_MAX_ERROR = 1024


def own_snapshots(snapshots: list[Snapshot], policy_id: str) -> list[Snapshot]:
    """The snapshots a policy made. Retention never looks past this filter: a
    manual snapshot (policy_id "") or another policy's is never a candidate."""
    return [s for s in snapshots if s.policy_id == policy_id]


class Scheduler:
    def __init__(
        self,
        catalog: PolicyCatalog,
        manager: Manager,
        *,
        leader: Callable[[], Awaitable[bool]] | None = None,
        clock: Callable[[], float] = time.time,
        tick: float = 0.5,
    ) -> None:
        self.catalog = catalog
        self.manager = manager
        self.leader = leader
        self.clock = clock
        self.tick = tick

    async def run(self) -> None:
        """Tick until cancelled; a failed tick is logged and the next one tries again."""
        while True:
            try:
                await self.tick_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("policy tick failed")
            await asyncio.sleep(self.tick)

    async def tick_once(self) -> None:
        if self.leader is not None and not await self.leader():
            return
        now = self.clock()
        for policy in await self.catalog.store.read(self.catalog.due, now):
            await self.claim(policy, now)
        for run in await self.catalog.store.read(self.catalog.open_runs):
            await self.drive(run)

    async def claim(self, policy: Policy, now: float) -> list[Run]:
        if policy.next_run is None:
            return []
        schedule = policy.parsed()
        scheduled = policy.next_run
        missed = schedule.count_between(scheduled, now)
        runs: list[Run] = await self.catalog.store.write(
            self.catalog.w_claim(policy, scheduled, schedule.next_after(now), missed)
        )
        if runs and missed:
            log.info(
                "policy run taken late, once for the missed times",
                extra={"fields": {"policy": policy.name, "missed": missed}},
            )
        return runs

    async def drive(self, run: Run) -> None:
        policy = await self.catalog.store.read(self.catalog.by_id, run.policy_id)
        if policy is None:  # deleted meanwhile (its runs go with it)
            return
        if run.outcome == PENDING:
            run = await self._start(policy, run) or run
        if run.outcome == RUNNING:
            await self._finish(policy, run)

    async def _start(self, policy: Policy, run: Run) -> Run | None:
        when = datetime.fromtimestamp(run.scheduled, UTC).isoformat()
        try:
            op = await self.manager.create_snapshot(
                run.request_id,
                run.vm_id,
                snapshot_name(policy.name, run.scheduled),
                description=f"policy {policy.name}, scheduled {when}",
                include_memory=False,
                quiesce=policy.quiesce,
                parameters={},
                policy_id=policy.id,
                policy_name=policy.name,
            )
        except VMSnapError as exc:
            if exc.code in _TRANSIENT and self.clock() - run.scheduled < RETRY_SECONDS:
                log.warning(
                    "policy run refused for now; retried next tick",
                    extra={"fields": {"policy": policy.name, "vm": run.vm_id, "error": str(exc)}},
                )
                return None
            await self._end(policy, run, PENDING, FAILED, str(exc), exc.reason or exc.code.name)
            return None
        moved = await self.catalog.store.write(
            self.catalog.w_move_run(
                run.seq, PENDING, RUNNING, operation_id=op.id, vm_snapshot_id=op.vm_snapshot_id
            )
        )
        if not moved:
            return None
        return Run(
            run.seq,
            run.policy_id,
            run.vm_id,
            run.scheduled,
            run.request_id,
            RUNNING,
            op.id,
            op.vm_snapshot_id,
            missed=run.missed,
        )

    async def _finish(self, policy: Policy, run: Run) -> None:
        op = await self.catalog.store.read(self.catalog.store.get_operation, run.operation_id)
        if op is None or not op.done:
            return
        if op.error is not None:
            await self._end(policy, run, RUNNING, FAILED, op.error.message, op.error.reason)
            return
        deleted = await self.retain(policy, run.vm_id)
        if await self.catalog.store.write(
            self.catalog.w_move_run(run.seq, RUNNING, SUCCEEDED, deleted_json=json.dumps(deleted))
        ):
            metrics.POLICY_RUNS.labels(policy=policy.name, outcome="succeeded").inc()
            if deleted:
                metrics.POLICY_DELETED.labels(policy=policy.name).inc(len(deleted))

    async def _end(
        self, policy: Policy, run: Run, from_: str, to: str, message: str, reason: str
    ) -> None:
        if await self.catalog.store.write(
            self.catalog.w_move_run(run.seq, from_, to, error_message=message[:_MAX_ERROR])
        ):
            log.warning(
                "policy run failed",
                extra={"fields": {"policy": policy.name, "vm": run.vm_id, "error": message}},
            )
            metrics.POLICY_RUNS.labels(policy=policy.name, outcome="failed").inc()
            # Positional: the label's value is a reason name already raised elsewhere.
            metrics.POLICY_FAILURES.labels(policy.name, reason or "-").inc()

    async def retain(self, policy: Policy, vm_id: str) -> list[str]:
        """Delete what the policy no longer keeps on this VM; returns the ids whose
        delete was started. Only the policy's own READY snapshots are candidates;
        the VM's current snapshot is never deleted (a revert to it made it the base
        the VM runs on, and the parent of what comes next)."""
        ready = [
            s
            for s in own_snapshots(
                (await self.catalog.store.read(self.catalog.store.live_snapshots, vm_id)), policy.id
            )
            if s.state is SnapshotState.READY and s.create_time is not None
        ]
        kept = keep(
            [(s.id, s.create_time) for s in ready if s.create_time is not None],
            policy.retention,
            zone(policy.time_zone),
        )
        deleted: list[str] = []
        for snap in ready:
            if snap.id in kept or snap.current:
                continue
            try:
                await self.manager.delete_snapshot(retention_request_id(snap.id), snap.id)
            except VMSnapError as exc:
                # Left for the next run's retention (busy VM, snapshot being reverted).
                log.warning(
                    "retention could not delete a snapshot now",
                    extra={"fields": {"policy": policy.name, "id": snap.id, "error": str(exc)}},
                )
                continue
            deleted.append(snap.id)
        return deleted
