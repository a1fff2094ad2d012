"""Catalog: reads among 100k snapshots, and a restart with 1,000 operations in flight.

The catalog is filled directly through the store (SQLAlchemy Core bulk
inserts into the host's own schema, made by its Alembic migrations), not via
the API: 100k snapshots over 10k VMs. Then the host serves it and this process
lists one VM's snapshots and gets one snapshot by id, at random, through the
API. For the restart, 1,000 creates are journaled as interrupted mid-take
(frozen, both drivers called) and a host is started with the agent and both
drivers: recovery must thaw, delete on every group and mark each ERROR.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
from sqlalchemy import func, select

from bench import stack
from bench.create import define_vms
from bench.stats import median, percentile
from vmsnap_host.model import (
    Claim,
    Group,
    GroupKind,
    OperationRecord,
    OperationType,
    QuiescePolicy,
    Snapshot,
    SnapshotState,
)
from vmsnap_host.store import Store
from vmsnap_host.store.schema import operations, vm_snapshots
from vmsnap_host.store.store import snapshot_row
from vmsnap_sdk import Consistency, Priority, SnapshotResult, VolumeSnapshot
from vmsnap_sdk._proto.host.v1 import host_pb2, host_pb2_grpc

AGENT_NAME = "sim-1"
DRIVERS = ("io.vmsnap.bench.a", "io.vmsnap.bench.b")


@dataclass(frozen=True)
class CatalogResult:
    snapshots: int
    list_ms: list[float]
    get_ms: list[float]


@dataclass(frozen=True)
class RestartResult:
    in_flight: int
    resolve_s: float  # host start → serving with every operation resolved
    empty_start_s: float  # the same host start with nothing to resolve (baseline)
    left: int  # operations still unfinished afterwards (must be 0)


def _groups(snapshot_id: str, vm: int, with_results: bool) -> tuple[Group, ...]:
    groups = []
    for scheme, driver in zip(("a", "b"), DRIVERS, strict=True):
        disk = "vda" if scheme == "a" else "vdb"
        locator = f"{scheme}://pool/vm{vm}-{disk}"
        result = (
            SnapshotResult(
                snapshot_id,
                (VolumeSnapshot(disk, locator, f"{snapshot_id}@{disk}", 1 << 30),),
                consistency=Consistency.CRASH,
                vm_id=f"vm-{vm:05d}",
            )
            if with_results
            else None
        )
        groups.append(
            Group(GroupKind.DRIVER, driver, (Claim(disk, Priority.PLUGIN, "bench"),), result)
        )
    return tuple(groups)


def fill(db: Path | str, snapshots: int, vms: int, batch: int = 5000) -> list[tuple[str, str]]:
    """Bulk-insert READY snapshots (into a SQLite path or any catalog URL); returns
    (vm id, snapshot id) of every one."""
    store = Store.open(db)
    ids: list[tuple[str, str]] = []
    now = time.time()
    try:
        with store.engine.begin() as conn:
            rows = []
            for n in range(snapshots):
                vm = n % vms
                sid = uuid.uuid4().hex
                snap = Snapshot(
                    id=sid,
                    vm_id=f"vm-{vm:05d}",
                    name=f"snap-{n // vms}",
                    state=SnapshotState.READY,
                    agent=AGENT_NAME,
                    quiesce=QuiescePolicy.BEST_EFFORT,
                    consistency=Consistency.CRASH,
                    groups=_groups(sid, vm, True),
                    current=n + vms >= snapshots,
                )
                rows.append(snapshot_row(snap, now))
                ids.append((snap.vm_id, sid))
                if len(rows) >= batch:
                    conn.execute(vm_snapshots.insert(), rows)
                    rows = []
            if rows:
                conn.execute(vm_snapshots.insert(), rows)
    finally:
        store.close()
    return ids


def journal_in_flight(db: Path, count: int) -> None:
    """Journal ``count`` creates interrupted mid-take (the host was SIGKILLed)."""
    store = Store.open_sqlite(db)
    now = time.time()
    try:
        with store.engine.begin() as conn:
            snaps, ops = [], []
            for i in range(count):
                sid = uuid.uuid4().hex
                snap = Snapshot(
                    id=sid,
                    vm_id=f"vm-{i:05d}",
                    name=f"in-flight-{i}",
                    state=SnapshotState.CREATING,
                    agent=AGENT_NAME,
                    groups=_groups(sid, i, False),
                )
                groups_json = json.dumps([g.to_json() for g in snap.groups])
                snaps.append(snapshot_row(snap, now, cleanup_json=groups_json))
                op = OperationRecord(
                    id=uuid.uuid4().hex,
                    type=OperationType.CREATE,
                    vm_id=snap.vm_id,
                    vm_snapshot_id=sid,
                    request_id=uuid.uuid4().hex,
                    progress=30,
                    step="taking 2 groups",
                    journal={
                        "freeze_needed": True,
                        "called": list(DRIVERS),
                        "quiesce_method": "OVERLAY",
                        "quiesce_token": f"q-{uuid.uuid4().hex}",
                    },
                    params={"name": snap.name},
                    owner="bench",
                )
                ops.append(Store._operation_columns(op, now))
            conn.execute(vm_snapshots.insert(), snaps)
            conn.execute(operations.insert(), ops)
    finally:
        store.close()


def unfinished(db: Path) -> int:
    store = Store.open_sqlite(db)
    try:
        with store.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(operations).where(operations.c.done.is_(False))
                ).scalar_one()
            )
    finally:
        store.close()


async def _reads(
    address: str, ids: list[tuple[str, str]], samples: int
) -> tuple[list[float], list[float]]:
    rng = random.Random(7)
    list_ms, get_ms = [], []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = host_pb2_grpc.VMSnapshotServiceStub(channel)
        for i in range(samples + 50):
            vm, sid = ids[rng.randrange(len(ids))]
            start = time.perf_counter()
            reply = await stub.ListVMSnapshots(host_pb2.ListVMSnapshotsRequest(vm_id=vm))
            listed = (time.perf_counter() - start) * 1000
            assert reply.vm_snapshots, vm
            start = time.perf_counter()
            await stub.GetVMSnapshot(host_pb2.GetVMSnapshotRequest(id=sid))
            got = (time.perf_counter() - start) * 1000
            if i >= 50:  # warm-up first
                list_ms.append(listed)
                get_ms.append(got)
    return list_ms, get_ms


def measure_catalog(
    quick: bool, snapshots: int = 100_000, vms: int = 10_000, in_flight: int = 1_000
) -> tuple[CatalogResult, RestartResult]:
    with stack.workdir() as tmp:
        db = tmp / "catalog.db"
        ids = fill(db, snapshots, vms)
        host = stack.start_host(tmp, stack.HostConfig(), db=db)
        try:
            list_ms, get_ms = asyncio.run(_reads(host.address, ids, 300 if quick else 2000))
        finally:
            host.stop()
        catalog = CatalogResult(snapshots, list_ms, get_ms)

        procs: list[stack.Proc] = []
        try:
            agent, drivers = stack.start_agent_and_drivers(tmp, procs)
            asyncio.run(define_vms(agent.address, 1))
            config = stack.HostConfig(drivers=[d.address for d in drivers], agents=[agent.address])
            # Baseline: the same start with nothing in flight.
            start = time.perf_counter()
            stack.start_host(tmp, config, db=db, name="empty").stop()
            empty = time.perf_counter() - start
            journal_in_flight(db, in_flight)
            start = time.perf_counter()
            host = stack.start_host(tmp, config, db=db, name="restarted", timeout=300)
            resolved = time.perf_counter() - start
            host.stop()
            left = unfinished(db)
        finally:
            for p in reversed(procs):
                p.stop()
    return catalog, RestartResult(in_flight, resolved, empty, left)


def summarize(result: CatalogResult) -> dict[str, float]:
    return {
        "list_p50": median(result.list_ms),
        "list_p99": percentile(result.list_ms, 99),
        "get_p50": median(result.get_ms),
        "get_p99": percentile(result.get_ms, 99),
    }
