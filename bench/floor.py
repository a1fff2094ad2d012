"""Floor: raw unary gRPC between two Python processes (sequential and concurrent)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.stats import median


@dataclass(frozen=True)
class Floor:
    latency_ms: float  # median sequential round trip
    rate_rps: float  # round trips per second at the given concurrency


async def _measure(address: str, sequential: int, concurrent: int, concurrency: int) -> Floor:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        for _ in range(50):  # warm-up
            await stub.Check(request)
        samples = []
        for _ in range(sequential):
            start = time.perf_counter()
            await stub.Check(request)
            samples.append((time.perf_counter() - start) * 1000)
        remaining = concurrent

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await stub.Check(request)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return Floor(latency_ms=median(samples), rate_rps=concurrent / elapsed)


@contextlib.contextmanager
def echo_server() -> Iterator[str]:
    """The bare server process (``bench.echo_server``) for as long as the block runs;
    its address."""
    with tempfile.TemporaryDirectory(prefix="vsb-", dir="/tmp") as tmp:
        address = f"unix://{Path(tmp) / 'floor.sock'}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.echo_server", address],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            proc.stdout.readline()
            yield address
        finally:
            proc.terminate()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


def measure_floor(quick: bool, concurrency: int = 64) -> Floor:
    """Start the bare server process and measure round trips against it."""
    with echo_server() as address:
        n = 300 if quick else 2000
        return asyncio.run(_measure(address, n, n * 2, concurrency))


def measure_fsync(samples: int = 100, directory: str = "/tmp") -> float:
    """Median time of one fsync after a small append, in ms, where the catalogs live:
    every durable catalog commit pays about this (it varies a lot on shared disks)."""
    with tempfile.TemporaryDirectory(prefix="vsb-", dir=directory) as tmp:
        path = Path(tmp) / "fsync"
        times = []
        with path.open("wb") as f:
            for _ in range(samples):
                f.write(b"x" * 512)
                f.flush()
                start = time.perf_counter()
                os.fsync(f.fileno())
                times.append((time.perf_counter() - start) * 1000)
    return median(times)
