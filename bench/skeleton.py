"""The create path's floor in Python: a create's processes, RPCs and durable writes, no logic.

    python -m bench.skeleton serve ROLE ADDRESS DIR [--agent A] [--drivers B C]

The floor (``floor.py``) is one bare health check. A create is more than eight of
those even with no vmsnap code on its path: four processes, five RPCs (four in
sequence once the VM's DescribeVM runs beside the admission's commit)
with Python handlers and real messages, and the durable writes DESIGN.md puts
before each side effect. This module runs that shape with nothing else, so the
bench can say how much of a create is Python's and the design's, and how much is
vmsnap's own work (the catalog, fencing, checks, conversions, metrics, audit):

- a **host** answering ``CreateVMSnapshot`` (with its wait): ``DescribeVM`` to the
  agent (beside the commit once the VM was described, as the host's admission on
  the last description), a durable commit (the CREATING row, before the freeze), ``Quiesce``,
  ``TakeVMSnapshot`` to both drivers in parallel, ``Unquiesce``, a durable commit
  (READY), the answer (the freeze token is not journaled: recovery thaws by
  operation id). The commits are SQLite inserts (WAL, ``synchronous=FULL``) made
  by one writer thread that commits whatever is queued together, as the host's
  catalog does;
- an **agent** answering ``DescribeVM`` from memory, and ``Quiesce`` and
  ``Unquiesce`` after its freeze record is copied into the VM's mapped page
  (not fsynced: a freeze ends with the machine, as the sim agent's);
- two **drivers** answering ``TakeVMSnapshot`` with one snapshot per volume.

The handlers use the generated stubs straight, with no SDK layer, interceptor or
validation: what is left when every check is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import mmap
import os
import queue
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2

from bench import create
from bench.stats import median
from vmsnap_sdk import event_loop
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.driver.v1 import driver_pb2, driver_pb2_grpc
from vmsnap_sdk._proto.host.v1 import host_pb2, host_pb2_grpc
from vmsnap_sdk._proto.hypervisor.v1 import hypervisor_pb2, hypervisor_pb2_grpc

#: The skeleton agent's freeze page, as the sim agent's (``FREEZE_PAGE``).
_PAGE = 4096

#: Durable commits the skeleton host makes per create (the host's catalog makes
#: the same number: admission with CREATING, READY with the operation's end).
COMMITS = 2


class _GroupCommit:
    """One thread committing queued inserts together (one fsync per batch)."""

    def __init__(self, path: Path) -> None:
        self._queue: queue.SimpleQueue[tuple[str, asyncio.AbstractEventLoop, asyncio.Future[None]]]
        self._queue = queue.SimpleQueue()
        self._path = path
        threading.Thread(target=self._work, daemon=True).start()

    async def commit(self, what: str) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put((what, loop, future))
        await future

    def _work(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS rows (id TEXT, what TEXT, at REAL)")
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO rows VALUES (?, ?, ?)",
                [(uuid.uuid4().hex, what, time.time()) for what, _, _ in batch],
            )
            db.execute("COMMIT")
            for _, loop, future in batch:
                loop.call_soon_threadsafe(future.set_result, None)


def _vm(vm_id: str) -> common_pb2.VM:
    return common_pb2.VM(
        id=vm_id,
        name=f"bench {vm_id}",
        memory_mib=512,
        volumes=[
            common_pb2.Volume(disk="vda", locator=f"a://pool/{vm_id}-root", size_bytes=1 << 30),
            common_pb2.Volume(disk="vdb", locator=f"b://pool/{vm_id}-data", size_bytes=1 << 30),
        ],
    )


class _Host(host_pb2_grpc.VMSnapshotServiceServicer):
    def __init__(self, directory: Path, agent: str, drivers: list[str]) -> None:
        self.db = _GroupCommit(directory / "catalog.db")
        self.described: set[str] = set()  # VMs described once (the host keeps them)
        self.agent = hypervisor_pb2_grpc.HypervisorAgentStub(grpc.aio.insecure_channel(agent))
        self.drivers = {
            scheme: driver_pb2_grpc.StorageDriverStub(grpc.aio.insecure_channel(address))
            for scheme, address in zip("ab", drivers, strict=True)
        }

    async def CreateVMSnapshot(  # noqa: N802 - the generated method name
        self, request: host_pb2.CreateVMSnapshotRequest, context: Any
    ) -> host_pb2.CreateVMSnapshotResponse:
        snapshot_id = uuid.uuid4().hex
        describe = self.agent.DescribeVM(hypervisor_pb2.DescribeVMRequest(vm_id=request.vm_id))
        if request.vm_id in self.described:
            # As the host's admission on the VM's last description: the DescribeVM
            # runs beside the commit, the take waits for it before the freeze.
            fresh = asyncio.ensure_future(describe)
            await asyncio.sleep(0)
            await self.db.commit("creating")
            vm = (await fresh).vm
        else:
            vm = (await describe).vm
            await self.db.commit("creating")
        self.described.add(vm.id)
        freeze = await self.agent.Quiesce(
            hypervisor_pb2.QuiesceRequest(
                vm_id=vm.id,
                method=hypervisor_pb2.QUIESCE_METHOD_GUEST_FREEZE,
                lease=duration_pb2.Duration(seconds=30),
            )
        )
        await asyncio.gather(
            *(
                self.drivers[v.locator.partition(":")[0]].TakeVMSnapshot(
                    driver_pb2.TakeVMSnapshotRequest(
                        vm_snapshot_id=snapshot_id, vm=vm, volumes=[v], quiesced=True
                    )
                )
                for v in vm.volumes
            )
        )
        await self.agent.Unquiesce(hypervisor_pb2.UnquiesceRequest(token=freeze.token))
        await self.db.commit("ready")
        return host_pb2.CreateVMSnapshotResponse(
            operation=host_pb2.Operation(id=snapshot_id, done=True, vm_snapshot_id=snapshot_id)
        )


class _Agent(hypervisor_pb2_grpc.HypervisorAgentServicer):
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._pages: dict[str, mmap.mmap] = {}

    def _map(self, vm_id: str) -> mmap.mmap:
        fd = os.open(self.dir / f"{vm_id}.freeze", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, _PAGE)
            return mmap.mmap(fd, _PAGE)
        finally:
            os.close(fd)

    async def _record(self, vm_id: str, what: str) -> None:
        """The freeze record copied into the VM's mapped page, as the sim agent's
        (mapped in a thread at the VM's first freeze)."""
        page = self._pages.get(vm_id)
        if page is None:
            page = self._pages[vm_id] = await asyncio.to_thread(self._map, vm_id)
        page[:] = what.encode().ljust(_PAGE)

    async def DescribeVM(  # noqa: N802
        self, request: hypervisor_pb2.DescribeVMRequest, context: Any
    ) -> hypervisor_pb2.DescribeVMResponse:
        return hypervisor_pb2.DescribeVMResponse(vm=_vm(request.vm_id))

    async def Quiesce(  # noqa: N802
        self, request: hypervisor_pb2.QuiesceRequest, context: Any
    ) -> hypervisor_pb2.QuiesceResponse:
        token = uuid.uuid4().hex
        await self._record(request.vm_id, token)
        return hypervisor_pb2.QuiesceResponse(
            token=token, method=hypervisor_pb2.QUIESCE_METHOD_GUEST_FREEZE
        )

    async def Unquiesce(  # noqa: N802
        self, request: hypervisor_pb2.UnquiesceRequest, context: Any
    ) -> hypervisor_pb2.UnquiesceResponse:
        await self._record("vm", "")
        return hypervisor_pb2.UnquiesceResponse(thawed_now=True)


class _Driver(driver_pb2_grpc.StorageDriverServicer):
    async def TakeVMSnapshot(  # noqa: N802
        self, request: driver_pb2.TakeVMSnapshotRequest, context: Any
    ) -> driver_pb2.TakeVMSnapshotResponse:
        return driver_pb2.TakeVMSnapshotResponse(
            result=driver_pb2.VMSnapshotResult(
                vm_snapshot_id=request.vm_snapshot_id,
                volume_snapshots=[
                    driver_pb2.VolumeSnapshot(
                        disk=v.disk,
                        locator=v.locator,
                        handle=uuid.uuid4().hex,
                        size_bytes=v.size_bytes,
                    )
                    for v in request.volumes
                ],
                ready=True,
            )
        )


async def _serve(role: str, address: str, directory: Path, agent: str, drivers: list[str]) -> None:
    server = grpc.aio.server()
    # Each implements only a create's calls; the generated bases answer the others
    # UNIMPLEMENTED (their stubs declare every method abstract).
    if role == "host":
        host = _Host(directory, agent, drivers)  # type: ignore[abstract]
        host_pb2_grpc.add_VMSnapshotServiceServicer_to_server(host, server)
    elif role == "agent":
        hv = _Agent(directory)  # type: ignore[abstract]
        hypervisor_pb2_grpc.add_HypervisorAgentServicer_to_server(hv, server)
    else:
        driver = _Driver()  # type: ignore[abstract]
        driver_pb2_grpc.add_StorageDriverServicer_to_server(driver, server)
    server.add_insecure_port(address)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


@dataclass(frozen=True)
class SkeletonResult:
    concurrency: int
    latencies_ms: list[float]
    ops_per_s: float
    cpu_ms_per_op: float  # the four processes together


@contextmanager
def _processes(directory: Path) -> Iterator[tuple[str, list[subprocess.Popen[str]]]]:
    def address(name: str) -> str:
        return f"unix://{directory / name}.sock"

    procs: list[subprocess.Popen[str]] = []

    def start(*argv: str) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.skeleton", "serve", *argv],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the skeleton's {argv[0]} did not start")

    try:
        start("agent", address("agent"), str(directory))
        start("driver", address("a"), str(directory))
        start("driver", address("b"), str(directory))
        start(
            "host",
            address("host"),
            str(directory),
            "--agent",
            address("agent"),
            "--drivers",
            address("a"),
            address("b"),
        )
        yield address("host"), procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


