"""The workload: random create / revert / delete on several VMs, as a control plane runs them.

One worker per VM runs that VM's operations one after the other (so the disks
are written only while nothing runs on the VM, and the content each disk had at
every take is known); the VMs run concurrently. Every mutating call carries a
``request_id``: a call that fails with a transient error (the host is down or
restarting) is sent again with the same id, and once the host answers again
after a failure the request is replayed with the same id, which must give back
the same operation. Choices (kind, target, patterns) come from a per-VM random
generator seeded from ``--seed``; which snapshots exist depends on outcomes,
and outcomes on timing, so a seed fixes the choices, not the run.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tests.chaos.checks import (
    Content,
    Violation,
    check_one_side,
    check_restored,
    compared,
    plan_text,
)
from tests.chaos.disks import Disk, DiskIO
from tests.chaos.knobs import Knobs
from vmsnap_host.client import HostClient, Operation, QuiescePolicy, VMSnapshot
from vmsnap_sdk.errors import Aborted, NotFound, TransientError, VMSnapError


@dataclass
class OpRecord:
    """One operation the harness asked for, and how it ended."""

    index: int
    vm_id: str
    kind: str
    #: ok, failed:CODE (done with an error), refused:CODE (not admitted),
    #: unresolved (not done within the patience), skipped:WHY (never sent).
    outcome: str = ""
    snapshot_id: str = ""
    operation_id: str = ""
    detail: str = ""
    seconds: float = 0.0


@dataclass
class VMModel:
    """What the harness knows of one VM: its disks' content and its snapshots."""

    id: str
    disks: list[Disk]
    rng: random.Random
    ops: int
    #: What each disk holds now, when known.
    current: dict[str, Content | None] = field(default_factory=dict)
    #: Acknowledged READY snapshot id -> what each disk held at the take.
    acknowledged: dict[str, dict[str, Content | None]] = field(default_factory=dict)
    #: Snapshots the harness asked to delete (whatever came of it).
    deleted: set[str] = field(default_factory=set)
    #: Why the harness stopped using this VM (an operation it could not resolve).
    retired: str = ""
    running: bool = True
    #: Never started (the QEMU run: no guest boots on two busy cores, and the local
    #: qcow2 disk can be written from outside only while no QEMU holds it).
    stay_stopped: bool = False

    def live(self) -> list[str]:
        return sorted(s for s in self.acknowledged if s not in self.deleted)


