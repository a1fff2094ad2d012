"""Scaling: creates/s with 1, 16, 64, 256 VMs taken in parallel, then with 10k VMs
defined, and how the host's memory grows with the operations it ran.

One stack (sim agent, two no-op drivers, the host) with its state in /dev/shm
(the figure is the stack's CPU and hops, not the disk's fsync). Every VM has one
disk on each driver (a two-group plan: each take freezes). ``c`` workers each
take snapshots of their own VM in a loop; then 10,000 VMs are defined (10k rows
the host's caches and the agent keep) and c = 64 runs again over 64 of them.
The host's RSS is read before and after the measured creates and reported per
10,000 operations. Last, creates one at a time on a VM with 10,000 removed
snapshots in its history (a year of hourly policy runs; rows written into the
catalog before the host starts) beside a VM with none, alternately: what a
create costs as a VM's history grows.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

from bench import create, stack
from bench.stats import median


@dataclass
class ScaleResult:
    #: concurrency → creates/s
    rates: dict[int, float] = field(default_factory=dict)
    #: concurrency → median create latency (ms)
    p50_ms: dict[int, float] = field(default_factory=dict)
    #: concurrency → CPU ms per create, every process of the stack summed
    cpu_ms: dict[int, float] = field(default_factory=dict)
    rate_many_vms: float = 0.0
    p50_ms_many_vms: float = 0.0
    cpu_ms_many_vms: float = 0.0
    vms_defined: int = 0
    #: host RSS growth per 10,000 creates (MiB), and the RSS at the end (MiB)
    rss_mib_per_10k: float = 0.0
    rss_mib_end: float = 0.0
    operations: int = 0
    #: removed snapshots in the old VM's history; c = 1 creates on it and on a new
    #: VM, taken alternately: median latency (ms) and CPU per create (ms)
    history: int = 0
    p50_ms_history: float = 0.0
    p50_ms_no_history: float = 0.0
    cpu_ms_history: float = 0.0
    cpu_ms_no_history: float = 0.0


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _define_more(agent_address: str, start: int, count: int) -> None:
    from vmsnap_sdk import AgentClient

    agent = AgentClient.connect(agent_address)
    try:
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with sem:
                await agent.define_vm(create.vm_for(i))

        await asyncio.gather(*(one(i) for i in range(start, start + count)))
    finally:
        await agent.close()


def _write_history(db: Path, vm_id: str, removed: int) -> None:
    """``removed`` REMOVED snapshots of ``vm_id`` in the catalog at ``db`` (migrated
    here, before the host opens it), as years of taking and deleting leave them."""
    import time

    from vmsnap_host.model import Snapshot, SnapshotState
    from vmsnap_host.store import Store
    from vmsnap_host.store import store as catalog
    from vmsnap_host.store.schema import vm_snapshots

    store = Store.open_sqlite(db)
    try:
        now = time.time()
        rows = []
        for i in range(removed):
            snap = Snapshot(
                id=f"{vm_id}-old-{i}",
                vm_id=vm_id,
                name=f"hourly-{i}",
                state=SnapshotState.REMOVED,
                agent="sim-1",
            )
            rows.append(catalog.snapshot_row(snap, now))
        with store.engine.begin() as conn:
            conn.execute(vm_snapshots.insert(), rows)
    finally:
        store.close()


def measure_scale(quick: bool) -> ScaleResult:
    concurrencies = (1, 16, 64, 256)
    per_worker = 4 if quick else 20
    many = 1_000 if quick else 10_000
    base = "/dev/shm" if Path("/dev/shm").is_dir() else "/tmp"
    result = ScaleResult()
    with stack.workdir(base=base) as tmp:
        procs: list[stack.Proc] = []
        try:
            agent, drivers = stack.start_agent_and_drivers(tmp, procs)
            vms = asyncio.run(create.define_vms(agent.address, max(concurrencies)))
            # Two VMs beyond the many: one with a long history, one with none.
            asyncio.run(_define_more(agent.address, many, 2))
            old, new = create.vm_for(many).id, create.vm_for(many + 1).id
            result.history = 10_000
            _write_history(tmp / "host.db", old, result.history)
            config = stack.HostConfig(
                drivers=[d.address for d in drivers],
                agents=[agent.address],
                settings={"max_snapshots_per_vm": 100_000, "queue_bound": 64},
            )
            host = stack.start_host(tmp, config)
            procs.append(host)
            pid = host.popen.pid
            pids = [p.popen.pid for p in procs]

            def cpu() -> float:
                return sum(create._cpu_seconds(p) for p in pids)

            rss_before = _rss_mib(pid)
            done = 0
            for c in concurrencies:
                total = max(c * per_worker, 100 if quick else 400)
                before = cpu()
                latencies, rate = asyncio.run(create._run(host.address, vms, c, total))
                result.cpu_ms[c] = (cpu() - before) * 1000 / (total + c)
                result.rates[c] = rate
                result.p50_ms[c] = median(latencies)
                done += total + c
            asyncio.run(_define_more(agent.address, len(vms), many - len(vms)))
            result.vms_defined = many
            # 64 VMs among the many, the newest included (the host has not seen them).
            everyone = [create.vm_for(i).id for i in range(many)]
            spread = everyone[:: max(1, many // 64)][:64]
            total = 400 if quick else 2_000
            before = cpu()
            latencies, result.rate_many_vms = asyncio.run(
                create._run(host.address, spread, 64, total)
            )
            result.cpu_ms_many_vms = (cpu() - before) * 1000 / (total + 64)
            result.p50_ms_many_vms = median(latencies)
            done += total + 64
            rss_after = _rss_mib(pid)
            samples: dict[str, list[float]] = {old: [], new: []}
            cpu_ms: dict[str, float] = {old: 0.0, new: 0.0}
            rounds, per_round = (3, 20) if quick else (6, 40)
            for _ in range(rounds):
                for vm in (old, new):
                    before = cpu()
                    latencies, _rate = asyncio.run(create._run(host.address, [vm], 1, per_round))
                    cpu_ms[vm] += (cpu() - before) * 1000 / (per_round + 1)
                    samples[vm] += latencies
            result.p50_ms_history = median(samples[old])
            result.p50_ms_no_history = median(samples[new])
            result.cpu_ms_history = cpu_ms[old] / rounds
            result.cpu_ms_no_history = cpu_ms[new] / rounds
            result.operations = done
            result.rss_mib_end = rss_after
            result.rss_mib_per_10k = (rss_after - rss_before) * 10_000 / done
        finally:
            for p in reversed(procs):
                p.stop()
    return result


if __name__ == "__main__":
    print(measure_scale(quick=bool(os.environ.get("QUICK"))))
