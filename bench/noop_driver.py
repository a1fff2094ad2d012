"""A no-op storage driver for the benchmarks, on the real SDK server.

    python -m bench.noop_driver --listen unix:///tmp/x/a.sock --name io.vmsnap.bench.a \
        --scheme a [--delay-ms D] [--counts FILE]

It claims every volume whose locator scheme is ``--scheme`` and answers a take
after ``--delay-ms`` (0: at once) with nothing stored but an id set. With
``--counts`` it writes how many calls of each kind arrived when it stops, so
the benchmark reports the RPCs per operation it measured, not assumed ones.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from vmsnap_sdk import (
    VM,
    Capability,
    DriverInfo,
    Operation,
    Priority,
    SnapshotResult,
    StorageDriver,
    TakeRequest,
    Volume,
    VolumeDecision,
    VolumeSnapshot,
    serve_driver,
)

try:
    from vmsnap_sdk import event_loop
except ImportError:  # an SDK older than the event-loop flag: `bench.compare` runs other trees'
    event_loop = None  # type: ignore[assignment]


class NoopDriver(StorageDriver):
    def __init__(self, name: str, scheme: str, delay_ms: float) -> None:
        self.name = name
        self.scheme = scheme
        self.delay = delay_ms / 1000.0
        self.counts: collections.Counter[str] = collections.Counter()
        self.taken: set[str] = set()

    async def get_info(self) -> DriverInfo:
        self.counts["get_info"] += 1
        return DriverInfo(
            name=self.name,
            vendor_version="0.0.1",
            capabilities=frozenset({Capability.CONSISTENT_GROUP}),
        )

    async def can_handle(
        self, vm: VM, volumes: Sequence[Volume], operation: Operation, options: Mapping[str, str]
    ) -> Sequence[VolumeDecision]:
        self.counts["can_handle"] += 1
        return [
            VolumeDecision(v.disk, Priority.PLUGIN, "bench")
            if v.scheme == self.scheme
            else VolumeDecision(v.disk, Priority.CANT_HANDLE, "not mine")
            for v in volumes
        ]

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        self.counts["take"] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        self.taken.add(request.vm_snapshot_id)
        return SnapshotResult(
            request.vm_snapshot_id,
            tuple(
                VolumeSnapshot(v.disk, v.locator, f"{request.vm_snapshot_id}@{v.disk}")
                for v in request.volumes
            ),
            vm_id=request.vm.id,
        )

    async def delete_snapshot(self, vm_snapshot_id: str, snapshot: SnapshotResult | None) -> None:
        self.counts["delete"] += 1
        self.taken.discard(vm_snapshot_id)


async def _serve(args: argparse.Namespace) -> None:
    driver = NoopDriver(args.name, args.scheme, args.delay_ms)

    def dump() -> None:
        # SIGUSR1: write the call counts so far (the benchmark diffs two dumps).
        if args.counts:
            Path(args.counts).write_text(json.dumps(dict(driver.counts)))

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
    await serve_driver(driver, args.listen, grace_seconds=0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.noop_driver")
    parser.add_argument("--listen", action="append", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--scheme", required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--counts", default="")
    if event_loop is None:
        asyncio.run(_serve(parser.parse_args()))
        return
    event_loop.add_argument(parser)  # as every SDK server: uvloop when installed
    args = parser.parse_args()
    event_loop.run(_serve(args), event_loop.loop_factory(args.event_loop))


if __name__ == "__main__":
    main()
