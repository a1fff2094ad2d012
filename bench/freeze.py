"""Freeze window: two drivers each taking D ms, the host against a sequential loop.

The host quiesces, calls both drivers' TakeVMSnapshot at once, and thaws as
soon as both answered: its freeze window should be about D. The baseline is
the original proposal's loop, run from this process against the same agent
and drivers: quiesce → take on driver A → take on driver B → unquiesce (about
2·D). Both windows are measured the same way, from the Quiesce call to the
Unquiesce reply (the host records its own on the snapshot, ``freeze_duration``).

The freeze API for third-party tools (:func:`measure_freeze_api`): FreezeVM then
ThawVM through the host, round trip timed by the caller, beside the agent's own
Quiesce → Unquiesce from this process (what the host adds: the journal, the
VM's lease, its catalog commits).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import grpc

from bench import stack
from bench.create import create_and_wait, define_vms, vm_for
from bench.stats import median
from vmsnap_sdk import AgentClient, DriverClient, QuiesceMethod, TakeRequest
from vmsnap_sdk._proto.host.v1 import host_pb2, host_pb2_grpc


@dataclass(frozen=True)
class FreezeResult:
    delay_ms: float
    host_ms: float  # median freeze window of the host
    sequential_ms: float  # median freeze window of the sequential loop


async def _host_windows(address: str, vm: str, samples: int) -> list[float]:
    windows = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = host_pb2_grpc.VMSnapshotServiceStub(channel)
        for _ in range(samples + 1):
            op = await create_and_wait(stub, vm)
            d = op.vm_snapshot.freeze_duration
            windows.append(d.seconds * 1000 + d.nanos / 1e6)
    return windows[1:]  # the first one warms up


async def _sequential_windows(
    agent_address: str, driver_addresses: list[str], vm_index: int, samples: int
) -> list[float]:
    agent = AgentClient.connect(agent_address)
    drivers = [DriverClient.connect(a) for a in driver_addresses]
    vm = await agent.describe_vm(vm_for(vm_index).id)
    windows = []
    try:
        for _ in range(samples + 1):
            snapshot_id = uuid.uuid4().hex
            start = time.perf_counter()
            freeze = await agent.quiesce(vm.id, QuiesceMethod.OVERLAY, 30.0, True, snapshot_id)
            for driver, volume in zip(drivers, vm.volumes, strict=True):
                await driver.take_snapshot(TakeRequest(snapshot_id, vm, (volume,), quiesced=True))
            await agent.unquiesce(freeze.token)
            windows.append((time.perf_counter() - start) * 1000)
    finally:
        await agent.close()
        for d in drivers:
            await d.close()
    return windows[1:]


def measure_freeze(
    quick: bool, delays: tuple[float, ...] = (100.0, 300.0), samples: int = 0
) -> list[FreezeResult]:
    samples = samples or (5 if quick else 15)
    results = []
    for delay in delays:
        with stack.workdir() as tmp:
            procs: list[stack.Proc] = []
            try:
                agent = stack.start_agent(tmp)
                procs.append(agent)
                drivers = [stack.start_driver(tmp, s, delay_ms=delay) for s in ("a", "b")]
                procs += drivers
                vms = asyncio.run(define_vms(agent.address, 2))
                config = stack.HostConfig(
                    drivers=[d.address for d in drivers], agents=[agent.address]
                )
                host = stack.start_host(tmp, config)
                procs.append(host)
                host_ms = asyncio.run(_host_windows(host.address, vms[0], samples))
                seq_ms = asyncio.run(
                    _sequential_windows(agent.address, [d.address for d in drivers], 1, samples)
                )
                results.append(FreezeResult(delay, median(host_ms), median(seq_ms)))
            finally:
                for p in reversed(procs):
                    p.stop()
    return results


@dataclass(frozen=True)
class FreezeApiResult:
    api_ms: float  # median FreezeVM + ThawVM round trip through the host
    agent_ms: float  # median Quiesce + Unquiesce on the agent directly


async def _api_round_trips(address: str, vm: str, samples: int) -> list[float]:
    out = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = host_pb2_grpc.VMSnapshotServiceStub(channel)
        for _ in range(samples + 1):
            request = host_pb2.FreezeVMRequest(
                request_id=uuid.uuid4().hex, vm_id=vm, quiesce=host_pb2.QUIESCE_POLICY_OFF
            )
            request.lease.FromSeconds(30)
            start = time.perf_counter()
            frozen = await stub.FreezeVM(request, timeout=30)
            await stub.ThawVM(host_pb2.ThawVMRequest(token=frozen.token), timeout=30)
            out.append((time.perf_counter() - start) * 1000)
    return out[1:]


async def _agent_round_trips(agent_address: str, vm: str, samples: int) -> list[float]:
    agent = AgentClient.connect(agent_address)
    out = []
    try:
        for _ in range(samples + 1):
            start = time.perf_counter()
            freeze = await agent.quiesce(vm, QuiesceMethod.OVERLAY, 30.0, True, uuid.uuid4().hex)
            await agent.unquiesce(freeze.token)
            out.append((time.perf_counter() - start) * 1000)
    finally:
        await agent.close()
    return out[1:]


def measure_freeze_api(quick: bool, samples: int = 0) -> FreezeApiResult:
    """FreezeVM → ThawVM through the host (sim agent, no driver), and the agent alone."""
    samples = samples or (10 if quick else 30)
    with stack.workdir() as tmp:
        procs: list[stack.Proc] = []
        try:
            agent = stack.start_agent(tmp)
            procs.append(agent)
            vms = asyncio.run(define_vms(agent.address, 2))
            host = stack.start_host(tmp, stack.HostConfig(agents=[agent.address]))
            procs.append(host)
            api = asyncio.run(_api_round_trips(host.address, vms[0], samples))
            direct = asyncio.run(_agent_round_trips(agent.address, vms[1], samples))
            return FreezeApiResult(median(api), median(direct))
        finally:
            for p in reversed(procs):
                p.stop()
