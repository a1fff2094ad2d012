"""The simulated hypervisor: VMs, freezes under leases, native snapshots of file disks.

Everything a real agent must honour is honoured here, so that the host can be
tested against it: a freeze thaws by itself when its lease runs out (a
background task, and again at start-up for leases that ran out while the agent
was down), guest freezes fail when the guest agent does not answer, memory
snapshots need a running VM, a disk-only revert needs a stopped one, a native
snapshot keeps the bytes of ``file://`` disks (and only of those, which
DescribeVM says per disk), and the state survives a SIGKILL (see ``_store`` and
``_disks``).

Crash safety of the bytes: a take copies every file disk, then records the
snapshot (a copy without its record is garbage, removed at start-up); a delete
removes the record, then the copies; a revert writes every disk's copy under a
temporary name, then records the pending revert in the VM's file (the commit
point), then renames the copies into place. A SIGKILL before the commit point
leaves the disks as they were; after it, the restarted agent finishes the
renames before it serves. Calls that touch a VM's disks or power state are
serialised per VM; copies run in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from vmsnap_agent import __version__
from vmsnap_agent.sim import _disks
from vmsnap_agent.sim._store import (
    FreezeRecord,
    PendingRevert,
    SnapshotRecord,
    Store,
    VMRecord,
    VolumeRecord,
    vm_key,
)
from vmsnap_sdk import (
    VM,
    AgentInfo,
    CloneTarget,
    Consistency,
    HypervisorAgent,
    MemoryState,
    NativeSnapshot,
    NativeSnapshotAtFreeze,
    Page,
    QuiesceInfo,
    QuiesceMethod,
    QuiesceResult,
    UnquiesceResult,
    VMPage,
    VMState,
    Volume,
)
from vmsnap_sdk.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    VMSnapError,
)

log = logging.getLogger("vmsnap_agent.sim")

#: A VM whose name contains this word has a guest agent that never answers.
NO_GUEST_AGENT = "sim.guest_agent=false"
#: A VM whose name contains this word has a guest agent without an application
#: freeze hook: guest freezes reach FILESYSTEM consistency, not APPLICATION.
NO_FREEZE_HOOK = "sim.freeze_hook=false"

MIB = 1024 * 1024

# Reasons (ErrorInfo.reason) the sim answers with; tests match on them.
GUEST_AGENT_UNAVAILABLE = "GUEST_AGENT_UNAVAILABLE"
VM_FROZEN = "VM_FROZEN"
VM_NOT_RUNNING = "VM_NOT_RUNNING"
VM_NOT_STOPPED = "VM_NOT_STOPPED"
SNAPSHOT_DATA_MISSING = "SNAPSHOT_DATA_MISSING"
VM_NOT_FOUND = "VM_NOT_FOUND"
SNAPSHOT_NOT_FOUND = "SNAPSHOT_NOT_FOUND"
#: Under the disks directory: the copies CopyNativeDisks made, one directory per copy id.
COPIES_DIR = "vmsnap-copies"


@dataclass(frozen=True)
class GuestTraits:
    """What the simulated guest can do, read from words in the VM's name."""

    agent: bool = True
    freeze_hook: bool = True

    @classmethod
    def of(cls, name: str) -> GuestTraits:
        words = name.split()
        return cls(agent=NO_GUEST_AGENT not in words, freeze_hook=NO_FREEZE_HOOK not in words)


def _now() -> float:
    return time.time()


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _vm(record: VMRecord, agent_name: str) -> VM:
    return VM(
        id=record.id,
        name=record.name,
        state=VMState[record.state],
        volumes=tuple(
            Volume(
                v.disk,
                v.locator,
                v.size_bytes,
                v.format,
                native_snapshot=_disks.holds_bytes(v.locator),
            )
            for v in record.volumes
        ),
        memory_mib=record.memory_mib,
        agent=agent_name,
    )


def _quiesce_info(vm: VMRecord) -> QuiesceInfo:
    assert vm.freeze is not None
    return QuiesceInfo(
        token=vm.freeze.token,
        vm_id=vm.id,
        operation_id=vm.freeze.operation_id,
        method=QuiesceMethod[vm.freeze.method],
        start_time=_dt(vm.freeze.frozen_at),
        expire_time=_dt(vm.freeze.expire_at),
    )


def _io_error(doing: str, exc: OSError) -> Internal | ResourceExhausted:
    message = f"{doing}: {exc.strerror or exc} ({exc.filename or 'disk'})"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(message)
    return Internal(message)


def _native(record: SnapshotRecord) -> NativeSnapshot:
    return NativeSnapshot(
        snapshot_id=record.snapshot_id,
        vm_id=record.vm_id,
        disks=tuple(record.disks),
        include_memory=record.include_memory,
        create_time=_dt(record.create_time),
        size_bytes=record.size_bytes,
        memory_state=MemoryState(location=record.memory_location, size_bytes=record.size_bytes)
        if record.memory_location
        else None,
    )


