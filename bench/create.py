"""Host: end-to-end create (CreateVMSnapshot + WaitOperation) with no-op drivers.

Two no-op SDK drivers (schemes ``a`` and ``b``) and one sim agent, each its own
process; every VM runs with one disk on each driver, so a take plans two
driver groups and must freeze (two arrays cannot cut at one instant).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from dataclasses import dataclass, field

import grpc
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import stack
from bench.floor import echo_server
from bench.stats import median, percentile
from vmsnap_sdk import VM, AgentClient, QuiesceMethod, Volume
from vmsnap_sdk._proto.host.v1 import host_pb2, host_pb2_grpc

# The RPCs of one create, by who calls whom (see README "Counting RPCs"):
#   client → host    CreateVMSnapshot with wait (answers when done)         1
#   host → agent     DescribeVM (once: beside the admission's commit when the
#                    VM's last description is known, reused by a take that
#                    starts at once), Quiesce, Unquiesce                    3
#   host → drivers   TakeVMSnapshot x 2 (parallel); CanHandle x 2 only
#                    when no cached answer is valid (first take of a VM)    2
RPCS_PER_OP = 6
# On the critical path (parallel calls count once): Create → Quiesce →
# Take ‖ Take → Unquiesce → Create's reply; DescribeVM runs beside the
# admission's commit (5 before session 13, when it ran before it).
RPCS_CRITICAL = 4
#: What the same create cost before issue 16 (a DescribeVM at admission and at
#: execution, CanHandle on every take, Create then WaitOperation): the budget
#: the issue's goal was priced on.
RPCS_CRITICAL_BEFORE = 8
RPCS_PER_OP_BEFORE = 10


@dataclass(frozen=True)
class CreateResult:
    concurrency: int
    latencies_ms: list[float]
    ops_per_s: float
    driver_calls_per_op: dict[str, float]
    client_calls_per_op: float = 0.0  # CreateVMSnapshot + WaitOperation, measured
    agent_describe_ms: float = 0.0  # straight to the agent, same run
    agent_freeze_thaw_ms: float = 0.0
    cpu_ms_per_op: dict[str, float] = field(default_factory=dict)  # by process
    #: Floor round trips made between the creates (measure_create's floor_beside).
    floor_ms: list[float] = field(default_factory=list)


def vm_for(i: int) -> VM:
    return VM(
        id=f"vm-{i:05d}",
        name=f"bench vm {i}",
        volumes=(
            Volume("vda", f"a://pool/vm{i}-root", 1 << 30),
            Volume("vdb", f"b://pool/vm{i}-data", 1 << 30),
        ),
        memory_mib=512,
    )


async def define_vms(agent_address: str, count: int) -> list[str]:
    agent = AgentClient.connect(agent_address)
    try:
        ids = []
        for i in range(count):
            vm = await agent.define_vm(vm_for(i))
            await agent.start_vm(vm.id)
            ids.append(vm.id)
        return ids
    finally:
        await agent.close()


#: Client → host calls made by :func:`create_and_wait` (the bench counts them).
CLIENT_CALLS = [0]


async def create_and_wait(
    stub: host_pb2_grpc.VMSnapshotServiceStub,
    vm_id: str,
    quiesce: host_pb2.QuiescePolicy.ValueType = host_pb2.QUIESCE_POLICY_OFF,
) -> host_pb2.Operation:
    reply = await stub.CreateVMSnapshot(
        host_pb2.CreateVMSnapshotRequest(
            request_id=uuid.uuid4().hex,
            vm_id=vm_id,
            name=uuid.uuid4().hex,
            quiesce=quiesce,
            wait=duration_pb2.Duration(seconds=30),  # one round trip when done in time
        )
    )
    CLIENT_CALLS[0] += 1
    op = reply.operation
    while not op.done:
        CLIENT_CALLS[0] += 1
        waited = await stub.WaitOperation(
            host_pb2.WaitOperationRequest(id=op.id, timeout=duration_pb2.Duration(seconds=30))
        )
        op = waited.operation
    if op.HasField("error") and op.error.code != 0:
        raise RuntimeError(f"create on {vm_id} failed: {op.error.message}")
    return op


#: Floor round trips made before each create when the floor is measured beside the
#: creates (``measure_create(floor_beside=True)``, concurrency 1).
FLOOR_BESIDE = 3


async def _run(
    address: str,
    vms: list[str],
    concurrency: int,
    total: int,
    floor_address: str = "",
    floor_ms: list[float] | None = None,
) -> tuple[list[float], float]:
    """``floor_address``: the floor's bare server; at concurrency 1 the client makes
    FLOOR_BESIDE round trips to it before each create and keeps their times in
    ``floor_ms`` (outside the creates' timing; the create rate is then of the
    creates' own time)."""
    async with contextlib.AsyncExitStack() as stack:
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
        stub = host_pb2_grpc.VMSnapshotServiceStub(channel)
        health = None
        if floor_address and concurrency == 1 and floor_ms is not None:
            floor_channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(floor_address)
            )
            health = health_pb2_grpc.HealthStub(floor_channel)
            for _ in range(50):  # warm-up, as the floor's
                await health.Check(health_pb2.HealthCheckRequest())
        for vm in vms[:concurrency]:  # warm-up: one create per VM used
            await create_and_wait(stub, vm)
        latencies: list[float] = []
        remaining = total
        busy = 0.0

        async def worker(vm: str) -> None:
            nonlocal remaining, busy
            while remaining > 0:
                remaining -= 1
                if health is not None and floor_ms is not None:
                    for _ in range(FLOOR_BESIDE):
                        begin = time.perf_counter()
                        await health.Check(health_pb2.HealthCheckRequest())
                        floor_ms.append((time.perf_counter() - begin) * 1000)
                start = time.perf_counter()
                await create_and_wait(stub, vm)
                took = time.perf_counter() - start
                busy += took
                latencies.append(took * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(worker(vm) for vm in vms[:concurrency]))
        elapsed = time.perf_counter() - start if health is None else busy
    return latencies, total / elapsed