class Progress:
    """What the killer waits on: operations started, reverts running, the end."""

    def __init__(self) -> None:
        self.started = 0
        self.reverts_running = 0
        self.finished = False
        self._changed = asyncio.Condition()

    async def _bump(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def start_op(self, kind: str) -> None:
        self.started += 1
        if kind == "revert":
            self.reverts_running += 1
        await self._bump()

    async def end_op(self, kind: str) -> None:
        if kind == "revert":
            self.reverts_running -= 1
        await self._bump()

    async def finish(self) -> None:
        self.finished = True
        await self._bump()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Until ``predicate`` holds (True) or the workload ended or time ran out (False)."""
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: predicate() or self.finished), timeout
                )
            except TimeoutError:
                return False
        return predicate()


class Outcome(Exception):
    """An operation that ended without an Operation to show: refused, or unresolved."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


class ControlPlane:
    """Mutating calls with request_id retries, and waiting on their operations."""

    def __init__(self, host: HostClient, knobs: Knobs, ended: dict[str, float]) -> None:
        self.host = host
        self.knobs = knobs
        self.ended = ended
        #: Replays with the same request_id that returned another operation.
        self.replay_mismatches: list[str] = []

    async def submit(self, send: Callable[[], Awaitable[Operation]], deadline: float) -> Operation:
        delay = 0.2
        while True:
            try:
                return await send()
            except (TransientError, Aborted) as exc:
                if time.monotonic() > deadline:
                    raise Outcome("unresolved", f"not accepted in time: {exc}") from exc
            except VMSnapError as exc:
                raise Outcome(f"refused:{exc.code.name}", exc.message) from exc
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    async def run(self, send: Callable[[], Awaitable[Operation]]) -> Operation:
        """Send (retrying with the same request_id) and wait until the operation is done."""
        deadline = time.monotonic() + self.knobs.op_patience
        op = await self.submit(send, deadline)
        replay = False
        while not op.done:
            if time.monotonic() > deadline:
                raise Outcome("unresolved", f"operation {op.id} not done at {op.step!r}")
            try:
                if replay:
                    again = await send()
                    replay = False
                    if again.id != op.id:
                        self.replay_mismatches.append(
                            f"request {op.request_id}: replay gave operation {again.id}, "
                            f"first {op.id}"
                        )
                op = await self.host.wait_operation(op.id, 2.0)
            except (TransientError, Aborted):
                replay = True
                await asyncio.sleep(0.3)
            except NotFound as exc:
                raise Outcome("unresolved", f"operation {op.id} is gone: {exc.message}") from exc
            except VMSnapError:
                await asyncio.sleep(0.3)  # a replay refused: keep waiting on the operation
        self.ended[op.id] = time.time()
        return op

    async def call(self, send: Callable[[], Awaitable[object]], patience: float) -> bool:
        """A plain call (start, stop) retried while the host is down; whether it worked."""
        deadline = time.monotonic() + patience
        while True:
            try:
                await send()
                return True
            except (TransientError, Aborted):
                if time.monotonic() > deadline:
                    return False
            except VMSnapError:
                return False
            await asyncio.sleep(0.3)


def _outcome(op: Operation) -> str:
    if op.error is None:
        return "ok"
    return f"failed:{op.error.code.name}"


class Workload:
    """The per-VM workers and what they saw."""

    def __init__(
        self,
        tag: str,
        vms: list[VMModel],
        host: HostClient,
        io: DiskIO,
        knobs: Knobs,
        progress: Progress,
        ended: dict[str, float],
    ) -> None:
        self.tag = tag
        self.vms = vms
        self.host = host
        self.io = io
        self.knobs = knobs
        self.progress = progress
        self.control = ControlPlane(host, knobs, ended)
        self.log: list[OpRecord] = []
        self.violations: list[Violation] = []
        self.local_checked = False
        #: Disks whose bytes a revert check really compared.
        self.compared = 0

    async def run(self) -> None:
        try:
            await asyncio.gather(*(self._worker(vm) for vm in self.vms))
        finally:
            await self.progress.finish()

    async def _worker(self, vm: VMModel) -> None:
        for index in range(vm.ops):
            if vm.retired:
                self.log.append(
                    OpRecord(index, vm.id, "any", "skipped:vm-retired", detail=vm.retired)
                )
                continue
            kind = self._choose(vm)
            record = OpRecord(index, vm.id, kind)
            self.log.append(record)
            started = time.monotonic()
            await self.progress.start_op(kind)
            try:
                await {"create": self._create, "revert": self._revert, "delete": self._delete}[
                    kind
                ](vm, record)
            except Outcome as exc:
                record.outcome, record.detail = exc.outcome, exc.detail
                if exc.outcome == "unresolved":
                    vm.retired = f"{kind} {record.operation_id or '?'}: {exc.detail}"
            except Exception as exc:  # noqa: BLE001 - one odd answer must not end the run
                # Whatever the host answered, the harness cannot tell what the VM holds
                # now: it stops using it (and says so) rather than guess.
                record.outcome = f"harness-error:{type(exc).__name__}"
                record.detail = str(exc)[:500]
                vm.retired = f"{kind}: {type(exc).__name__}: {str(exc)[:200]}"
            finally:
                record.seconds = round(time.monotonic() - started, 3)
                await self.progress.end_op(kind)

    def _choose(self, vm: VMModel) -> str:
        live = vm.live()
        kinds = [k for k, _ in self.knobs.weights]
        pick: str = vm.rng.choices(kinds, [w for _, w in self.knobs.weights])[0]
        if not live:
            return "create"
        if len(live) >= self.knobs.max_live_snapshots_per_vm and pick == "create":
            return vm.rng.choice(["revert", "delete"])
        return pick

    def _patterns(self, vm: VMModel) -> dict[str, Content]:
        size = 2 * self.knobs.pattern_bytes
        return {d.name: vm.rng.randbytes(size) for d in vm.disks}

    # --- the three operations -------------------------------------------------------

    async def _create(self, vm: VMModel, record: OpRecord) -> None:
        patterns = self._patterns(vm)  # drawn first: the choices do not depend on outcomes
        if not vm.running and not vm.stay_stopped:
            vm.running = await self.control.call(
                lambda: self.host.start_vm(vm.id), self.knobs.op_patience / 3
            )
        written: dict[str, Content | None] = {}
        for disk in vm.disks:
            if disk.kind == "local" and (disk.path is None or not disk.path.exists()):
                written[disk.name] = None  # not checkable: the agent keeps no bytes
                continue
            try:
                await self.io.write(disk, patterns[disk.name])
            except VMSnapError as exc:
                vm.current[disk.name] = None  # a write that timed out may have landed
                raise Outcome("skipped:disk-unwritable", f"{disk.name}: {exc}") from exc
            written[disk.name] = patterns[disk.name]
            vm.current[disk.name] = patterns[disk.name]
            if disk.kind == "local":
                self.local_checked = True
        request_id = f"{self.tag}-{vm.id}-{record.index}"
        name = f"s{record.index}"
        op = await self.control.run(
            lambda: self.host.create_vm_snapshot(
                vm.id, name, quiesce=QuiescePolicy.BEST_EFFORT, request_id=request_id
            )
        )
        record.operation_id, record.snapshot_id = op.id, op.vm_snapshot_id
        record.outcome = _outcome(op)
        if op.error is not None:
            record.detail = op.error.message
            return
        vm.acknowledged[op.vm_snapshot_id] = written

    async def _revert(self, vm: VMModel, record: OpRecord) -> None:
        target = vm.rng.choice(vm.live())
        record.snapshot_id = target
        before = dict(vm.current)
        request_id = f"{self.tag}-{vm.id}-{record.index}"
        op = await self.control.run(
            lambda: self.host.revert_vm_snapshot(target, stop_vm=True, request_id=request_id)
        )
        vm.running = False
        record.operation_id = op.id
        record.outcome = _outcome(op)
        actual = await self.read_all(vm)
        expected = vm.acknowledged[target]
        self.compared += compared(expected, actual)
        if op.error is None:
            found = check_restored(target, expected, actual, when=op.id)
            if found:  # say which driver or agent took each disk
                found = check_restored(
                    target, expected, actual, when=op.id, plan=plan_text(await self._get(target))
                )
            self.violations += found
        else:
            record.detail = op.error.message
            self.violations += check_one_side(
                f"revert {op.id} to {target} ({op.error.code.name})", before, expected, actual
            )
        vm.current = actual

    async def _delete(self, vm: VMModel, record: OpRecord) -> None:
        target = vm.rng.choice(vm.live())
        record.snapshot_id = target
        vm.deleted.add(target)
        request_id = f"{self.tag}-{vm.id}-{record.index}"
        op = await self.control.run(
            lambda: self.host.delete_vm_snapshot(target, request_id=request_id)
        )
        record.operation_id = op.id
        record.outcome = _outcome(op)
        if op.error is not None:
            record.detail = op.error.message

    async def _get(self, snapshot_id: str) -> VMSnapshot | None:
        try:
            return await self.host.get_vm_snapshot(snapshot_id)
        except VMSnapError:
            return None

    async def read_all(self, vm: VMModel) -> dict[str, Content | None]:
        """Every disk's content now (None: unreadable within the patience, or not checkable)."""
        found: dict[str, Content | None] = {}
        for disk in vm.disks:
            try:
                found[disk.name] = await self.io.read(disk)
            except VMSnapError:
                found[disk.name] = None
        return found