def measure(quick: bool, base: str = "/tmp") -> list[SkeletonResult]:
    """Creates at concurrency 1 and 64 through the skeleton, as ``create`` drives vmsnap."""
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="vsb-skel-", dir=base) as tmp,
        _processes(Path(tmp)) as (host, procs),
    ):
        vms = [create.vm_for(i).id for i in range(64)]
        for concurrency in (1, 64):
            total = (150 if quick else 600) if concurrency == 1 else (384 if quick else 3200)
            cpu_before = sum(create._cpu_seconds(p.pid) for p in procs)
            latencies, rate = asyncio.run(create._run(host, vms, concurrency, total))
            cpu = sum(create._cpu_seconds(p.pid) for p in procs) - cpu_before
            results.append(
                SkeletonResult(concurrency, latencies, rate, cpu * 1000 / (total + concurrency))
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.skeleton", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run one process of the skeleton")
    serve.add_argument("role", choices=["host", "agent", "driver"])
    serve.add_argument("address")
    serve.add_argument("dir", type=Path)
    serve.add_argument("--agent", default="")
    serve.add_argument("--drivers", nargs=2, default=[])
    # The same loop as vmsnap's servers (uvloop when installed): the skeleton stays
    # the same processes and calls with nothing else.
    event_loop.add_argument(serve)
    run = sub.add_parser("run", help="measure creates through the skeleton and print them")
    run.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "serve":
        event_loop.run(
            _serve(args.role, args.address, args.dir, args.agent, args.drivers),
            event_loop.loop_factory(args.event_loop),
        )
        return 0
    for r in measure(args.quick):
        print(
            f"concurrency {r.concurrency}: p50 {median(r.latencies_ms):.2f} ms, "
            f"{r.ops_per_s:.1f} creates/s, {r.cpu_ms_per_op:.2f} ms CPU per create"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