def measure_create(
    quick: bool,
    concurrencies: tuple[int, ...] = (1, 64),
    base: str = "/tmp",
    totals: dict[int, int] | None = None,
    floor_beside: bool = False,
) -> list[CreateResult]:
    """Start agent, two drivers and the host; measure create+wait at each concurrency.
    ``base``: where the catalog and the agent's state live (/dev/shm: no fsync cost).
    ``floor_beside``: at concurrency 1, the floor's round trips measured between the
    creates too (``CreateResult.floor_ms``: the latency goal's baseline taken in the
    same seconds as the creates, so that a busy or quiet moment of a shared machine
    falls on both)."""
    results = []
    with contextlib.ExitStack() as cleanup:
        floor_address = cleanup.enter_context(echo_server()) if floor_beside else ""
        tmp = cleanup.enter_context(stack.workdir(base=base))
        procs: list[stack.Proc] = []
        try:
            agent, drivers = stack.start_agent_and_drivers(tmp, procs)
            vms = asyncio.run(define_vms(agent.address, max(concurrencies)))
            config = stack.HostConfig(
                drivers=[d.address for d in drivers],
                agents=[agent.address],
                settings={"max_snapshots_per_vm": 100_000, "queue_bound": 64},
            )
            host = stack.start_host(tmp, config)
            procs.append(host)
            for concurrency in concurrencies:
                total = (totals or {}).get(concurrency) or (
                    (150 if quick else 600) if concurrency == 1 else (384 if quick else 3200)
                )
                before = [stack.read_counts(tmp, d) for d in drivers]
                named = {
                    "host": host,
                    "agent": agent,
                    "driver_a": drivers[0],
                    "driver_b": drivers[1],
                }
                cpu_before = {k: _cpu_seconds(p.popen.pid) for k, p in named.items()}
                client_before = CLIENT_CALLS[0]
                floor_ms: list[float] = []
                latencies, rate = asyncio.run(
                    _run(host.address, vms, concurrency, total, floor_address, floor_ms)
                )
                client_calls = CLIENT_CALLS[0] - client_before
                cpu = {
                    k: (_cpu_seconds(p.popen.pid) - cpu_before[k]) * 1000 / (total + concurrency)
                    for k, p in named.items()
                }
                after = [stack.read_counts(tmp, d) for d in drivers]
                ops = total + concurrency  # the warm-up creates count too
                calls: dict[str, float] = {}
                for b, a in zip(before, after, strict=True):
                    for k, v in a.items():
                        calls[k] = calls.get(k, 0) + (v - b.get(k, 0)) / ops
                describe, pair = asyncio.run(agent_costs(agent.address, vms[0], 50))
                results.append(
                    CreateResult(
                        concurrency,
                        latencies,
                        rate,
                        calls,
                        client_calls / ops,
                        describe,
                        pair,
                        cpu,
                        floor_ms,
                    )
                )
        finally:
            for p in reversed(procs):
                p.stop()
    return results


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarize(result: CreateResult) -> dict[str, float]:
    return {
        "p50": median(result.latencies_ms),
        "p99": percentile(result.latencies_ms, 99),
        "rate": result.ops_per_s,
    }


async def agent_costs(agent_address: str, vm_id: str, samples: int) -> tuple[float, float]:
    """Median DescribeVM, and Quiesce + Unquiesce, called straight on the agent:
    the share of a create that is the sim agent's own (each freeze and thaw is
    a copy into the VM's mapped freeze page, never fsynced)."""
    agent = AgentClient.connect(agent_address)
    describe, pair = [], []
    try:
        for _ in range(samples):
            start = time.perf_counter()
            await agent.describe_vm(vm_id)
            describe.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            freeze = await agent.quiesce(vm_id, QuiesceMethod.OVERLAY, 30.0, True, uuid.uuid4().hex)
            await agent.unquiesce(freeze.token)
            pair.append((time.perf_counter() - start) * 1000)
    finally:
        await agent.close()
    return median(describe), median(pair)
