"""The catalog on both backends, and creates/s with 1, 2 and 3 host replicas.

Same run, same machine, so the figures compare: SQLite (the embedded default,
synchronous FULL) beside PostgreSQL (a throw-away cluster of this run, fsync on,
unix socket). Catalog reads: 100k READY snapshots over 10k VMs, then ListVMSnapshots
of one VM and GetVMSnapshot at random through the API. Creates: two no-op
drivers and the sim agent; CreateVMSnapshot + WaitOperation from 16 callers,
spread round robin over the replicas, each on its own VM. On a 2-core machine
the replicas share the cores with PostgreSQL, the agent and the drivers: the
figures say what the catalog and the coordination cost, not how replicas scale
on separate machines.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import grpc

from bench import stack
from bench.catalog import _reads, fill
from bench.create import create_and_wait, define_vms
from bench.qemu import Skipped
from bench.stats import median, percentile
from vmsnap_sdk._proto.host.v1 import host_pb2_grpc
from vmsnap_stack.pgcluster import PgCluster, find_bindir

CONCURRENCY = 16


@dataclass(frozen=True)
class BackendFigures:
    backend: str
    list_p50_ms: float
    list_p99_ms: float
    get_p99_ms: float
    #: replicas → creates per second
    creates_per_s: dict[int, float]


async def _creates(addresses: list[str], vms: list[str], total: int) -> float:
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    try:
        stubs = [host_pb2_grpc.VMSnapshotServiceStub(c) for c in channels]
        for i, vm in enumerate(vms):  # warm-up: one create per VM, every replica
            await create_and_wait(stubs[i % len(stubs)], vm)
        remaining = total

        async def worker(i: int, vm: str) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await create_and_wait(stubs[i % len(stubs)], vm)

        start = time.perf_counter()
        await asyncio.gather(*(worker(i, vm) for i, vm in enumerate(vms)))
        return total / (time.perf_counter() - start)
    finally:
        for c in channels:
            await c.close(None)


def measure(quick: bool) -> list[BackendFigures]:
    if find_bindir() is None:
        raise Skipped("PostgreSQL's server programs are not installed (apt-get install postgresql)")
    snapshots, vms_in_catalog = (20_000, 2_000) if quick else (100_000, 10_000)
    samples = 300 if quick else 2000
    creates = 160 if quick else 800
    out = []
    with stack.workdir() as tmp:
        tmp.chmod(0o711)  # as root the cluster runs as postgres, which must get in
        cluster = PgCluster(tmp / "pg")
        cluster.start()
        procs: list[stack.Proc] = []
        try:
            agent, drivers = stack.start_agent_and_drivers(tmp, procs)
            vms = asyncio.run(define_vms(agent.address, CONCURRENCY))
            config = stack.HostConfig(
                drivers=[d.address for d in drivers],
                agents=[agent.address],
                settings={"max_snapshots_per_vm": 100_000, "queue_bound": 64},
            )
            for backend in ("sqlite", "postgresql"):

                def url(label: str, backend: str = backend) -> str:
                    if backend == "sqlite":
                        return f"sqlite:///{tmp / f'{label}.db'}"
                    return cluster.create_database(f"{label}_{uuid.uuid4().hex[:8]}")

                db = url("catalog")
                ids = fill(db, snapshots, vms_in_catalog)
                host = stack.start_host(tmp, stack.HostConfig(), db=db, name=f"read-{backend}")
                try:
                    list_ms, get_ms = asyncio.run(_reads(host.address, ids, samples))
                finally:
                    host.stop()
                rates = {}
                for replicas in (1, 2, 3) if backend == "postgresql" else (1,):
                    db = url(f"creates{replicas}")
                    hosts = [
                        stack.start_host(
                            tmp, config, db=db, name=f"{backend}-{replicas}-{i}", instance=f"r{i}"
                        )
                        for i in range(replicas)
                    ]
                    try:
                        rates[replicas] = asyncio.run(
                            _creates([h.address for h in hosts], vms, creates)
                        )
                    finally:
                        for h in hosts:
                            h.stop()
                out.append(
                    BackendFigures(
                        backend,
                        median(list_ms),
                        percentile(list_ms, 99),
                        percentile(get_ms, 99),
                        rates,
                    )
                )
        finally:
            for p in reversed(procs):
                p.stop()
            cluster.stop()
    return out


__all__ = ["BackendFigures", "measure"]