#: The simulated guest's RAM counter ticks this often per second while it runs.
RAM_TICKS_PER_SECOND = 10


def ram_counter(record: VMRecord, now: float | None = None) -> int | None:
    """The simulated guest's RAM counter now (None while the VM is stopped)."""
    if record.state != "RUNNING":
        return None
    if not record.ram_since:  # paused (or saved by a memory pause)
        return record.ram_base
    elapsed = (now if now is not None else _now()) - record.ram_since
    return record.ram_base + int(max(0.0, elapsed) * RAM_TICKS_PER_SECOND)


def _set_ram(record: VMRecord, value: int, running: bool) -> None:
    record.ram_base = value
    record.ram_since = _now() if running else 0.0


#: Where ``VMSNAP_SIM_POWER_LOG=1``, every power state a VM takes is appended to
#: ``<state>/power.jsonl`` (``{"mono", "vm", "state"}``, ``mono`` being
#: ``time.monotonic()``, the same clock in every process of the machine): a VM's
#: start before it counts as RUNNING, its stop once it is durable, and every VM's
#: state when the agent starts. A harness reads it beside the array emulators'
#: overwrites journal (``vmsnap_emulators.overwrites``) to check that no disk was
#: reverted under a running guest (``python -m tests.chaos``).
POWER_LOG_ENV = "VMSNAP_SIM_POWER_LOG"
POWER_LOG = "power.jsonl"


