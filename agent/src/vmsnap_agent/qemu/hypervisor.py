"""QemuHypervisor: the QEMU/KVM backend of the vmsnap hypervisor agent.

State layout (everything the agent needs after a restart)::

    state_dir/vms/<vm_id>/vm.json        the VM definition
                         quiesce.json    the active quiesce, if any (token, lease, overlays)
                         qemu.pid        pidfile of the daemonized QEMU
                         console.log     serial console
                         overlays/       qcow2 overlays while quiesced
                         native-aliases.json  native snapshot id -> qcow2 tag (adopted cuts)
                         clean-stop      present after a graceful stop
    state_dir/copies/<copy_id>/          disks copied from native snapshots (copies.py)
    state_dir/run/<hash of vm_id>/qmp.sock   QMP (short path: sun_path is 108 bytes)
                                 qga.sock   host side of qemu-ga's virtio-serial port

While a VM is quiesced it cannot be started, stopped, reverted or undefined
(:class:`VmFrozen`): arrays may be reading its stable bases, so only unquiesce or
the end of the lease touches them again. A disk-only native snapshot asked for
meanwhile (the host's hypervisor group in a plan that spans arrays) adopts the
quiesce's *cut*: an internal snapshot of the local qcow2 disks taken in the same
QMP transaction as the overlays, so it is cut at the arrays' instant. It keeps its
qcow2 tag (``vmsnap-cut-<token>``); ``vms/<vm_id>/native-aliases.json`` maps the
snapshot id to it.

A new ``QemuHypervisor`` on the same state dir (``await hv.open()``) re-attaches to
the running QEMU processes, resolves quiesces whose lease ran out while no agent
was watching, and restarts the lease watchdogs of the others.

All calls on one VM are serialised by a per-VM lock; different VMs proceed in
parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

from . import memory, native, process
from . import quiesce as q
from .copies import CopiedDisk, CopySource, DiskCopies
from .errors import (
    GuestAgentError,
    GuestAgentUnavailable,
    InvalidSpec,
    QemuAgentError,
    QmpCommandError,
    QuiesceNotFound,
    SnapshotConflict,
    SnapshotNotFound,
    VmAlreadyExists,
    VmBusy,
    VmFrozen,
    VmNotFound,
    VmStateError,
)
from .guest_agent import DEFAULT_SYNC_TIMEOUT, IDLE_CLOSE, GuestAgentClient, SharedGuestAgent
from .guest_image import GuestImage, build_guest_image
from .model import (
    BootMode,
    DiskInfo,
    DiskSpec,
    NativeSnapshot,
    QuiesceMethod,
    QuiesceRecord,
    QuiesceResult,
    VmInfo,
    VmSpec,
    VmState,
)
from .process import VmPaths
from .qmp import QmpSession
from .spares import SpareOverlays
from .statefile import read_json, to_the_end, write_json_atomic

log = logging.getLogger(__name__)

GRACEFUL_STOP_TIMEOUT = 10.0
# The contract's id syntax.
_VM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_LEASE_SECONDS = 3600.0


def _log_event(event: str, record: QuiesceRecord) -> None:
    """One structured line per quiesce and unquiesce (the SDK's logging reads ``fields``)."""
    fields: dict[str, object] = {
        "vm_id": record.vm_id,
        "token": record.token,
        "method": str(record.method),
        "consistency": str(record.consistency),
        "stable_for_s": round(time.time() - record.started_at, 3),
    }
    if record.frozen_at is not None and record.thawed_at is not None:
        # Freeze sent → thaw answered: milliseconds with freeze → overlay → thaw.
        fields["guest_frozen_ms"] = round((record.thawed_at - record.frozen_at) * 1000, 1)
    if record.freeze_answered_at is not None and record.thaw_sent_at is not None:
        # The guest surely frozen: freeze answered → thaw sent (the bench reads it).
        fields["guest_surely_frozen_ms"] = round(
            (record.thaw_sent_at - record.freeze_answered_at) * 1000, 1
        )
    log.info(event, extra={"fields": fields})


class QemuHypervisor:
    def __init__(
        self,
        state_dir: str | Path,
        guest: GuestImage | None = None,
        guest_sync_timeout: float = DEFAULT_SYNC_TIMEOUT,
        freeze_timeout: float = q.FREEZE_TIMEOUT,
        guest_agent_idle_close: float | None = IDLE_CLOSE,
    ) -> None:
        """``guest`` defaults to the cached test guest, built on the first start_vm.

        ``guest_sync_timeout`` bounds how long a silent guest agent is waited for
        before :class:`GuestAgentUnavailable`; ``freeze_timeout`` bounds one
        fsfreeze (including the guest's hook). ``guest_agent_idle_close``: how long
        an unused qemu-ga connection stays open (None: for the agent's life; 0:
        closed after each use, for a short-lived user beside the agent process,
        such as a test's probe).
        """
        self._state_dir = Path(state_dir).resolve()
        self._guest = guest
        self._sync_timeout = guest_sync_timeout
        self._freeze_timeout = freeze_timeout
        self._ga_idle_close = guest_agent_idle_close
        self._locks: dict[str, asyncio.Lock] = {}
        self._qmp: dict[str, QmpSession] = {}
        #: One kept-open qemu-ga connection per VM (a thaw makes no new connection).
        self._ga: dict[str, SharedGuestAgent] = {}
        self._watchdogs: dict[str, asyncio.Task[None]] = {}
        #: token -> VM of every freeze this object watches (see _find_token).
        self._held: dict[str, str] = {}
        self._copies = DiskCopies(self._state_dir / "copies")
        #: Overlay files made ahead of each VM's next quiesce (spares.py).
        self._spares = SpareOverlays()
        #: (vm_id, snapshot_id) -> copies reading it now: its delete waits for them.
        self._copying: dict[tuple[str, str], int] = {}

    # -- lifecycle of the agent object ------------------------------------------------

    async def open(self) -> None:
        """Re-attach after a (re)start: resolve expired leases, watch the others."""
        (self._state_dir / "vms").mkdir(parents=True, exist_ok=True)
        for vm_id in self._vm_ids():
            record = self._load_quiesce(vm_id)
            if record is None:
                continue
            if record.expires_at <= time.time():
                log.warning("lease of %s expired while no agent watched: resolving", record.token)
                try:
                    await self.unquiesce(record.token)
                except Exception:
                    log.exception("resolving expired quiesce %s", record.token)
                    self._watch(record)
            else:
                self._watch(record)

    async def close(self) -> None:
        """Stop watching (VMs keep running, quiesces stay persisted) and drop connections."""
        await self._spares.close()
        for task in self._watchdogs.values():
            task.cancel()
        for task in list(self._watchdogs.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watchdogs.clear()
        for session in self._qmp.values():
            await session.close()
        self._qmp.clear()
        for ga in self._ga.values():
            await ga.close()
        self._ga.clear()

    async def __aenter__(self) -> QemuHypervisor:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- helpers ------------------------------------------------------------------------

    def _paths(self, vm_id: str) -> VmPaths:
        if not _VM_ID.fullmatch(vm_id):
            # Also what keeps an id from walking out of the state dir ("../x").
            raise VmNotFound(f"no VM {vm_id!r} (ids are [A-Za-z0-9][A-Za-z0-9._-]{{0,127}})")
        return VmPaths.for_vm(self._state_dir, vm_id)

    def _vm_ids(self) -> list[str]:
        root = self._state_dir / "vms"
        if not root.exists():
            return []
        return sorted(p.name for p in root.iterdir() if (p / "vm.json").exists())

    def _spec(self, vm_id: str) -> VmSpec:
        data = read_json(self._paths(vm_id).spec)
        if data is None:
            raise VmNotFound(vm_id)
        return VmSpec.from_json(data)

    def _lock(self, vm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(vm_id, asyncio.Lock())

    def _session(self, vm_id: str) -> QmpSession:
        if vm_id not in self._qmp:
            self._qmp[vm_id] = QmpSession(str(self._paths(vm_id).qmp), f"vmsnap-{vm_id}")
        return self._qmp[vm_id]

    def _shared_ga(self, vm_id: str) -> SharedGuestAgent:
        if vm_id not in self._ga:
            self._ga[vm_id] = SharedGuestAgent(
                str(self._paths(vm_id).qga), self._sync_timeout, self._ga_idle_close
            )
        return self._ga[vm_id]

    def _running(self, vm_id: str) -> bool:
        return process.running_pid(self._paths(vm_id)) is not None

    def _load_quiesce(self, vm_id: str) -> QuiesceRecord | None:
        data = read_json(self._paths(vm_id).quiesce)
        return QuiesceRecord.from_json(data) if data else None

    def _find_token(self, token: str) -> QuiesceRecord | None:
        # A held freeze is known by its watchdog: one file read, not one per VM (an
        # unquiesce's thaw comes after this). An unknown token is looked for everywhere.
        held = self._held.get(token)
        if held is not None:
            record = self._load_quiesce(held)
            if record is not None and record.token == token:
                return record
        for vm_id in self._vm_ids():
            record = self._load_quiesce(vm_id)
            if record is not None and record.token == token:
                return record
        return None

    def _context(self, vm_id: str) -> q.QuiesceContext:
        paths = self._paths(vm_id)
        pid = process.running_pid(paths)
        return q.QuiesceContext(
            spec=self._spec(vm_id),
            paths=paths,
            qmp=self._session(vm_id) if pid is not None else None,
            guest_agent=self._shared_ga(vm_id).session,
            hold_guest_agent=self._shared_ga(vm_id).hold,
            defer_close=self._shared_ga(vm_id).defer_close,
            freeze_timeout=self._freeze_timeout,
            cut_adopted=lambda tag: tag in self._aliases(vm_id).values(),
            claim_spare=lambda disk: self._spares.claim(vm_id, pid, disk),
        )

    def guest_agent(
        self, vm_id: str, sync_timeout: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[GuestAgentClient]:
        """A session on the VM's qemu-ga connection (``async with``): guest-exec,
        guest-file-*, ... The connection is kept open between sessions."""
        self._spec(vm_id)
        return self._shared_ga(vm_id).session(sync_timeout)

    def console_path(self, vm_id: str) -> Path:
        """The guest's serial console log (boot messages)."""
        return self._paths(vm_id).console

    def qmp(self, vm_id: str) -> QmpSession:
        """The VM's QMP session, for callers that need a command this API lacks."""
        self._spec(vm_id)
        return self._session(vm_id)

    # -- VM definition and power --------------------------------------------------------

    async def define_vm(
        self,
        vm_id: str,
        memory_mib: int,
        disks: list[DiskSpec],
        *,
        vcpus: int = 1,
        kernel_args: str = "",
        guest_agent: bool = True,
        name: str = "",
        boot: BootMode = BootMode.TEST_GUEST,
    ) -> VmInfo:
        """Define (idempotently: the same definition again is OK) a VM."""
        if not _VM_ID.fullmatch(vm_id):
            raise InvalidSpec(f"vm_id must be [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}: {vm_id!r}")
        if memory_mib < 64:
            raise InvalidSpec("memory_mib must be >= 64")
        names = [d.name for d in disks]
        if len(set(names)) != len(names):
            raise InvalidSpec(f"duplicate disk names: {names}")
        for d in disks:
            d.validate()
        spec = VmSpec(
            vm_id=vm_id,
            memory_mib=memory_mib,
            disks=tuple(disks),
            vcpus=vcpus,
            kernel_args=kernel_args,
            guest_agent=guest_agent,
            name=name,
            boot=boot,
        )
        paths = self._paths(vm_id)
        paths.check_socket_lengths()
        async with self._lock(vm_id):
            existing = read_json(paths.spec)
            if existing is not None and VmSpec.from_json(existing) != spec:
                raise VmAlreadyExists(f"{vm_id} is defined differently")
            await asyncio.to_thread(write_json_atomic, paths.spec, spec.to_json())
        return await self.describe_vm(vm_id)

    async def undefine_vm(self, vm_id: str) -> None:
        """Forget a stopped VM (its disks are the caller's). Unknown id is OK."""
        async with self._lock(vm_id):
            paths = self._paths(vm_id)
            if not paths.spec.exists():
                return
            if self._running(vm_id):
                raise VmStateError(f"{vm_id} is running", reason="VM_NOT_STOPPED")
            self._not_frozen(vm_id, "undefine")
            await self._spares.drop(vm_id, paths.spares)
            shutil.rmtree(paths.root)

    async def start_vm(
        self, vm_id: str, *, loadvm: str | None = None, incoming: Path | None = None
    ) -> VmInfo:
        """Boot the VM (no-op when running). ``loadvm`` resumes a memory snapshot instead;
        ``incoming`` starts it from a saved state file (memory.py)."""
        async with self._lock(vm_id):
            spec = self._spec(vm_id)
            paths = self._paths(vm_id)
            if not self._running(vm_id):
                # Also a VM that died while quiesced: its overlays hold writes the
                # bases lack; they are folded in by unquiesce or the lease's end.
                self._not_frozen(vm_id, "start")
                paths.clean_stop.unlink(missing_ok=True)
                # Spares of a QEMU that died under us are not trusted by the next one.
                await self._spares.drop(vm_id, paths.spares)
                guest = None
                if spec.boot is BootMode.TEST_GUEST:
                    if self._guest is None:
                        self._guest = await asyncio.to_thread(build_guest_image)
                    guest = self._guest
                await self._session(vm_id).close()
                await self._shared_ga(vm_id).close()
                argv = process.build_argv(spec, paths, guest, loadvm)
                if incoming is not None:
                    argv += ["-incoming", "defer"]
                await process.launch(argv, paths)
                if incoming is not None:
                    try:
                        await memory.load(self._session(vm_id), incoming)
                    except BaseException:
                        pid = process.running_pid(paths)
                        if pid is not None:
                            await self._stop_process(vm_id, pid, True)
                        await self._session(vm_id).close()
                        process.cleanup_runtime_files(paths)
                        raise
        return await self.describe_vm(vm_id)

    async def stop_vm(self, vm_id: str, force: bool = False) -> VmInfo:
        """Stop the VM (not while quiesced: :class:`VmFrozen`).

        Graceful: qemu-ga ``guest-shutdown`` (the guest flushes and powers off), then
        QMP ``quit`` after a timeout. Forced: ``quit`` at once (QEMU still flushes
        its own caches), SIGKILL as a last resort.
        """
        async with self._lock(vm_id):
            self._spec(vm_id)
            paths = self._paths(vm_id)
            pid = process.running_pid(paths)
            if pid is not None:
                self._not_frozen(vm_id, "stop")
                if await self._stop_process(vm_id, pid, force):
                    # Remembered for a quiesce of the stopped VM: its disks are as a
                    # clean shutdown left them.
                    paths.clean_stop.touch()
            await self._session(vm_id).close()
            await self._shared_ga(vm_id).close()
            await self._spares.drop(vm_id, paths.spares)
            process.cleanup_runtime_files(paths)
        return await self.describe_vm(vm_id)

    async def _stop_process(self, vm_id: str, pid: int, force: bool) -> bool:
        """Stop QEMU; True when the guest shut down by itself (a clean stop)."""
        paths = self._paths(vm_id)
        if not force:
            try:
                async with self.guest_agent(vm_id) as ga:
                    # qemu-ga does not answer guest-shutdown on success: don't wait long.
                    with contextlib.suppress(GuestAgentUnavailable):
                        await ga.execute("guest-shutdown", timeout=1.0)
            except (GuestAgentUnavailable, GuestAgentError) as exc:
                log.info("graceful stop of %s without guest agent: %s", vm_id, exc)
            if await process.wait_exit(pid, paths, GRACEFUL_STOP_TIMEOUT):
                return True
        with contextlib.suppress(QmpCommandError):
            await self._session(vm_id).execute("quit")
        if not await process.wait_exit(pid, paths, 5.0):
            await process.kill(pid, paths)
        return False

    async def describe_vm(self, vm_id: str) -> VmInfo:
        spec = self._spec(vm_id)
        paths = self._paths(vm_id)
        pid = process.running_pid(paths)
        record = self._load_quiesce(vm_id)
        active = {d.name: d.path for d in spec.disks}
        if record is not None:
            for o in record.overlays:
                active[o.disk] = o.overlay_path
        if pid is not None:
            # The truth is QEMU's block graph: the file of each device's top node.
            with contextlib.suppress(QmpCommandError):
                for dev in await self._session(vm_id).execute("query-block"):
                    qdev = str(dev.get("qdev", ""))
                    inserted = dev.get("inserted") or {}
                    for d in spec.disks:
                        if f"/{process.device_id(d.name)}/" in qdev and inserted.get("file"):
                            active[d.name] = inserted["file"]
        return VmInfo(
            vm_id=vm_id,
            name=spec.name,
            state=VmState.RUNNING if pid is not None else VmState.STOPPED,
            memory_mib=spec.memory_mib,
            disks=tuple(
                DiskInfo(
                    name=d.name,
                    locator=d.locator,
                    base_path=d.path,
                    active_path=active[d.name],
                    format=d.format,
                    size_bytes=d.size_bytes,
                    native_snapshot=native.holds_bytes(d),
                )
                for d in spec.disks
            ),
            pid=pid,
            quiesce_token=record.token if record else None,
        )

    async def list_vms(self) -> list[VmInfo]:
        return [await self.describe_vm(vm_id) for vm_id in self._vm_ids()]

    async def wait_guest_agent(self, vm_id: str, timeout: float = 60.0) -> None:
        """Wait until qemu-ga answers (after a boot)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                async with self.guest_agent(vm_id, sync_timeout=1.0) as ga:
                    await ga.execute("guest-ping", timeout=2.0)
                    return
            except (GuestAgentUnavailable, GuestAgentError):
                if loop.time() >= deadline or not self._running(vm_id):
                    raise
                await asyncio.sleep(0.5)

    # -- quiesce ------------------------------------------------------------------------

    async def quiesce(
        self,
        vm_id: str,
        method: QuiesceMethod | str,
        lease_seconds: float,
        operation_id: str = "",
        *,
        cut: bool = True,
        native_snapshot: tuple[str, list[str] | None] | None = None,
    ) -> QuiesceResult:
        """Make the VM's disks stable until unquiesce or the end of the lease.

        ``cut``: make the cut a disk-only native snapshot taken under this freeze
        adopts (overlay methods and guest+cut); False when the caller takes none
        (QuiesceRequest.no_native_snapshot): one internal snapshot per local disk
        less inside the freeze, none to drop after it.

        ``native_snapshot``: (snapshot id, disks or None for all), the disk-only
        native snapshot the caller would take under this freeze: the cut is
        adopted as it in this call (:meth:`_adopter`, :meth:`_end_at_freeze`).

        A retry with the same non-empty ``operation_id`` returns the quiesce it
        already holds; any other second quiesce is :class:`VmBusy`. A stopped VM
        needs nothing done: its token only keeps it from starting until the
        lease ends (consistency application after a clean stop, crash otherwise).
        """
        method = QuiesceMethod(method)
        if not 0 < lease_seconds <= MAX_LEASE_SECONDS:
            raise InvalidSpec(f"lease_seconds must be in (0, {MAX_LEASE_SECONDS}]")
        async with self._lock(vm_id):
            self._spec(vm_id)
            existing = self._load_quiesce(vm_id)
            if existing is not None:
                if operation_id and existing.operation_id == operation_id:
                    if native_snapshot is not None:
                        adopted: list[NativeSnapshot] = []
                        await self._adopter(vm_id, *native_snapshot, adopted)(existing)
                        return await self._end_at_freeze(existing, adopted)
                    return existing.result()
                raise VmBusy(f"{vm_id} is already quiesced ({existing.token})")
            token = f"q-{uuid.uuid4().hex}"
            ctx = self._context(vm_id)
            if ctx.qmp is None and method is QuiesceMethod.PAUSE_MEMORY:
                raise VmStateError(
                    f"{vm_id} is stopped: saving its memory needs it RUNNING",
                    reason="VM_NOT_RUNNING",
                )
            if ctx.qmp is None:
                clean = self._paths(vm_id).clean_stop.exists()
                record = await q.quiesce_stopped(
                    ctx, token, method, lease_seconds, operation_id=operation_id, clean_stop=clean
                )
                self._watch(record)
                return record.result()
            # A guest+cut quiesce with the native snapshot asked for is removed once
            # the cut is adopted: its end is saved only if it is kept (_end_at_freeze).
            one_call = native_snapshot is not None and method is QuiesceMethod.GUEST_CUT
            taken: list[NativeSnapshot] = []
            try:
                record = await q.quiesce(
                    ctx,
                    token,
                    method,
                    lease_seconds,
                    operation_id,
                    cut=cut,
                    save_end=not one_call,
                    at_cut=self._adopter(vm_id, *native_snapshot, taken)
                    if native_snapshot is not None
                    else None,
                )
            except BaseException:
                # The undo may have left something (a guest that would not thaw):
                # the lease watchdog keeps trying.
                leftover = self._load_quiesce(vm_id)
                if leftover is not None:
                    self._watch(leftover)
                raise
            if native_snapshot is not None:
                return await self._end_at_freeze(record, taken)
            self._watch(record)
            _log_event("quiesced", record)
            return record.result()

    def _adopter(
        self, vm_id: str, snapshot_id: str, disks: list[str] | None, into: list[NativeSnapshot]
    ) -> Callable[[QuiesceRecord], Awaitable[None]]:
        """The quiesce's cut adopted as the disk-only native snapshot asked for with
        it (what take_native_snapshot would do next, one round trip less), added to
        ``into``; run by the quiesce beside the guest's thaw, under the VM's lock.
        When the cut cannot be adopted (no cut, other disks, the id in use) nothing
        is added: the quiesce is answered without a snapshot, and the caller's
        take_native_snapshot then meets the error and reports it."""

        async def adopt(record: QuiesceRecord) -> None:
            try:
                if record.cut_tag and snapshot_id not in self._memory_index(vm_id):
                    chosen = native.select_disks(self._spec(vm_id).disks, disks)
                    into.append(
                        await self._adopt_cut(
                            vm_id, snapshot_id, [d.name for d in chosen], False, record
                        )
                    )
            except QemuAgentError as exc:
                log.info(
                    "native snapshot not taken at the freeze",
                    extra={
                        "fields": {"vm_id": vm_id, "snapshot_id": snapshot_id, "error": str(exc)}
                    },
                )

        return adopt

    async def _end_at_freeze(
        self, record: QuiesceRecord, adopted: list[NativeSnapshot]
    ) -> QuiesceResult:
        """The answer of a quiesce that was asked for a native snapshot. A guest+cut
        quiesce whose cut was adopted holds nothing more (the guest thawed at the
        cut, no overlay): it is undone here and answered released, one more round
        trip less."""
        vm_id = record.vm_id
        taken = adopted[0] if adopted else None
        if taken is None or record.method is not QuiesceMethod.GUEST_CUT or record.guest_frozen:
            self._watch(record)  # first: its lease ends it even if the save below fails
            if record.method is QuiesceMethod.GUEST_CUT:
                await self._context(vm_id).save(record)  # kept: its end saved after all
            _log_event("quiesced", record)
            return dataclasses.replace(record.result(), native=taken)
        # The aliases file names the cut (the adoption's commit point): the undo
        # keeps it, and removes the record; a retry finds the snapshot by its alias.
        # Watched first: should the undo fail, the lease ends what is left.
        _log_event("quiesced", record)
        self._watch(record)
        await q.unquiesce(self._context(vm_id), record)
        self._unwatch(record.token)
        _log_event("unquiesced", record)  # released: the same lines as with an Unquiesce
        return dataclasses.replace(record.result(), native=taken, released=True)

    async def renew_quiesce(self, token: str, lease_seconds: float) -> QuiesceResult:
        if not 0 < lease_seconds <= MAX_LEASE_SECONDS:
            raise InvalidSpec(f"lease_seconds must be in (0, {MAX_LEASE_SECONDS}]")
        record = self._find_token(token)
        if record is None:
            raise QuiesceNotFound(token)
        async with self._lock(record.vm_id):
            record = self._load_quiesce(record.vm_id)
            if record is None or record.token != token or record.expires_at <= time.time():
                raise QuiesceNotFound(f"{token} is no longer active")
            record.expires_at = time.time() + lease_seconds
            await asyncio.to_thread(
                write_json_atomic, self._paths(record.vm_id).quiesce, record.to_json()
            )
            return record.result()

    async def unquiesce(self, token: str) -> QuiesceResult | None:
        """Thaw and commit. Returns what was resolved, or None for an unknown or
        already-resolved token (idempotent: that is not an error)."""
        record = self._find_token(token)
        if record is None:
            return None
        async with self._lock(record.vm_id):
            record = self._load_quiesce(record.vm_id)
            if record is None or record.token != token:
                return None
            ctx = self._context(record.vm_id)
            await q.unquiesce(ctx, record)
            pid = process.running_pid(ctx.paths)
            if ctx.qmp is not None and pid is not None:
                # Off the caller's path: the next quiesce finds its overlays made.
                self._spares.refill(ctx.spec.vm_id, pid, ctx.qmp, ctx.spec, ctx.paths.spares)
        self._unwatch(token)
        _log_event("unquiesced", record)
        return record.result()

    async def unquiesce_operation(self, operation_id: str) -> list[QuiesceResult]:
        """Unquiesce every quiesce made with this ``operation_id`` (what a caller
        that lost the token can do); those resolved now, none when none is held."""
        if not operation_id:
            return []
        done = []
        for record in self.list_quiesces():
            if record.operation_id == operation_id:
                result = await self.unquiesce(record.token)
                if result is not None:
                    done.append(result)
        return done

    def list_quiesces(self, vm_id: str | None = None) -> list[QuiesceResult]:
        """The quiesces not yet undone: of one VM or of all (an unknown VM has none).

        One stays here until its undo is complete (guest thawed, overlays
        committed and deleted), even past its lease when that undo fails.
        """
        ids = self._vm_ids()
        if vm_id is not None:
            ids = [vm_id] if vm_id in ids else []
        return [r.result() for r in (self._load_quiesce(i) for i in ids) if r is not None]

    def _not_frozen(self, vm_id: str, doing: str) -> None:
        record = self._load_quiesce(vm_id)
        if record is not None:
            raise VmFrozen(f"cannot {doing} {vm_id}: quiesced ({record.token}) until unquiesce")

    def _watch(self, record: QuiesceRecord) -> None:
        self._held[record.token] = record.vm_id
        if record.token not in self._watchdogs:
            self._watchdogs[record.token] = asyncio.create_task(
                self._lease_watchdog(record.vm_id, record.token), name=f"lease-{record.token}"
            )

    def _unwatch(self, token: str) -> None:
        self._held.pop(token, None)
        task = self._watchdogs.pop(token, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _lease_watchdog(self, vm_id: str, token: str) -> None:
        """Undo the quiesce when its lease runs out; re-reads the lease after renewals."""
        while True:
            record = self._load_quiesce(vm_id)
            if record is None or record.token != token:
                self._watchdogs.pop(token, None)
                return
            remaining = record.expires_at - time.time()
            if remaining > 0:
                await asyncio.sleep(min(remaining, 1.0))
                continue
            log.warning("lease of %s on %s expired: unquiescing", token, vm_id)
            try:
                await self.unquiesce(token)
                return
            except Exception:
                log.exception("auto-unquiesce of %s failed, retrying", token)
                await asyncio.sleep(1.0)

    # -- native snapshots ---------------------------------------------------------------

    def _aliases_path(self, vm_id: str) -> Path:
        return self._paths(vm_id).root / "native-aliases.json"

    def _aliases(self, vm_id: str) -> dict[str, str]:
        """Native snapshot id -> internal tag, for cut snapshots adopted during a quiesce."""
        return {str(k): str(v) for k, v in (read_json(self._aliases_path(vm_id)) or {}).items()}

    def _tagged(self, vm_id: str, snap: NativeSnapshot) -> NativeSnapshot:
        """The snapshot under its qcow2 tag (what QEMU and qemu-img know)."""
        tag = self._aliases(vm_id).get(snap.snapshot_id, snap.snapshot_id)
        return dataclasses.replace(snap, snapshot_id=tag)

    async def list_native_snapshots(self, vm_id: str) -> list[NativeSnapshot]:
        spec = self._spec(vm_id)
        if self._running(vm_id):
            tagged = await native.list_live(self._session(vm_id), spec.disks)
        else:
            tagged = await native.list_offline(spec.disks)
        by_tag = {tag: sid for sid, tag in self._aliases(vm_id).items()}
        found = [
            dataclasses.replace(s, snapshot_id=by_tag.get(s.snapshot_id, s.snapshot_id))
            for s in tagged
            # A cut nobody adopted is the quiesce's own business (gone at unquiesce).
            if s.snapshot_id in by_tag or not s.snapshot_id.startswith(q.CUT_PREFIX)
        ]
        states = self._memory_index(vm_id)
        merged = [
            self._with_state(s, states[s.snapshot_id]) if s.snapshot_id in states else s
            for s in found
        ]
        listed = {s.snapshot_id for s in found}
        # A memory snapshot of a VM without local disks is its state file alone.
        merged += [
            self._with_state(NativeSnapshot(sid, (), True, float(str(e["created_at"]))), e)
            for sid, e in states.items()
            if sid not in listed and not e["disks"]
        ]
        return sorted(merged, key=lambda s: s.created_at)

    # -- memory states (memory snapshots with disks on arrays) ---------------------------

    def _memory_dir(self, vm_id: str) -> Path:
        return self._paths(vm_id).root / "memory"

    def _memory_index(self, vm_id: str) -> dict[str, dict[str, object]]:
        """Snapshot id -> its adopted state file (file, size, disks, figures)."""
        data = read_json(self._memory_dir(vm_id) / "index.json") or {}
        return {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}

    async def _save_memory_index(self, vm_id: str, index: dict[str, dict[str, object]]) -> None:
        await asyncio.to_thread(write_json_atomic, self._memory_dir(vm_id) / "index.json", index)

    @staticmethod
    def _with_state(snap: NativeSnapshot, entry: dict[str, object]) -> NativeSnapshot:
        return dataclasses.replace(
            snap,
            include_memory=True,
            vm_state_size=int(str(entry["size"])),
            memory_path=str(entry["file"]),
            memory_paused_s=float(str(entry.get("paused_s", 0.0))),
            memory_save_s=float(str(entry.get("save_s", 0.0))),
        )

    async def _adopt_memory(
        self, vm_id: str, snapshot_id: str, names: list[str] | None, include_memory: bool
    ) -> NativeSnapshot:
        """A memory snapshot asked for during a pause+memory quiesce: the saved state
        (renamed to the snapshot) and the local disks' cut of the same instant."""
        record = self._load_quiesce(vm_id)
        assert record is not None
        wanted = sorted(names if names is not None else record.cut_disks)
        if not include_memory or wanted != sorted(record.cut_disks) or not record.memory_bytes:
            raise VmFrozen(
                f"cannot snapshot {vm_id}: paused with its memory saved ({record.token}); only "
                f"a memory snapshot of the local disks cut then ({record.cut_disks}) can be "
                "taken meanwhile"
            )
        if record.adopted_by not in ("", snapshot_id):
            raise SnapshotConflict(
                f"the memory state of quiesce {record.token} is already snapshot "
                f"{record.adopted_by}"
            )
        paused_s = max(0.0, time.time() - (record.paused_at or time.time()))
        if record.cut_tag:
            # Before the index: a cut without its index entry is dropped at unquiesce.
            aliases = self._aliases(vm_id)
            aliases[snapshot_id] = record.cut_tag
            await asyncio.to_thread(write_json_atomic, self._aliases_path(vm_id), aliases)
        index = self._memory_index(vm_id)
        index[snapshot_id] = {
            # The file stays where the quiesce saved it (fsynced): adopting it is this
            # one durable index write, the commit point (no rename to half-do).
            "file": record.memory_path,
            "size": record.memory_bytes,
            "disks": list(record.cut_disks),
            "created_at": record.paused_at or time.time(),
            # The pause so far; unquiesce knows the whole window.
            "paused_s": round(paused_s, 6),
            "save_s": round(record.memory_save_s, 6),
        }
        await self._save_memory_index(vm_id, index)
        record.adopted_by = snapshot_id
        await asyncio.to_thread(write_json_atomic, self._paths(vm_id).quiesce, record.to_json())
        taken = await self._find_native(vm_id, snapshot_id)
        if taken is None:
            raise QmpCommandError(f"memory snapshot {snapshot_id} of {vm_id} not found")
        return taken

    async def _adopt_cut(
        self,
        vm_id: str,
        snapshot_id: str,
        chosen: list[str],
        include_memory: bool,
        record: QuiesceRecord,
    ) -> NativeSnapshot:
        """A disk-only native snapshot asked for while quiesced: the quiesce's cut.

        One graph read answers a retry (or an id in use) and shows the cut is there
        (a quiesce interrupted before its transaction recorded a cut it never made);
        one durable write of the aliases file is the adoption's commit point: a
        cut an alias names is kept at unquiesce, whatever the record says."""
        spec = self._spec(vm_id)
        tagged = {
            s.snapshot_id: s for s in await native.list_live(self._session(vm_id), spec.disks)
        }
        aliases = self._aliases(vm_id)
        mine = tagged.get(aliases.get(snapshot_id, snapshot_id))
        if mine is not None:  # a retry, or the id of another snapshot
            if (sorted(mine.disks), mine.include_memory) != (sorted(chosen), include_memory):
                raise SnapshotConflict(f"{snapshot_id} exists with other disks or memory")
            return dataclasses.replace(mine, snapshot_id=snapshot_id)
        if include_memory or not record.cut_tag or sorted(chosen) != sorted(record.cut_disks):
            raise VmFrozen(
                f"cannot snapshot {vm_id}: quiesced ({record.token}) until unquiesce; only a "
                f"disk-only snapshot of the disks cut at the quiesce ({record.cut_disks}) can "
                "be taken meanwhile"
            )
        owner = next((sid for sid, tag in aliases.items() if tag == record.cut_tag), "")
        if owner:
            raise SnapshotConflict(f"the cut of quiesce {record.token} is already snapshot {owner}")
        cut = tagged.get(record.cut_tag)
        if cut is None:
            raise QmpCommandError(f"cut {record.cut_tag} of {vm_id} not found")
        aliases[snapshot_id] = record.cut_tag
        await to_the_end(write_json_atomic, self._aliases_path(vm_id), aliases)
        return dataclasses.replace(cut, snapshot_id=snapshot_id)

    async def _find_native(self, vm_id: str, snapshot_id: str) -> NativeSnapshot | None:
        for s in await self.list_native_snapshots(vm_id):
            if s.snapshot_id == snapshot_id:
                return s
        return None

    async def take_native_snapshot(
        self,
        vm_id: str,
        snapshot_id: str,
        disks: list[str] | None = None,
        include_memory: bool = False,
    ) -> NativeSnapshot:
        """Internal snapshot of the (qcow2) disks, and of RAM when asked (VM running).

        Idempotent on ``snapshot_id``: an existing snapshot of that id is returned.
        """
        async with self._lock(vm_id):
            spec = self._spec(vm_id)
            running = self._running(vm_id)
            states = self._memory_index(vm_id)
            if snapshot_id in states:  # a retry: the adopted state is the answer
                found = await self._find_native(vm_id, snapshot_id)
                if found is not None:
                    if not include_memory:
                        raise SnapshotConflict(f"{snapshot_id} exists with memory")
                    return found
            if include_memory and not running:
                raise VmStateError("a memory snapshot needs a RUNNING VM", reason="VM_NOT_RUNNING")
            frozen = self._load_quiesce(vm_id) if running else None
            if frozen is not None and frozen.method is QuiesceMethod.PAUSE_MEMORY:
                return await self._adopt_memory(vm_id, snapshot_id, disks, include_memory)
            # A guest-only freeze holds no overlay: the disks are still the roots and
            # the guest writes nothing, so a disk-only snapshot is taken as usual (how
            # the host takes a plan that is only this agent's native snapshot).
            guest_only = frozen is not None and frozen.method is QuiesceMethod.GUEST
            if frozen is not None and (include_memory or not (frozen.cut_tag or guest_only)):
                if not include_memory:
                    raise VmFrozen(
                        f"cannot snapshot {vm_id}: quiesced ({frozen.token}) with no cut of "
                        "its local disks to adopt (none is a local qcow2 disk, or the Quiesce "
                        "said no_native_snapshot); unquiesce first, or quiesce without "
                        "no_native_snapshot"
                    )
                self._not_frozen(vm_id, "snapshot")  # nothing to adopt: VmFrozen
            chosen = native.select_disks(spec.disks, disks)
            if include_memory:
                native.check_memory_covers_all(spec.disks, chosen)
            if frozen is not None and not guest_only:
                return await self._adopt_cut(
                    vm_id, snapshot_id, [d.name for d in chosen], include_memory, frozen
                )
            existing = await self._find_native(vm_id, snapshot_id)
            if existing is not None:
                wanted = (sorted(d.name for d in chosen), include_memory)
                if (sorted(existing.disks), existing.include_memory) != wanted:
                    raise SnapshotConflict(f"{snapshot_id} exists with other disks or memory")
                return existing
            # A stopped VM's quiesce holds no overlay: qemu-img may snapshot its files.
            if running:
                await native.take_live(self._session(vm_id), snapshot_id, chosen, include_memory)
                if not include_memory:
                    # One QMP transaction made it on every chosen disk or on none: it is
                    # what was asked (no second graph read while a guest may be frozen).
                    # created_at is this clock's second; a later list reads qcow2's own
                    # stamp of the same instant.
                    return NativeSnapshot(
                        snapshot_id=snapshot_id,
                        disks=tuple(d.name for d in chosen),
                        include_memory=False,
                        created_at=float(int(time.time())),
                    )
            else:
                await native.offline("-c", snapshot_id, chosen)
            taken = await self._find_native(vm_id, snapshot_id)
            if taken is None:
                raise QmpCommandError(f"snapshot {snapshot_id} not found after taking it")
            return taken

    async def revert_native_snapshot(self, vm_id: str, snapshot_id: str) -> VmInfo:
        """Revert: a memory snapshot resumes RUNNING at the saved instant; a disk-only
        snapshot needs the VM STOPPED."""
        if snapshot_id in self._memory_index(vm_id):
            return await self._revert_from_state(vm_id, snapshot_id)
        async with self._lock(vm_id):
            snap = await self._find_native(vm_id, snapshot_id)
            if snap is None:
                raise SnapshotNotFound(snapshot_id)
            self._not_frozen(vm_id, "revert")
            running = self._running(vm_id)
            if running and snap.include_memory:
                await native.load_live(self._session(vm_id), self._tagged(vm_id, snap))
            elif running:
                raise VmStateError(
                    "revert of a disk-only snapshot needs the VM stopped", reason="VM_NOT_STOPPED"
                )
            else:
                spec = self._spec(vm_id)
                chosen = [d for d in spec.disks if d.name in snap.disks]
                await native.offline("-a", self._tagged(vm_id, snap).snapshot_id, chosen)
        if not running and snap.include_memory:
            return await self.start_vm(vm_id, loadvm=snapshot_id)
        return await self.describe_vm(vm_id)

    async def _revert_from_state(self, vm_id: str, snapshot_id: str) -> VmInfo:
        """Local disks back to the cut, then the VM started from the state file: it
        runs on from the saved instant. Whatever runs now is stopped first (its
        state is what the revert discards); the arrays' disks are the caller's
        (reverted by their drivers before this)."""
        self._not_frozen(vm_id, "revert")
        entry = self._memory_index(vm_id)[snapshot_id]
        path = Path(str(entry["file"]))
        if not await asyncio.to_thread(path.exists):
            raise VmStateError(
                f"the memory state of {snapshot_id} is gone ({path})",
                reason="SNAPSHOT_DATA_MISSING",
            )
        await self.stop_vm(vm_id, force=True)
        async with self._lock(vm_id):
            self._not_frozen(vm_id, "revert")
            disks = [str(d) for d in entry["disks"]]  # type: ignore[attr-defined]
            if disks:
                tag = self._aliases(vm_id).get(snapshot_id, snapshot_id)
                spec = self._spec(vm_id)
                await native.offline("-a", tag, [d for d in spec.disks if d.name in disks])
        return await self.start_vm(vm_id, incoming=path)

    async def delete_native_snapshot(self, vm_id: str, snapshot_id: str) -> None:
        """Delete; an unknown snapshot is OK (idempotent), an unknown VM's too: it
        holds none (the contract's answer, and the sim agent's)."""
        async with self._lock(vm_id):
            try:
                snap = await self._find_native(vm_id, snapshot_id)
            except VmNotFound:
                return
            if snap is None:
                return
            if self._copying.get((vm_id, snapshot_id)):
                raise VmBusy(
                    f"native snapshot {snapshot_id} of {vm_id} is being copied to a new VM's "
                    "disks; retry when the copy has finished",
                    reason="SNAPSHOT_BUSY",
                )
            if snap.memory_path and not snap.disks:
                await self._drop_memory(vm_id, snapshot_id)
                return
            tagged = self._tagged(vm_id, snap)
            if self._running(vm_id):
                await native.delete_live(self._session(vm_id), tagged)
            else:
                spec = self._spec(vm_id)
                await native.offline(
                    "-d", tagged.snapshot_id, [d for d in spec.disks if d.name in snap.disks]
                )
            aliases = self._aliases(vm_id)
            if aliases.pop(snapshot_id, None) is not None:
                await asyncio.to_thread(write_json_atomic, self._aliases_path(vm_id), aliases)
            if snap.memory_path:
                await self._drop_memory(vm_id, snapshot_id)

    async def _drop_memory(self, vm_id: str, snapshot_id: str) -> None:
        """The state file, then its index entry (a crash between leaves an entry whose
        file is gone: deleted again, idempotently)."""
        index = self._memory_index(vm_id)
        entry = index.pop(snapshot_id, None)
        if entry is not None:
            await memory.remove(str(entry["file"]))
            await self._save_memory_index(vm_id, index)

    # -- copies of native snapshots (clone to a new VM) ---------------------------------

    async def copy_native_disks(
        self, copy_id: str, vm_id: str, snapshot_id: str, targets: list[tuple[str, str]]
    ) -> list[CopiedDisk]:
        """Copy disks of a native snapshot into new qcow2 images: ``targets`` are
        (disk, new name) pairs; the answer is in their order (see copies.py).

        The VM's lock is held only to find the snapshot, not during the copy (it may
        take minutes, and a quiesce's lease watchdog needs the lock to thaw on time);
        deleting the snapshot meanwhile is refused instead.
        """
        async with self._lock(vm_id):
            spec = self._spec(vm_id)
            snap = await self._find_native(vm_id, snapshot_id)
            if snap is None:
                done = await self._copies.finished(copy_id, vm_id, snapshot_id, targets)
                if done is not None:
                    return done
                raise SnapshotNotFound(f"VM {vm_id} has no native snapshot {snapshot_id}")
            tag = self._tagged(vm_id, snap).snapshot_id
            by_name = {d.name: d for d in spec.disks}
            sources = []
            for i, (disk, name) in enumerate(targets):
                if disk not in snap.disks:
                    raise InvalidSpec(
                        f"disks[{i}].disk: {disk!r} is not a disk of native snapshot "
                        f"{snapshot_id} (its disks: {list(snap.disks)})"
                    )
                d = by_name.get(disk)
                if d is None or not native.holds_bytes(d):
                    raise VmStateError(
                        f"native snapshot {snapshot_id} keeps no bytes of disk {disk} "
                        f"({d.locator if d else 'no longer a disk of the VM'}): nothing to copy",
                        reason="SNAPSHOT_DATA_MISSING",
                    )
                sources.append(CopySource(disk, name, d.path, tag))
            key = (vm_id, snapshot_id)
            self._copying[key] = self._copying.get(key, 0) + 1
        try:
            made = await self._copies.copy(copy_id, vm_id, snapshot_id, sources)
        finally:
            self._copying[key] -= 1
            if not self._copying[key]:
                del self._copying[key]
        log.info(
            "native disks copied",
            extra={"fields": {"copy_id": copy_id, "vm_id": vm_id, "snapshot_id": snapshot_id}},
        )
        return made

    async def delete_copied_disks(self, copy_id: str) -> None:
        """Remove what copy_native_disks made for ``copy_id``; unknown is OK."""
        await self._copies.delete(copy_id)
