"""A storage driver for the host's tests, configurable by flags.

    python -m tests.fakes.driver --listen unix:///tmp/a.sock --name io.vmsnap.test.a \
        --scheme a --state /tmp/a.json [--behaviour ok|fail-final|fail-transient|hang|barrier]
        [--fail-on take|revert|delete|clone] [--barrier DIR --peers N] [--capabilities ...]

It claims volumes whose locator scheme is ``--scheme`` (at ``--priority``).
Every call is appended to the JSON state file with the snapshots it holds, so a
test can assert which RPCs arrived and what is left, even after killing it.
``barrier``: a take writes ``DIR/<name>`` and waits until ``--peers`` such
files exist — two drivers each block until the other was called, which proves
a parallel fan-out without measuring time. ``hang``: a take records the
snapshot (the cut happened) and then never answers; with ``--fail-on revert``,
the first revert is made and never answered. ``fail-after``: the first
revert does its work, then answers UNAVAILABLE (the outcome is unknown to the
caller); later calls answer normally. With CLONE_VOLUMES in ``--capabilities``
CloneVolumes makes ``<scheme>://clones/<clone_id>/<disk>`` volumes (kept in the
state file under "clones"); ``--fail-on clone`` fails it, or with ``hang``
makes the clone and never answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmsnap_sdk import (
    VM,
    Capability,
    CloneRequest,
    Consistency,
    DriverInfo,
    Operation,
    Page,
    Priority,
    RevertRequest,
    RevertResult,
    SnapshotPage,
    SnapshotResult,
    StorageDriver,
    TakeRequest,
    Volume,
    VolumeDecision,
    VolumeSnapshot,
    run_driver,
)
from vmsnap_sdk.errors import AlreadyExists, NotFound, ResourceExhausted, Unavailable

BARRIER_TIMEOUT = 20.0


@dataclass
class Options:
    name: str = "io.vmsnap.test.a"
    scheme: str = "a"
    state: Path | None = None
    behaviour: str = "ok"
    fail_on: str = "take"
    barrier: Path | None = None
    peers: int = 2
    priority: Priority = Priority.PLUGIN
    capabilities: frozenset[Capability] = field(
        default_factory=lambda: frozenset(
            {Capability.CONSISTENT_GROUP, Capability.REVERT, Capability.LIST}
        )
    )
    not_ready_polls: int = 0
    #: ErrorInfo reason of a fail-final error (a vendor's own, e.g. "FAKE_ARRAY_FULL").
    reason: str = ""


class FakeDriver(StorageDriver):
    def __init__(self, options: Options) -> None:
        self.o = options
        self.calls: list[list[str]] = []
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.reverted: list[str] = []
        self.polls: dict[str, int] = {}
        self.clones: dict[str, list[list[str]]] = {}
        if options.state is not None and options.state.exists():
            data = json.loads(options.state.read_text())
            self.calls, self.snapshots = data["calls"], data["snapshots"]
            self.reverted = data.get("reverted", [])
            self.clones = data.get("clones", {})

    def _record(self, method: str, snapshot_id: str = "") -> None:
        self.calls.append([method, snapshot_id])
        self._save()

    def _save(self) -> None:
        if self.o.state is None:
            return
        tmp = self.o.state.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "calls": self.calls,
                    "snapshots": self.snapshots,
                    "reverted": self.reverted,
                    "clones": self.clones,
                }
            )
        )
        os.replace(tmp, self.o.state)

    def _fail(self, op: str) -> None:
        if self.o.fail_on != op or self.o.behaviour == "fail-after":
            return
        if self.o.behaviour == "fail-final":
            raise ResourceExhausted(
                f"{self.o.name}: no space left for the snapshot (test)", reason=self.o.reason or None
            )
        if self.o.behaviour == "fail-transient":
            raise Unavailable(f"{self.o.name}: array not reachable (test)")

    async def get_info(self) -> DriverInfo:
        return DriverInfo(
            name=self.o.name, vendor_version="0.0.1", capabilities=self.o.capabilities
        )

    async def can_handle(
        self, vm: VM, volumes: Sequence[Volume], operation: Operation, options: Mapping[str, str]
    ) -> Sequence[VolumeDecision]:
        return [
            VolumeDecision(v.disk, self.o.priority, f"{self.o.scheme}:// volume")
            if v.scheme == self.o.scheme
            else VolumeDecision(v.disk, Priority.CANT_HANDLE, "not mine")
            for v in volumes
        ]

    def _result(self, snapshot_id: str) -> SnapshotResult:
        s = self.snapshots[snapshot_id]
        polls = self.polls.get(snapshot_id, 0)
        return SnapshotResult(
            snapshot_id,
            tuple(VolumeSnapshot(d, loc, h) for d, loc, h in s["volumes"]),
            ready=polls >= self.o.not_ready_polls,
            consistency=Consistency[s["consistency"]],
            vm_id=s["vm_id"],
        )

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        self._record("take", request.vm_snapshot_id)
        volumes = [
            [v.disk, v.locator, f"{request.vm_snapshot_id}@{v.disk}"] for v in request.volumes
        ]
        existing = self.snapshots.get(request.vm_snapshot_id)
        if existing is not None and existing["volumes"] != volumes:
            raise AlreadyExists(f"{request.vm_snapshot_id} was taken with other volumes")
        if self.o.behaviour == "barrier" and self.o.barrier is not None:
            (self.o.barrier / self.o.name).touch()
            loop = asyncio.get_running_loop()
            give_up = loop.time() + BARRIER_TIMEOUT
            while len(list(self.o.barrier.iterdir())) < self.o.peers:
                if loop.time() > give_up:
                    raise Unavailable(f"{self.o.name}: the other driver was never called")
                await asyncio.sleep(0.01)
        self._fail("take")
        level = request.consistency if request.quiesced else Consistency.CRASH
        self.snapshots[request.vm_snapshot_id] = {
            "volumes": volumes,
            "vm_id": request.vm.id,
            "consistency": (
                level if level is not Consistency.UNSPECIFIED else Consistency.CRASH
            ).name,
        }
        self._save()
        if self.o.behaviour == "hang" and self.o.fail_on == "take":
            await asyncio.Event().wait()
        return self._result(request.vm_snapshot_id)

    async def get_snapshot(self, vm_snapshot_id: str) -> SnapshotResult:
        self._record("get", vm_snapshot_id)
        if vm_snapshot_id not in self.snapshots:
            raise NotFound(f"{vm_snapshot_id} unknown")
        self.polls[vm_snapshot_id] = self.polls.get(vm_snapshot_id, 0) + 1
        return self._result(vm_snapshot_id)

    async def revert_snapshot(self, request: RevertRequest) -> RevertResult:
        self._record("revert", request.vm_snapshot_id)
        if request.vm_snapshot_id not in self.snapshots:
            raise NotFound(f"{request.vm_snapshot_id} unknown")
        undo = None
        if request.save_current_state and Capability.REVERT_UNDO in self.o.capabilities:
            # The array keeps the state it is about to overwrite (Element's saveCurrentState).
            kept = self.snapshots[request.vm_snapshot_id]
            self.snapshots[request.undo_vm_snapshot_id] = {
                **kept,
                "volumes": [
                    [d, loc, f"{request.undo_vm_snapshot_id}@{d}"] for d, loc, _ in kept["volumes"]
                ],
            }
            undo = self._result(request.undo_vm_snapshot_id)
        self._fail("revert")
        self.reverted.append(request.vm_snapshot_id)
        self._save()
        if self.o.behaviour == "hang" and self.o.fail_on == "revert":
            # The revert happened and its answer never comes; once (a later call,
            # from whoever resolves it, is answered).
            self.o.behaviour = "ok"
            await asyncio.Event().wait()
        if self.o.behaviour == "fail-after" and self.o.fail_on == "revert":
            # The revert happened, then the answer was lost: outcome unknown to the
            # host. Once: the link is back for the next call.
            self.o.behaviour = "ok"
            raise Unavailable(f"{self.o.name}: connection lost after the revert (test)")
        return RevertResult(undo=undo)

    async def delete_snapshot(self, vm_snapshot_id: str, snapshot: SnapshotResult | None) -> None:
        self._record("delete", vm_snapshot_id)
        self._fail("delete")
        self.snapshots.pop(vm_snapshot_id, None)
        self._save()

    async def list_snapshots(self, page: Page, vm_id: str = "") -> SnapshotPage:
        ids = sorted(self.snapshots)
        return SnapshotPage(tuple(self._result(i) for i in ids))

    async def clone_volumes(self, request: CloneRequest) -> Sequence[Volume]:
        self._record("clone", request.clone_id)
        if request.vm_snapshot_id not in self.snapshots:
            raise NotFound(f"{request.vm_snapshot_id} unknown")
        self._fail("clone")
        made = [
            [t.disk, f"{self.o.scheme}://clones/{request.clone_id}/{t.disk}"]
            for t in request.targets
        ]
        self.clones[request.clone_id] = made
        self._save()
        if self.o.behaviour == "hang" and self.o.fail_on == "clone":
            await asyncio.Event().wait()
        return [Volume(disk, locator) for disk, locator in made]

    async def delete_cloned_volumes(self, clone_id: str) -> None:
        self._record("delete_clones", clone_id)
        self.clones.pop(clone_id, None)
        self._save()


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="io.vmsnap.test.a")
    parser.add_argument("--scheme", default="a")
    parser.add_argument("--state", type=Path)
    parser.add_argument(
        "--behaviour",
        default="ok",
        choices=["ok", "fail-final", "fail-transient", "fail-after", "hang", "barrier"],
    )
    parser.add_argument(
        "--fail-on", default="take", choices=["take", "revert", "delete", "clone"]
    )
    parser.add_argument("--barrier", type=Path)
    parser.add_argument("--peers", type=int, default=2)
    parser.add_argument("--priority", default="PLUGIN", choices=[p.name for p in Priority])
    parser.add_argument(
        "--capabilities",
        default="CONSISTENT_GROUP,REVERT,LIST",
        help="comma-separated Capability names",
    )
    parser.add_argument("--not-ready-polls", type=int, default=0)


def options_from_args(args: argparse.Namespace) -> Options:
    return Options(
        name=args.name,
        scheme=args.scheme,
        state=args.state,
        behaviour=args.behaviour,
        fail_on=args.fail_on,
        barrier=args.barrier,
        peers=args.peers,
        priority=Priority[args.priority],
        capabilities=frozenset(Capability[c] for c in args.capabilities.split(",") if c),
        not_ready_polls=args.not_ready_polls,
    )


def main() -> None:
    run_driver(lambda args: FakeDriver(options_from_args(args)), extra_arguments=_arguments)


if __name__ == "__main__":
    main()