class SimAgent(HypervisorAgent):
    """A simulated hypervisor whose state lives in ``state_dir``.

    Call :meth:`start` inside the event loop before serving (it resolves leases
    that expired while the agent was down and starts the thaw task) and
    :meth:`close` after.
    """

    def __init__(self, state_dir: Path, name: str = "sim-1") -> None:
        self.name = name
        self._power_log: Path | None = (
            state_dir / POWER_LOG if os.environ.get(POWER_LOG_ENV) == "1" else None
        )
        self._store = Store(state_dir)
        self._copies = _disks.NativeCopies(state_dir)
        # Calls that touch a VM's disks or power state, one at a time per VM.
        self._locks: dict[str, asyncio.Lock] = {}
        # The VMs frozen right now by token: leases and tokens are checked on
        # every call, without looking at every VM.
        self._frozen: dict[str, VMRecord] = {
            vm.freeze.token: vm for vm in self._vms.values() if vm.freeze is not None
        }
        self._wake = asyncio.Event()
        self._reaper: asyncio.Task[None] | None = None
        #: When the reaper wakes by itself next (it sleeps until the first lease
        #: runs out): a new lease wakes it only when it runs out before that.
        self._reap_at = 0.0
        # Leases that ran out while the agent was down are resolved before the
        # first call can see them, and so are the disk copies a crash cut short.
        self._thaw_expired()
        self._recover_disks()
        self._store.flush_blocking()
        for record in self._vms.values():
            self._powered(record.id, record.state)

    # --- lifecycle of the agent itself ------------------------------------------

    async def start(self) -> None:
        """Start the task that thaws VMs whose lease ran out."""
        self._ensure_reaper()

    async def close(self) -> None:
        """Stop the thaw task (freezes in force stay recorded, with their leases)."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        await self._store.flush()
        self._store.close()

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def _reap_forever(self) -> None:
        while True:
            self._wake.clear()
            self._thaw_expired()
            try:
                await self._store.flush()
            except OSError:
                log.exception("saving the state after a lease ran out failed; retried")
            # No await from here to the sleep: a lease given after this line wakes
            # the reaper (_wake_reaper) if it runs out first.
            expiries = [vm.freeze.expire_at for vm in self._frozen.values() if vm.freeze]
            self._reap_at = min(expiries) if expiries else math.inf
            timeout = max(0.0, self._reap_at - _now()) + 0.01 if expiries else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _wake_reaper(self, expire_at: float) -> None:
        """A lease that runs out at ``expire_at`` was given: wake the reaper if it
        would sleep past it. A thaw or a lease made longer needs no wake: the reaper
        then wakes early, finds nothing to thaw and sleeps again."""
        if expire_at < self._reap_at:
            self._wake.set()

    def _thaw_expired(self) -> None:
        now = _now()
        expired = [
            vm
            for vm in self._frozen.values()
            if vm.freeze is not None and vm.freeze.expire_at <= now
        ]
        for vm in expired:
            assert vm.freeze is not None
            log.warning(
                "lease ran out: thawed by the agent",
                extra={
                    "fields": {
                        "vm_id": vm.id,
                        "token": vm.freeze.token,
                        "operation_id": vm.freeze.operation_id,
                        "frozen_for_seconds": round(now - vm.freeze.frozen_at, 3),
                    }
                },
            )
            self._release(vm)

    # --- helpers ---------------------------------------------------------------

    @property
    def _vms(self) -> dict[str, VMRecord]:
        return self._store.state.vms

    def _get(self, vm_id: str) -> VMRecord:
        self._ensure_reaper()
        self._thaw_expired()
        record = self._vms.get(vm_id)
        if record is None:
            # The contract's reason (hypervisor.proto): the host tells "the VM is
            # gone" from "the snapshot is gone" by it.
            raise NotFound(f"VM {vm_id} is not defined on agent {self.name}", reason=VM_NOT_FOUND)
        return record

    def _by_token(self, token: str) -> VMRecord | None:
        self._ensure_reaper()
        self._thaw_expired()
        return self._frozen.get(token)

    @staticmethod
    def _not_frozen(record: VMRecord, doing: str) -> None:
        if record.freeze is not None:
            raise FailedPrecondition(
                f"cannot {doing} VM {record.id}: it is frozen (token {record.freeze.token}) "
                f"until {_dt(record.freeze.expire_at).isoformat()}",
                reason=VM_FROZEN,
            )

    def _lock(self, vm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(vm_id, asyncio.Lock())

    # --- the bytes of file disks -------------------------------------------------

    def _disk_path(self, volume: VolumeRecord) -> Path | None:
        """Where the disk's bytes live (None: not a file disk, the sim holds no bytes)."""
        try:
            return _disks.disk_path(self._store.dir, volume.locator)
        except ValueError as exc:  # defined before locators were checked
            raise FailedPrecondition(f"disk {volume.disk}: {exc}") from exc

    def _file_disks(self, record: VMRecord, names: Sequence[str]) -> list[tuple[str, Path, int]]:
        """(disk, path, size) of the named disks that hold bytes, in the VM's order."""
        found = []
        for v in record.volumes:
            if v.disk in names:
                path = self._disk_path(v)
                if path is not None:
                    found.append((v.disk, path, v.size_bytes))
        return found

    def _ensure_disks(self, record: VMRecord) -> None:
        for _, path, size in self._file_disks(record, [v.disk for v in record.volumes]):
            try:
                _disks.ensure_disk(path, size)
            except OSError as exc:
                raise _io_error(f"creating the disk file of VM {record.id}", exc) from exc

    def _powered(self, vm_id: str, state: str) -> None:
        """One line of the power journal (POWER_LOG), when asked for."""
        path = self._power_log
        if path is None:
            return
        line = json.dumps({"mono": time.monotonic(), "vm": vm_id, "state": state}) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def _finish_revert(self, record: VMRecord) -> None:
        """Rename the copies of a revert past its commit point into place; idempotent."""
        pending = record.reverting
        assert pending is not None
        if pending.state == "RUNNING":
            self._powered(record.id, "RUNNING")
        for _, path, _ in self._file_disks(record, pending.disks):
            tmp = _disks.temp_of(path)
            if tmp.exists():  # absent: renamed before a crash
                _disks.install(tmp, path)
        record.state = pending.state
        record.clean_shutdown = True
        record.reverting = None
        self._store.save_vm(record.id)

    def _recover_disks(self) -> None:
        """At start-up: finish committed reverts, drop copies a crash left half made."""
        for record in self._vms.values():
            if record.reverting is not None:
                log.warning(
                    "finishing a revert cut short",
                    extra={
                        "fields": {
                            "vm_id": record.id,
                            "snapshot_id": record.reverting.snapshot_id,
                        }
                    },
                )
                self._finish_revert(record)
            for v in record.volumes:
                with contextlib.suppress(FailedPrecondition):
                    path = self._disk_path(v)
                    if path is not None:
                        _disks.temp_of(path).unlink(missing_ok=True)
        wanted = {
            vm_key(vm_id): {vm_key(s) for s in snaps}
            for vm_id, snaps in self._store.state.snapshots.items()
        }
        self._copies.keep_only(wanted)

    def _copy_out(self, vm_id: str, snapshot_id: str, files: list[tuple[str, Path, int]]) -> None:
        """Copy file disks into a (new) native snapshot; worker thread."""
        self._copies.remove_snapshot(vm_id, snapshot_id)  # an earlier try cut short
        for disk, path, size in files:
            _disks.ensure_disk(path, size)
            _disks.copy_durably(path, self._copies.copy_of(vm_id, snapshot_id, disk))
        if files:  # the new directories too, before the record names them
            for directory in (
                self._copies.snapshot_dir(vm_id, snapshot_id).parent,
                self._copies.root,
                self._copies.state_dir,
            ):
                _disks.fsync_dir(directory)

    def _stage_revert(
        self, vm_id: str, snapshot_id: str, files: list[tuple[str, Path, int]]
    ) -> None:
        """Write each disk's copy under its temporary name, durably; worker thread."""
        for disk, path, _ in files:
            _disks.write_copy(self._copies.copy_of(vm_id, snapshot_id, disk), path)
        for parent in {path.parent for _, path, _ in files}:
            _disks.fsync_dir(parent)

    # --- identity and VMs ------------------------------------------------------

    async def get_info(self) -> AgentInfo:
        return AgentInfo(
            name=self.name,
            hypervisor="sim",
            version=__version__,
            quiesce_methods=frozenset(
                {
                    QuiesceMethod.OVERLAY,
                    QuiesceMethod.GUEST_FREEZE,
                    QuiesceMethod.GUEST_FREEZE_AND_OVERLAY,
                    QuiesceMethod.PAUSE_AND_SAVE_MEMORY,
                    # A native snapshot during any freeze holds the frozen instant
                    # here: the "cut" is the snapshot itself.
                    QuiesceMethod.GUEST_FREEZE_AND_CUT,
                }
            ),
            memory_snapshots=True,
            copy_native_disks=True,
            memory_with_array_disks=True,
        )

    async def describe_vm(self, vm_id: str) -> VM:
        return _vm(self._get(vm_id), self.name)

    async def list_vms(self, page: Page) -> VMPage:
        self._thaw_expired()
        await self._store.flush()
        ids = sorted(self._vms)
        # The token is the first id of the next page: stable when VMs come and go.
        rest = [i for i in ids if i >= page.token] if page.token else ids
        chunk, following = rest[: page.size], rest[page.size : page.size + 1]
        return VMPage(
            vms=tuple(_vm(self._vms[i], self.name) for i in chunk),
            next_token=following[0] if following else "",
        )

    async def define_vm(self, vm: VM) -> VM:
        for i, v in enumerate(vm.volumes):
            try:
                _disks.disk_path(self._store.dir, v.locator)
            except ValueError as exc:
                raise InvalidArgument.for_field(f"vm.volumes[{i}].locator", str(exc)) from exc
        record = VMRecord(
            id=vm.id,
            name=vm.name,
            memory_mib=vm.memory_mib,
            volumes=[VolumeRecord(v.disk, v.locator, v.size_bytes, v.format) for v in vm.volumes],
        )
        existing = self._vms.get(vm.id)
        if existing is not None:
            same = (existing.name, existing.memory_mib, existing.volumes) == (
                record.name,
                record.memory_mib,
                record.volumes,
            )
            if not same:
                raise AlreadyExists(f"VM {vm.id} is already defined with another definition")
            await asyncio.to_thread(self._ensure_disks, existing)
            return _vm(existing, self.name)
        self._vms[vm.id] = record
        self._store.save_vm(vm.id)
        await self._store.flush()
        self._powered(vm.id, record.state)
        await asyncio.to_thread(self._ensure_disks, record)
        log.info("defined", extra={"fields": {"vm_id": vm.id, "disks": len(vm.volumes)}})
        return _vm(record, self.name)

    async def undefine_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            self._undefine(vm_id)
            await self._store.flush()

    def _undefine(self, vm_id: str) -> None:
        self._thaw_expired()
        record = self._vms.get(vm_id)
        if record is None:
            return
        self._not_frozen(record, "undefine")
        if record.state != "STOPPED":
            raise FailedPrecondition(
                f"cannot undefine VM {vm_id}: it is {record.state}; stop it first",
                reason=VM_NOT_STOPPED,
            )
        del self._vms[vm_id]
        self._store.state.snapshots.pop(vm_id, None)
        # The VM's file first: a snapshot file without it is dropped at start-up.
        self._store.save_vm(vm_id)
        self._store.save_snapshots(vm_id)
        self._store.save_freeze(vm_id)  # its freeze page, thawed: removed
        # The disks stay (they are the user's, as with a real hypervisor).
        self._copies.remove_vm(vm_id)
        log.info("undefined", extra={"fields": {"vm_id": vm_id}})

    async def start_vm(self, vm_id: str) -> VM:
        async with self._lock(vm_id):
            record = self._get(vm_id)
            if record.state != "RUNNING":
                # Missing disk files are created (and fsynced) off the event loop;
                # _start then finds them.
                await asyncio.to_thread(self._ensure_disks, record)
            vm = self._start(vm_id)
            await self._store.flush()
            return vm

    def _start(self, vm_id: str) -> VM:
        record = self._get(vm_id)
        if record.state != "RUNNING":
            self._not_frozen(record, "start")
            self._ensure_disks(record)
            self._powered(vm_id, "RUNNING")
            record.state = "RUNNING"
            _set_ram(record, 0, running=True)  # a boot: the guest's RAM starts empty
            self._store.save_vm(vm_id)
            log.info("started", extra={"fields": {"vm_id": vm_id}})
        return _vm(record, self.name)

    async def stop_vm(self, vm_id: str, force: bool) -> VM:
        async with self._lock(vm_id):
            record = self._get(vm_id)
            was = record.state
            vm = self._stop(vm_id, force)
            await self._store.flush()
            if was != record.state:
                self._powered(vm_id, record.state)  # once durable (as it is, not as answered)
            return vm

    def _stop(self, vm_id: str, force: bool) -> VM:
        record = self._get(vm_id)
        if record.state != "STOPPED":
            self._not_frozen(record, "stop")
            record.state = "STOPPED"
            _set_ram(record, 0, running=False)  # RAM is lost with the VM
            record.clean_shutdown = not force
            self._store.save_vm(vm_id)
            log.info("stopped", extra={"fields": {"vm_id": vm_id, "force": force}})
        return _vm(record, self.name)

    # --- freeze ------------------------------------------------------------------

    async def quiesce(
        self,
        vm_id: str,
        method: QuiesceMethod,
        lease_seconds: float,
        best_effort: bool,
        operation_id: str,
        *,
        no_native_snapshot: bool = False,
        native_snapshot: NativeSnapshotAtFreeze | None = None,
    ) -> QuiesceResult:
        # no_native_snapshot: nothing to skip here (a simulated native snapshot costs
        # no cut inside the freeze), so a take under the freeze is still allowed.
        async with self._lock(vm_id):
            try:
                result = self._quiesce(vm_id, method, lease_seconds, best_effort, operation_id)
                if native_snapshot is not None:
                    result = await self._take_at_freeze(vm_id, result, native_snapshot)
                return result
            finally:
                # Durable before the answer (written off the event loop).
                await self._store.flush()

    async def _take_at_freeze(
        self, vm_id: str, result: QuiesceResult, asked: NativeSnapshotAtFreeze
    ) -> QuiesceResult:
        """The native snapshot asked for with the quiesce, taken inside its freeze; a
        freeze that only cut (GUEST_FREEZE_AND_CUT) then ends at once (released).
        When it cannot be taken here the answer has none: the caller's own
        take_native_snapshot then meets the error and reports it."""
        try:
            snap = await self._take(vm_id, asked.snapshot_id, asked.disks, False)
        except VMSnapError as exc:
            log.info(
                "native snapshot not taken at the freeze",
                extra={"fields": {"vm_id": vm_id, "error": exc.message}},
            )
            return result
        released = result.method is QuiesceMethod.GUEST_FREEZE_AND_CUT
        if released:
            record = self._get(vm_id)
            if record.freeze is not None and record.freeze.token == result.token:
                self._thaw(record)
        return replace(result, native_snapshot=snap, released=released)

    def _quiesce(
        self,
        vm_id: str,
        method: QuiesceMethod,
        lease_seconds: float,
        best_effort: bool,
        operation_id: str,
    ) -> QuiesceResult:
        record = self._get(vm_id)
        if record.freeze is not None:
            held = record.freeze
            # A retry of the same operation's call gets the freeze it already holds.
            if operation_id and held.operation_id == operation_id:
                return self._result(held, warning="")
            raise Aborted(
                f"VM {vm_id} is already frozen by operation {held.operation_id or '?'}",
                reason=VM_FROZEN,
            )
        applied, consistency, warning = self._freeze_outcome(record, method, best_effort)
        now = _now()
        record.freeze = FreezeRecord(
            token="q-" + uuid.uuid4().hex,
            method=applied.name,
            consistency=consistency.name,
            operation_id=operation_id,
            frozen_at=now,
            expire_at=now + lease_seconds,
        )
        if applied is QuiesceMethod.PAUSE_AND_SAVE_MEMORY:
            # Paused: the counter stops; its value is the saved RAM.
            saved = ram_counter(record, now) or 0
            _set_ram(record, saved, running=False)
            record.freeze.saved_ram = saved
            self._store.save_vm(vm_id)
        self._frozen[record.freeze.token] = record
        self._store.save_freeze(vm_id)
        self._wake_reaper(record.freeze.expire_at)
        log.info(
            "frozen",
            extra={
                "fields": {
                    "vm_id": vm_id,
                    "method": applied.name,
                    "consistency": consistency.name,
                    "lease_seconds": lease_seconds,
                    "operation_id": operation_id,
                }
            },
        )
        return self._result(record.freeze, warning)

    def _freeze_outcome(
        self, record: VMRecord, method: QuiesceMethod, best_effort: bool
    ) -> tuple[QuiesceMethod, Consistency, str]:
        """The method applied, the consistency achieved and a warning, or an error."""
        if method is QuiesceMethod.PAUSE_AND_SAVE_MEMORY:
            if record.state != "RUNNING":
                raise FailedPrecondition(
                    f"saving the memory of VM {record.id} needs it RUNNING; it is {record.state}",
                    reason=VM_NOT_RUNNING,
                )
            return method, Consistency.APPLICATION, ""
        if record.state == "STOPPED":
            # Nothing runs, nothing writes: the disks are as the last stop left
            # them, clean after a shutdown, as after a power cut after a forced stop.
            consistency = Consistency.APPLICATION if record.clean_shutdown else Consistency.CRASH
            return method, consistency, ""
        if method is QuiesceMethod.OVERLAY:
            return method, Consistency.CRASH, ""
        guest = GuestTraits.of(record.name)
        if guest.agent:
            consistency = Consistency.APPLICATION if guest.freeze_hook else Consistency.FILESYSTEM
            return method, consistency, ""
        if not best_effort:
            raise FailedPrecondition(
                f"the guest agent of VM {record.id} does not answer; cannot freeze its filesystems",
                reason=GUEST_AGENT_UNAVAILABLE,
            )
        if method is QuiesceMethod.GUEST_FREEZE_AND_OVERLAY:
            return (
                QuiesceMethod.OVERLAY,
                Consistency.CRASH,
                "guest agent did not answer: overlays only, crash consistent",
            )
        return (
            QuiesceMethod.UNSPECIFIED,
            Consistency.CRASH,
            "guest agent did not answer: nothing was frozen, crash consistent at best",
        )

    def _result(self, freeze: FreezeRecord, warning: str) -> QuiesceResult:
        return QuiesceResult(
            token=freeze.token,
            expire_time=_dt(freeze.expire_at),
            consistency=Consistency[freeze.consistency],
            method=QuiesceMethod[freeze.method],
            warning=warning,
            memory_state=MemoryState(
                location=f"sim://{self.name}/pause/{freeze.token}",
                paused_seconds=max(0.0, _now() - freeze.frozen_at),
            )
            if freeze.saved_ram >= 0
            else None,
        )

    async def renew_quiesce(self, token: str, lease_seconds: float) -> datetime:
        record = self._by_token(token)
        if record is None or record.freeze is None:
            raise NotFound(f"no freeze with token {token}: unknown or already thawed")
        record.freeze.expire_at = _now() + lease_seconds
        self._store.save_freeze(record.id)
        self._wake_reaper(record.freeze.expire_at)  # a shorter lease than before, too
        await self._store.flush()
        return _dt(record.freeze.expire_at)

    async def unquiesce(self, token: str, operation_id: str = "") -> UnquiesceResult:
        if token:
            records = [r for r in [self._by_token(token)] if r is not None]
        else:
            self._ensure_reaper()
            self._thaw_expired()
            records = [
                r
                for r in self._frozen.values()
                if operation_id and r.freeze is not None and r.freeze.operation_id == operation_id
            ]
        frozen_for = [self._thaw(r) for r in records]
        await self._store.flush()
        return UnquiesceResult(
            frozen_for_seconds=max(frozen_for, default=0.0), thawed_now=bool(frozen_for)
        )

    def _thaw(self, record: VMRecord) -> float:
        """Thaw a frozen VM; how long it was frozen."""
        assert record.freeze is not None
        frozen_for = max(0.0, _now() - record.freeze.frozen_at)
        operation_id = record.freeze.operation_id
        self._release(record)
        log.info(
            "thawed",
            extra={
                "fields": {
                    "vm_id": record.id,
                    "operation_id": operation_id,
                    "frozen_for_seconds": round(frozen_for, 3),
                }
            },
        )
        return frozen_for

    def _release(self, record: VMRecord) -> None:
        """End the VM's freeze in memory and in its freeze file (a paused VM
        resumes: its RAM counter ticks on, in the VM's file)."""
        assert record.freeze is not None
        if record.freeze.saved_ram >= 0 and record.state == "RUNNING":
            _set_ram(record, record.ram_base, running=True)
            self._store.save_vm(record.id)
        del self._frozen[record.freeze.token]
        record.freeze = None
        self._store.save_freeze(record.id)

    async def list_quiesces(self, vm_id: str = "") -> Sequence[QuiesceInfo]:
        self._ensure_reaper()
        self._thaw_expired()
        return [
            _quiesce_info(r)
            for r in sorted(self._frozen.values(), key=lambda r: r.id)
            if not vm_id or r.id == vm_id
        ]

    # --- native snapshots -----------------------------------------------------------

    async def take_native_snapshot(
        self, vm_id: str, snapshot_id: str, disks: Sequence[str], include_memory: bool
    ) -> NativeSnapshot:
        async with self._lock(vm_id):
            snap = await self._take(vm_id, snapshot_id, disks, include_memory)
            await self._store.flush()
            return snap

    async def _take(
        self, vm_id: str, snapshot_id: str, disks: Sequence[str], include_memory: bool
    ) -> NativeSnapshot:
        record = self._get(vm_id)
        known = [v.disk for v in record.volumes]
        for i, disk in enumerate(disks):
            if disk not in known:
                raise InvalidArgument.for_field(
                    f"disks[{i}]", f"{disk!r} is not a disk of VM {vm_id} ({', '.join(known)})"
                )
        chosen = [d for d in known if d in disks] if disks else known
        if not disks and record.freeze is not None and record.freeze.saved_ram >= 0:
            # Paused with the memory saved: "all" is every disk whose bytes a native
            # snapshot holds; the arrays' drivers cut the others.
            chosen = [v.disk for v in record.volumes if _disks.holds_bytes(v.locator)]
        snaps = self._store.state.snapshots.get(vm_id, {})
        existing = snaps.get(snapshot_id)
        if existing is not None:
            if (existing.disks, existing.include_memory) != (chosen, include_memory):
                raise AlreadyExists(
                    f"native snapshot {snapshot_id} of VM {vm_id} was taken with other arguments"
                )
            return _native(existing)
        if include_memory and record.state != "RUNNING":
            raise FailedPrecondition(
                f"a memory snapshot needs VM {vm_id} RUNNING; it is {record.state}",
                reason=VM_NOT_RUNNING,
            )
        paused = record.freeze is not None and record.freeze.saved_ram >= 0
        if paused and not include_memory:
            raise FailedPrecondition(
                f"VM {vm_id} is paused with its memory saved; only a memory snapshot can be "
                "taken meanwhile",
                reason=VM_FROZEN,
            )
        if paused:
            assert record.freeze is not None
            if record.freeze.adopted_by not in ("", snapshot_id):
                raise AlreadyExists(
                    f"the memory saved by freeze {record.freeze.token} is already snapshot "
                    f"{record.freeze.adopted_by}"
                )
            record.freeze.adopted_by = snapshot_id
            self._store.save_freeze(vm_id)
        size = sum(v.size_bytes for v in record.volumes if v.disk in chosen)
        files = self._file_disks(record, chosen)
        try:
            # The copies first: the record below is what makes them a snapshot.
            await asyncio.to_thread(self._copy_out, vm_id, snapshot_id, files)
        except OSError as exc:
            await asyncio.to_thread(self._copies.remove_snapshot, vm_id, snapshot_id)
            raise _io_error(f"copying the disks of VM {vm_id} into {snapshot_id}", exc) from exc
        snapshot = SnapshotRecord(
            snapshot_id=snapshot_id,
            vm_id=vm_id,
            disks=chosen,
            include_memory=include_memory,
            create_time=_now(),
            size_bytes=size + (record.memory_mib * MIB if include_memory else 0),
            ram_counter=(ram_counter(record) or 0) if include_memory else -1,
            # Saved by a pause: the state is kept beside the disks (a file, on QEMU).
            memory_location=f"sim://{self.name}/{vm_id}/{snapshot_id}" if paused else "",
        )
        self._store.state.snapshots.setdefault(vm_id, {})[snapshot_id] = snapshot
        self._store.save_snapshots(vm_id)
        log.info(
            "native snapshot taken",
            extra={
                "fields": {"vm_id": vm_id, "snapshot_id": snapshot_id, "memory": include_memory}
            },
        )
        return _native(snapshot)

    # --- clone to a new VM: copies of a native snapshot's disks ------------------

    @staticmethod
    def _copy_locator(copy_id: str, name: str) -> str:
        # A file disk like any other (file:///...): the new VM's native snapshots
        # keep its bytes. The directory names the copy: found again by its id.
        return f"{_disks.FILE_SCHEME}/{COPIES_DIR}/{copy_id}/{name}"

    async def copy_native_disks(
        self, copy_id: str, vm_id: str, snapshot_id: str, disks: Sequence[CloneTarget]
    ) -> Sequence[Volume]:
        async with self._lock(vm_id):
            snapshot = self._store.state.snapshots.get(vm_id, {}).get(snapshot_id)
            if snapshot is None:
                raise NotFound(
                    f"VM {vm_id} has no native snapshot {snapshot_id}", reason="SNAPSHOT_NOT_FOUND"
                )
            record = self._get(vm_id)
            locators = {v.disk: v.locator for v in record.volumes}
            made = []
            for i, target in enumerate(disks):
                if target.disk not in snapshot.disks:
                    raise InvalidArgument.for_field(
                        f"disks[{i}].disk",
                        f"{target.disk!r} is not a disk of native snapshot {snapshot_id}",
                    )
                if not _disks.holds_bytes(locators.get(target.disk, "")):
                    raise FailedPrecondition(
                        f"native snapshot {snapshot_id} keeps no bytes of disk {target.disk} "
                        f"({locators.get(target.disk)}): nothing to copy",
                        reason=SNAPSHOT_DATA_MISSING,
                    )
                source = self._copies.copy_of(vm_id, snapshot_id, target.disk)
                locator = self._copy_locator(copy_id, target.name)
                path = _disks.disk_path(self._copies.state_dir, locator)
                assert path is not None
                if not path.exists():  # a retry keeps what the new VM may have written
                    if not source.exists():
                        raise FailedPrecondition(
                            f"the saved data of disk {target.disk} in native snapshot "
                            f"{snapshot_id} is gone",
                            reason=SNAPSHOT_DATA_MISSING,
                        )
                    try:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        await asyncio.to_thread(_disks.copy_durably, source, path)
                    except OSError as exc:
                        raise _io_error(
                            f"copying disk {target.disk} of {snapshot_id}", exc
                        ) from exc
                made.append(Volume(target.disk, locator, path.stat().st_size))
            log.info(
                "native disks copied",
                extra={"fields": {"copy_id": copy_id, "vm_id": vm_id, "snapshot_id": snapshot_id}},
            )
            return made

    async def delete_copied_disks(self, copy_id: str) -> None:
        path = _disks.disk_path(self._copies.state_dir, self._copy_locator(copy_id, "x"))
        assert path is not None
        await asyncio.to_thread(_disks.remove_tree, path.parent)

    async def revert_native_snapshot(self, vm_id: str, snapshot_id: str) -> VM:
        async with self._lock(vm_id):
            vm = await self._revert(vm_id, snapshot_id)
            await self._store.flush()
            return vm

    async def _revert(self, vm_id: str, snapshot_id: str) -> VM:
        record = self._get(vm_id)
        snapshot = self._store.state.snapshots.get(vm_id, {}).get(snapshot_id)
        if snapshot is None:
            raise NotFound(
                f"VM {vm_id} has no native snapshot {snapshot_id}", reason=SNAPSHOT_NOT_FOUND
            )
        self._not_frozen(record, "revert")
        if not snapshot.include_memory and record.state != "STOPPED":
            raise FailedPrecondition(
                f"reverting VM {vm_id} to disk-only snapshot {snapshot_id} needs it STOPPED; "
                f"it is {record.state}",
                reason=VM_NOT_STOPPED,
            )
        files = self._file_disks(record, snapshot.disks)
        for disk, _, _ in files:
            copy = self._copies.copy_of(vm_id, snapshot_id, disk)
            if not copy.is_file():
                raise FailedPrecondition(
                    f"native snapshot {snapshot_id} of VM {vm_id} lost its copy of disk {disk} "
                    f"({copy}); it cannot be reverted to, delete it",
                    reason=SNAPSHOT_DATA_MISSING,
                )
        try:
            await asyncio.to_thread(self._stage_revert, vm_id, snapshot_id, files)
        except OSError as exc:
            for _, path, _ in files:
                _disks.temp_of(path).unlink(missing_ok=True)
            raise _io_error(f"reverting the disks of VM {vm_id} to {snapshot_id}", exc) from exc
        # The commit point: from here a restarted agent finishes the revert.
        # Memory and device state come back with a memory snapshot: the VM runs on.
        record.reverting = PendingRevert(
            snapshot_id=snapshot_id,
            disks=[disk for disk, _, _ in files],
            state="RUNNING" if snapshot.include_memory else "STOPPED",
        )
        if snapshot.include_memory:
            # The guest's RAM as saved: the counter goes on from there.
            _set_ram(record, max(0, snapshot.ram_counter), running=True)
        self._store.save_vm(vm_id)
        await self._store.flush()  # the commit point is durable before any disk moves
        self._finish_revert(record)
        log.info("reverted", extra={"fields": {"vm_id": vm_id, "snapshot_id": snapshot_id}})
        return _vm(record, self.name)

    async def delete_native_snapshot(self, vm_id: str, snapshot_id: str) -> None:
        async with self._lock(vm_id):
            snaps = self._store.state.snapshots.get(vm_id, {})
            if snaps.pop(snapshot_id, None) is not None:
                if not snaps:
                    del self._store.state.snapshots[vm_id]
                # The record first: copies without it are removed at start-up.
                self._store.save_snapshots(vm_id)
                await self._store.flush()
                log.info("native snapshot deleted", extra={"fields": {"snapshot_id": snapshot_id}})
            await asyncio.to_thread(self._copies.remove_snapshot, vm_id, snapshot_id)

    def guest_ram_counter(self, vm_id: str) -> int | None:
        """The simulated guest's RAM-only counter (None while the VM is stopped)."""
        return ram_counter(self._get(vm_id))

    async def list_native_snapshots(self, vm_id: str) -> Sequence[NativeSnapshot]:
        groups = self._store.state.snapshots
        chosen = [groups.get(vm_id, {})] if vm_id else [groups[k] for k in sorted(groups)]
        return [
            _native(s)
            for snaps in chosen
            for s in sorted(snaps.values(), key=lambda s: (s.create_time, s.snapshot_id))
        ]
