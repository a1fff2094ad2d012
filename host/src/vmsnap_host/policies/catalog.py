"""Rows of policies, their runs and VM labels: write steps and reads on the Store.

The steps follow the store's rule (:mod:`vmsnap_host.store.store`): each is a
transaction body, committed by ``Store.write``; each change of a run or of a
policy's next run is a compare-and-set, so two replicas (a leader that has not
yet noticed it lost the lock) cannot both claim a run or move it twice.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from vmsnap_host.model import QuiescePolicy, SnapshotState
from vmsnap_host.policies.model import (
    PENDING,
    RUNNING,
    Policy,
    Retention,
    Run,
    run_request_id,
)
from vmsnap_host.store import Store
from vmsnap_host.store.schema import policies, policy_runs, vm_labels, vm_snapshots
from vmsnap_host.store.writer import Step
from vmsnap_sdk.errors import AlreadyExists, NotFound, Reason

#: Runs shown with a policy (GetPolicy).
RECENT_RUNS = 50


def _policy(row: Row[Any]) -> Policy:
    return Policy(
        id=row.id,
        name=row.name,
        schedule=row.schedule,
        retention=Retention(row.keep_last, row.keep_daily, row.keep_weekly),
        vm_id=row.vm_id,
        selector=dict(json.loads(row.selector_json)),
        time_zone=row.time_zone,
        quiesce=QuiescePolicy[row.quiesce],
        paused=bool(row.paused),
        next_run=row.next_run,
        last_run=row.last_run,
        create_time=row.create_time,
    )


def _run(row: Row[Any]) -> Run:
    return Run(
        seq=row.seq,
        policy_id=row.policy_id,
        vm_id=row.vm_id,
        scheduled=row.scheduled,
        request_id=row.request_id,
        outcome=row.outcome,
        operation_id=row.operation_id,
        vm_snapshot_id=row.vm_snapshot_id,
        error_message=row.error_message,
        missed=row.missed,
        deleted=tuple(json.loads(row.deleted_json)),
    )


def not_found(name: str) -> NotFound:
    return NotFound(
        f"no snapshot policy is named {name!r} (vmsnap policy list)",
        reason=Reason.POLICY_NOT_FOUND,
    )


def _matching(conn: Connection, selector: dict[str, str]) -> list[str]:
    """VM ids whose labels hold every pair of the selector."""
    pairs = [and_(vm_labels.c.key == k, vm_labels.c.value == v) for k, v in selector.items()]
    query = (
        select(vm_labels.c.vm_id)
        .where(or_(*pairs))
        .group_by(vm_labels.c.vm_id)
        .having(func.count() == len(pairs))
        .order_by(vm_labels.c.vm_id)
    )
    return [r.vm_id for r in conn.execute(query)]


class PolicyCatalog:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- policies ---------------------------------------------------------------

    async def create(self, policy: Policy, next_run: float) -> Policy:
        """Store a new policy; the same definition again returns the stored one
        (a retried call), another definition under its name is ALREADY_EXISTS."""
        now = time.time()
        stored = replace(policy, id=uuid.uuid4().hex)

        def step(conn: Connection) -> None:
            conn.execute(
                policies.insert().values(
                    id=stored.id,
                    name=stored.name,
                    vm_id=stored.vm_id,
                    selector_json=json.dumps(stored.selector, sort_keys=True),
                    schedule=stored.schedule,
                    time_zone=stored.time_zone,
                    keep_last=stored.retention.keep_last,
                    keep_daily=stored.retention.keep_daily,
                    keep_weekly=stored.retention.keep_weekly,
                    quiesce=stored.quiesce.name,
                    paused=False,
                    next_run=next_run,
                    last_run=None,
                    create_time=now,
                    update_time=now,
                )
            )

        try:
            await self.store.write(step)
        except IntegrityError:
            existing = await self.store.read(self.get, policy.name)
            if existing is not None and existing.same_definition(policy):
                return existing
            raise AlreadyExists(
                f"a snapshot policy is named {policy.name!r} with another definition; choose "
                "another name, or delete that policy first",
                reason=Reason.POLICY_NAME_IN_USE,
            ) from None
        got = await self.store.read(self.get, policy.name)
        assert got is not None
        return got

    def get(self, name: str) -> Policy | None:
        with self.store._read() as conn:
            row = conn.execute(select(policies).where(policies.c.name == name)).first()
        return _policy(row) if row else None

    def require(self, name: str) -> Policy:
        policy = self.get(name)
        if policy is None:
            raise not_found(name)
        return policy

    def by_id(self, policy_id: str) -> Policy | None:
        with self.store._read() as conn:
            row = conn.execute(select(policies).where(policies.c.id == policy_id)).first()
        return _policy(row) if row else None

    def page(self, after_seq: int, limit: int) -> list[tuple[int, Policy]]:
        query = (
            select(policies).where(policies.c.seq > after_seq).order_by(policies.c.seq).limit(limit)
        )
        with self.store._read() as conn:
            return [(row.seq, _policy(row)) for row in conn.execute(query)]

    def due(self, now: float) -> list[Policy]:
        query = (
            select(policies)
            .where(policies.c.paused.is_(False), policies.c.next_run <= now)
            .order_by(policies.c.next_run)
        )
        with self.store._read() as conn:
            return [_policy(row) for row in conn.execute(query)]

    def next_due(self) -> float | None:
        with self.store._read() as conn:
            value = conn.execute(
                select(func.min(policies.c.next_run)).where(policies.c.paused.is_(False))
            ).scalar()
        return None if value is None else float(value)

    async def set_paused(self, name: str, paused: bool, next_run: float | None) -> Policy:
        def step(conn: Connection) -> int:
            return int(
                conn.execute(
                    update(policies)
                    .where(policies.c.name == name)
                    .values(paused=paused, next_run=next_run, update_time=time.time())
                ).rowcount
            )

        if not await self.store.write(step):
            raise not_found(name)
        return await self.store.read(self.require, name)

    async def delete(self, name: str) -> None:
        policy = await self.store.read(self.get, name)
        if policy is None:
            return

        def step(conn: Connection) -> None:
            conn.execute(policies.delete().where(policies.c.id == policy.id))
            conn.execute(policy_runs.delete().where(policy_runs.c.policy_id == policy.id))

        await self.store.write(step)

    # --- runs -------------------------------------------------------------------

    def w_claim(self, policy: Policy, scheduled: float, next_run: float, missed: int) -> Step:
        """Take the run due at ``scheduled``: one compare-and-set that moves the
        policy's next run from ``scheduled`` to ``next_run`` (refused when another
        replica, or an earlier pass, moved it already, or it was paused), and in the
        same transaction a PENDING run per target VM. Returns the runs (empty when
        refused)."""

        def step(conn: Connection) -> list[Run]:
            now = time.time()
            moved = conn.execute(
                update(policies)
                .where(
                    policies.c.id == policy.id,
                    policies.c.next_run == scheduled,
                    policies.c.paused.is_(False),
                )
                .values(next_run=next_run, last_run=scheduled, update_time=now)
            )
            if moved.rowcount != 1:
                return []
            targets = [policy.vm_id] if policy.vm_id else _matching(conn, policy.selector)
            runs = []
            for vm_id in targets:
                request_id = run_request_id(policy.id, vm_id, scheduled)
                seq = conn.execute(
                    policy_runs.insert()
                    .values(
                        policy_id=policy.id,
                        vm_id=vm_id,
                        scheduled=scheduled,
                        request_id=request_id,
                        outcome=PENDING,
                        operation_id="",
                        vm_snapshot_id="",
                        error_message="",
                        missed=missed,
                        deleted_json="[]",
                        create_time=now,
                        update_time=now,
                    )
                    .returning(policy_runs.c.seq)
                ).scalar_one()
                runs.append(
                    Run(int(seq), policy.id, vm_id, scheduled, request_id, PENDING, missed=missed)
                )
            return runs

        return step

    def w_move_run(self, seq: int, from_outcome: str, to: str, **values: Any) -> Step:
        """Compare-and-set of a run's outcome; the step returns whether it moved."""

        def step(conn: Connection) -> bool:
            moved = conn.execute(
                update(policy_runs)
                .where(policy_runs.c.seq == seq, policy_runs.c.outcome == from_outcome)
                .values(outcome=to, update_time=time.time(), **values)
            )
            return bool(moved.rowcount == 1)

        return step

    def open_runs(self) -> list[Run]:
        query = (
            select(policy_runs)
            .where(policy_runs.c.outcome.in_([PENDING, RUNNING]))
            .order_by(policy_runs.c.seq)
        )
        with self.store._read() as conn:
            return [_run(row) for row in conn.execute(query)]

    def runs(self, policy_id: str, limit: int = RECENT_RUNS) -> list[Run]:
        query = (
            select(policy_runs)
            .where(policy_runs.c.policy_id == policy_id)
            .order_by(policy_runs.c.seq.desc())
            .limit(limit)
        )
        with self.store._read() as conn:
            return [_run(row) for row in conn.execute(query)]

    # --- labels -----------------------------------------------------------------

    def w_set_labels(
        self, vm_id: str, labels: dict[str, str], remove: Sequence[str] = (), replace: bool = False
    ) -> Step:
        def step(conn: Connection) -> None:
            if replace:
                conn.execute(vm_labels.delete().where(vm_labels.c.vm_id == vm_id))
            elif remove:
                conn.execute(
                    vm_labels.delete().where(
                        vm_labels.c.vm_id == vm_id, vm_labels.c.key.in_(list(remove))
                    )
                )
            for key, value in sorted(labels.items()):
                conn.execute(
                    vm_labels.delete().where(vm_labels.c.vm_id == vm_id, vm_labels.c.key == key)
                )
                conn.execute(vm_labels.insert().values(vm_id=vm_id, key=key, value=value))

        return step

    def labels(self, vm_id: str) -> dict[str, str]:
        query = select(vm_labels).where(vm_labels.c.vm_id == vm_id).order_by(vm_labels.c.key)
        with self.store._read() as conn:
            return {r.key: r.value for r in conn.execute(query)}

    def all_labels(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        with self.store._read() as conn:
            for r in conn.execute(select(vm_labels).order_by(vm_labels.c.vm_id, vm_labels.c.key)):
                out.setdefault(r.vm_id, {})[r.key] = r.value
        return out

    def matching(self, selector: dict[str, str]) -> list[str]:
        with self.store._read() as conn:
            return _matching(conn, selector)

    # --- metrics ----------------------------------------------------------------

    def newest_ages(self, now: float) -> dict[str, float]:
        """Per policy name: the age of the stalest VM's newest READY snapshot of that
        policy (the one an alert should look at)."""
        newest = (
            select(
                vm_snapshots.c.policy_id,
                vm_snapshots.c.vm_id,
                func.max(vm_snapshots.c.create_time).label("newest"),
            )
            .where(
                vm_snapshots.c.policy_id != "",
                vm_snapshots.c.state == SnapshotState.READY.name,
            )
            .group_by(vm_snapshots.c.policy_id, vm_snapshots.c.vm_id)
            .subquery()
        )
        query = (
            select(policies.c.name, func.min(newest.c.newest))
            .join(newest, newest.c.policy_id == policies.c.id)
            .group_by(policies.c.name)
        )
        with self.store._read() as conn:
            return {name: max(0.0, now - float(t)) for name, t in conn.execute(query)}
