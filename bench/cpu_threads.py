"""CPU per create by process and thread: ``python -m bench.cpu_threads [--creates N] [--base DIR]``.

Starts the create benchmark's stack (sim agent, two no-op drivers, the host; state
under ``--base``, /tmp by default: on disk, as ``create_c1``), makes one warm-up
create per VM, then ``--creates`` creates one at a time, and prints the p50 and
the CPU each thread of the host and of the agent used per create, from
``/proc/<pid>/task/<tid>/stat`` (user + system) read before and after. The main
thread is the one whose id is the process's; Python does not name its other
threads in /proc, so they are listed by id, busiest first (in the host the
busiest one is the catalog writer). A c=1 create runs its processes one after
another, so its latency is about the CPU it costs plus the writes it waits for:
this says whose CPU it is. Run it on two trees alternately to compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import grpc

from bench import create, stack
from bench.stats import median
from vmsnap_sdk._proto.host.v1 import host_pb2_grpc

_TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """Seconds of CPU (user + system) per thread id of ``pid``."""
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        fields = text.rsplit(")", 1)[1].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / _TICK
    return out


async def _creates(address: str, vm_id: str, count: int) -> list[float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = host_pb2_grpc.VMSnapshotServiceStub(channel)
        latencies = []
        for _ in range(count):
            start = time.perf_counter()
            await create.create_and_wait(stub, vm_id)
            latencies.append((time.perf_counter() - start) * 1000)
        return latencies


def _per_create(pid: int, before: dict[int, float], after: dict[int, float], n: int) -> str:
    used = {tid: (after[tid] - before.get(tid, 0.0)) * 1000 / n for tid in after}
    main = used.pop(pid, 0.0)
    others = sorted(((ms, tid) for tid, ms in used.items() if ms > 0), reverse=True)
    parts = [f"main {main:.2f}"] + [f"{tid} {ms:.2f}" for ms, tid in others[:4]]
    return f"{main + sum(used.values()):.2f} ms ({', '.join(parts)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_threads", description=__doc__)
    parser.add_argument("--creates", type=int, default=200, help="creates measured (c=1)")
    parser.add_argument("--base", default="/tmp", help="where the catalog and agent state live")
    args = parser.parse_args(argv)
    with stack.workdir(base=args.base) as tmp:
        procs: list[stack.Proc] = []
        try:
            agent, drivers = stack.start_agent_and_drivers(tmp, procs)
            vms = asyncio.run(create.define_vms(agent.address, 1))
            host = stack.start_host(
                tmp,
                stack.HostConfig(
                    drivers=[d.address for d in drivers],
                    agents=[agent.address],
                    settings={"max_snapshots_per_vm": 100_000},
                ),
            )
            procs.append(host)
            asyncio.run(_creates(host.address, vms[0], 20))  # warm-up
            named = {"host": host, "agent": agent, "driver-a": drivers[0], "driver-b": drivers[1]}
            before = {k: thread_cpu(p.popen.pid) for k, p in named.items()}
            latencies = asyncio.run(_creates(host.address, vms[0], args.creates))
            after = {k: thread_cpu(p.popen.pid) for k, p in named.items()}
        finally:
            for p in reversed(procs):
                p.stop()
    print(f"creates at c=1: {args.creates}, p50 {median(latencies):.1f} ms")
    for name, proc in named.items():
        line = _per_create(proc.popen.pid, before[name], after[name], args.creates)
        print(f"CPU per create, {name}: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
