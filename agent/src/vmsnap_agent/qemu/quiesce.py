"""Quiesce and unquiesce one VM: overlays, guest freeze, and their undo.

Methods (see :class:`~.model.QuiesceMethod`):

* ``overlay`` — one QMP ``transaction`` of ``blockdev-snapshot-sync`` over every
  writable disk. QEMU switches all disks to new qcow2 overlays at the same instant
  (the transaction is atomic, with the VM's I/O drained), so the base files stop
  changing and are crash-consistent together. Undo = active ``block-commit`` of
  each overlay into its base, ``block-job-complete`` once READY, delete the file.
* ``guest`` — ``guest-fsfreeze-freeze`` through qemu-ga. The disks stay as they
  are, the guest writes nothing until the thaw; the guest is frozen for the whole
  lease, so this is the method with the longest freeze.
* ``guest+cut`` — freeze, the cut alone (internal snapshots of the local qcow2
  disks, one transaction), thaw at once: for a plan that is a native snapshot
  alone, which adopts the cut. No overlay to make or commit; the other disks keep
  changing after the thaw.
* ``overlay+guest`` — freeze, overlay transaction, thaw at once. The overlay cut
  happens while the file systems are frozen, so the stable bases are file-system
  consistent, yet the guest is frozen only for the few milliseconds of the
  transaction instead of for the whole time the arrays take to snapshot. Keeping
  it frozen longer would buy nothing: the bases no longer receive writes.

Every step is made durable before it is taken (the record lists the overlays and
``guest_frozen`` before the transaction or the freeze), and every undo step is
idempotent and checks QEMU's actual state (jobs, graph nodes), so an agent that
crashed anywhere can finish the undo after a restart.

Application consistency: qemu-ga runs its fsfreeze hook before freezing and fails
the freeze if the hook fails, but does not say whether a hook is configured. The
vmsnap guest convention is a hook log at :data:`HOOK_LOG` (the hook appends
"freeze <uptime>"/"thaw <uptime>" and keeps the last lines; a guest with the hook
creates it at boot). Its presence before the freeze, plus the successful freeze,
stand for the proof, with every method: qemu-ga fails the freeze when a configured
hook fails. (``overlay+guest`` read the log again after the thaw to see a new
"freeze" line; that added three qemu-ga round trips to every take for what the
freeze's success already says, and was dropped in issue 16.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener

from . import memory
from .errors import GuestAgentError, GuestAgentUnavailable, QmpCommandError
from .guest_agent import GuestAgentClient
from .model import (
    Consistency,
    DiskFormat,
    OverlayRecord,
    QuiesceMethod,
    QuiesceRecord,
    VmSpec,
)
from .native import holds_bytes
from .process import VmPaths, format_node, node_key, overlay_node
from .qmp import JOB_RECHECK_INTERVAL, QmpSession, error_class
from .statefile import to_the_end, write_json_atomic

log = logging.getLogger(__name__)

HOOK_LOG = "/run/vmsnap/fsfreeze-hook.log"
FREEZE_TIMEOUT = 30.0
COMMIT_TIMEOUT = 300.0

#: A session on the VM's kept-open qemu-ga connection (``SharedGuestAgent.session``).
GuestAgentFactory = Callable[[], AbstractAsyncContextManager[GuestAgentClient]]


@dataclass
class QuiesceContext:
    spec: VmSpec
    paths: VmPaths
    qmp: QmpSession | None  # None when the VM is not running
    guest_agent: GuestAgentFactory
    # Bound on one guest-fsfreeze-freeze/thaw (the hook may flush a database).
    freeze_timeout: float = FREEZE_TIMEOUT
    # A guest file handle to close once the guest is thawed (the hook log's).
    defer_close: Callable[[int], None] = lambda handle: None
    # Keep the qemu-ga connection open while the guest is frozen (the thaw then
    # needs no new connection), or let it close when idle.
    hold_guest_agent: Callable[[bool], None] = lambda held: None

    # Whether a native snapshot adopted the cut of this tag (its alias is durable).
    cut_adopted: Callable[[str], bool] = lambda tag: False
    # The spare overlay (spares.py) made for this disk, now the quiesce's; None: none.
    claim_spare: Callable[[str], Path | None] = lambda disk: None

    async def save(
        self, record: QuiesceRecord, place: Sequence[tuple[Path, Path]] = ()
    ) -> set[str]:
        """Durable before the caller goes on; written (and fsynced) off the event loop.
        Calls on one VM are serialised by its lock, so saves land in order.

        ``place``: spare overlays moved to their recorded paths once the record is
        durable (a crash in between leaves a recorded path with no file, which the
        undo skips). Returns the paths placed."""
        return await to_the_end(_save_and_place, self.paths, record.to_json(), place)


def _claim_spares(ctx: QuiesceContext, record: QuiesceRecord) -> list[tuple[Path, Path]]:
    """(spare, overlay path) for each overlay with a spare ready; claimed just before
    the save that places them, so a failure earlier leaves none unplaced."""
    place = []
    for o in record.overlays:
        spare = ctx.claim_spare(o.disk)
        if spare is not None:
            place.append((spare, Path(o.overlay_path)))
    return place


def _save_and_place(
    paths: VmPaths, data: dict[str, object], place: Sequence[tuple[Path, Path]]
) -> set[str]:
    try:
        write_json_atomic(paths.quiesce, data)
    except BaseException:
        for spare, _ in place:  # claimed, never placed: nothing may stay behind
            spare.unlink(missing_ok=True)
        raise
    placed: set[str] = set()
    for spare, target in place:
        try:
            os.rename(spare, target)
        except OSError as exc:  # gone: that disk's overlay is created in the transaction
            log.warning("spare overlay %s unusable: %s", spare, exc)
        else:
            placed.add(str(target))
    if placed:
        # The renames are durable before QEMU writes the guest's data into the files.
        dfd = os.open(paths.overlays, os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return placed


def stable_paths(spec: VmSpec) -> list[str]:
    return [d.path for d in spec.disks]


def plan_overlays(spec: VmSpec, token: str, paths: VmPaths) -> list[OverlayRecord]:
    # Read-only disks cannot change, they need no overlay.
    return [
        OverlayRecord(
            disk=d.name,
            base_node=format_node(d.name),
            overlay_node=overlay_node(d.name),
            overlay_path=str(paths.overlays / f"{token}-{node_key(d.name)}.qcow2"),
        )
        for d in spec.disks
        if not d.read_only
    ]


CUT_PREFIX = "vmsnap-cut-"


def plan_cut(spec: VmSpec) -> list[str]:
    """Disks that get a cut snapshot: writable local qcow2 files (no array reads them)."""
    return [
        d.name
        for d in spec.disks
        if d.format is DiskFormat.QCOW2 and not d.is_nbd and not d.read_only
    ]


async def _overlay_transaction(
    qmp: QmpSession,
    overlays: list[OverlayRecord],
    cut_tag: str = "",
    cut_disks: Sequence[str] = (),
    existing: Collection[str] = (),
) -> None:
    """``existing``: overlay paths already made (spares.py), opened rather than created."""
    # The cut snapshots come first: their nodes are still the roots they must be.
    actions: list[dict[str, object]] = [
        {
            "type": "blockdev-snapshot-internal-sync",
            "data": {"device": format_node(disk), "name": cut_tag},
        }
        for disk in cut_disks
    ]
    actions += [
        {
            "type": "blockdev-snapshot-sync",
            "data": {
                "node-name": o.base_node,
                "snapshot-file": o.overlay_path,
                "snapshot-node-name": o.overlay_node,
                "format": "qcow2",
                "mode": "existing" if o.overlay_path in existing else "absolute-paths",
            },
        }
        for o in overlays
    ]
    await qmp.execute("transaction", {"actions": actions})


async def quiesce_stopped(
    ctx: QuiesceContext,
    token: str,
    method: QuiesceMethod,
    lease_seconds: float,
    *,
    operation_id: str,
    clean_stop: bool,
) -> QuiesceRecord:
    """A stopped VM writes nothing: record the lease (it keeps the VM from starting)."""
    now = time.time()
    record = QuiesceRecord(
        token=token,
        vm_id=ctx.spec.vm_id,
        method=method,
        consistency=Consistency.APPLICATION if clean_stop else Consistency.CRASH,
        expires_at=now + lease_seconds,
        started_at=now,
        operation_id=operation_id,
        stable_paths=stable_paths(ctx.spec),
    )
    await ctx.save(record)
    return record


async def pause_and_save(
    ctx: QuiesceContext,
    record: QuiesceRecord,
    *,
    live: bool = True,
) -> QuiesceRecord:
    """``pause+memory``: the VM paused, its state saved (memory.py), local qcow2 disks
    cut at the pause; on failure the VM is resumed and the state file deleted."""
    assert ctx.qmp is not None
    qmp = ctx.qmp
    # Only the disks whose bytes a native snapshot keeps: the arrays cut the others.
    record.cut_disks = [d.name for d in ctx.spec.disks if holds_bytes(d)]
    record.cut_tag = f"{CUT_PREFIX}{record.token}" if record.cut_disks else ""
    record.memory_path = str(ctx.paths.root / "memory" / f"{record.token}{memory.SUFFIX}")
    # Before anything happens: a restarted agent resumes the VM and deletes the file.
    record.vm_paused = True
    await ctx.save(record)

    async def cut() -> None:
        if record.cut_disks:
            await _overlay_transaction(qmp, [], record.cut_tag, record.cut_disks)

    try:
        saved = await memory.save(qmp, Path(record.memory_path), cut, live=live)
    except BaseException:
        await unquiesce(ctx, record)
        raise
    record.memory_bytes = saved.size_bytes
    record.paused_at = saved.paused_at
    record.frozen_at = saved.paused_at
    record.memory_save_s = saved.save_seconds
    # The lease guards the pause, not the live copy before it: it runs from here.
    record.expires_at = time.time() + (record.expires_at - record.started_at)
    # RAM and devices as they were: a revert resumes every process where it was.
    record.consistency = Consistency.APPLICATION
    await ctx.save(record)
    return record


async def quiesce(
    ctx: QuiesceContext,
    token: str,
    method: QuiesceMethod,
    lease_seconds: float,
    operation_id: str = "",
    *,
    cut: bool = True,
    save_end: bool = True,
    at_cut: Callable[[QuiesceRecord], Awaitable[None]] | None = None,
) -> QuiesceRecord:
    """Quiesce a running VM; on failure everything done so far is undone before raising.
    ``cut``: False when no native snapshot will be taken under it (no cut to make).
    ``save_end``: False leaves the end of a guest freeze (its consistency, the
    thaw) in the returned record alone, when the caller saves it or removes the
    record next: the saved one still says the guest may be frozen (an undo thaws
    again, which is harmless) and CRASH consistency (never more than was reached).
    ``at_cut``: run once the cut is made (a native snapshot adopting it), beside
    the thaw when the guest thaws here (its work then hides behind the guest's,
    the guest's frozen window unchanged), else after the transaction. It keeps
    its own failures (it must not raise for them)."""
    assert ctx.qmp is not None
    if method is QuiesceMethod.PAUSE_MEMORY:
        now = time.time()
        return await pause_and_save(
            ctx,
            QuiesceRecord(
                token=token,
                vm_id=ctx.spec.vm_id,
                method=method,
                consistency=Consistency.CRASH,
                expires_at=now + lease_seconds,
                started_at=now,
                operation_id=operation_id,
                stable_paths=stable_paths(ctx.spec),
            ),
        )
    with_overlays = method in (QuiesceMethod.OVERLAY, QuiesceMethod.OVERLAY_GUEST)
    with_guest = method in (
        QuiesceMethod.GUEST,
        QuiesceMethod.OVERLAY_GUEST,
        QuiesceMethod.GUEST_CUT,
    )
    record = QuiesceRecord(
        token=token,
        vm_id=ctx.spec.vm_id,
        method=method,
        consistency=Consistency.CRASH,
        expires_at=time.time() + lease_seconds,
        started_at=time.time(),
        operation_id=operation_id,
        stable_paths=stable_paths(ctx.spec),
        overlays=plan_overlays(ctx.spec, token, ctx.paths) if with_overlays else [],
    )
    if cut and (with_overlays or method is QuiesceMethod.GUEST_CUT):
        record.cut_disks = plan_cut(ctx.spec)
        record.cut_tag = f"{CUT_PREFIX}{token}" if record.cut_disks else ""
    if with_overlays:
        ctx.paths.overlays.mkdir(parents=True, exist_ok=True)
    if not with_guest:
        existing = await ctx.save(record, _claim_spares(ctx, record))
        try:
            await _overlay_transaction(
                ctx.qmp, record.overlays, record.cut_tag, record.cut_disks, existing
            )
            if at_cut is not None and record.cut_tag:
                await at_cut(record)
        except BaseException:
            await unquiesce(ctx, record)
            raise
        return record

    error: BaseException | None = None
    hook_installed = False
    # Connect (and sync) before anything is recorded: an absent agent costs nothing.
    # The connection stays open after the quiesce: the thaw needs no new one.
    async with ctx.guest_agent() as ga:
        record.guest_frozen = True
        existing = await ctx.save(record, _claim_spares(ctx, record))  # before anything is sent
        try:
            # On failure or timeout (some file systems may be frozen, or the freeze
            # may still complete in the guest) the undo below thaws, through a
            # resynchronised connection when this one broke.
            record.frozen_at = time.time()
            ctx.hold_guest_agent(True)
            # The hook log is looked for in the freeze's own write: qemu-ga opens it
            # and answers before it starts the freeze (never while frozen; its content
            # unread), one round trip for both. Its presence says the guest runs the
            # hook; qemu-ga runs a configured hook inside guest-fsfreeze-freeze and
            # fails the freeze when the hook fails, so a freeze that succeeded ran it.
            # The handle is closed once the guest is thawed, off the caller's path
            # (qemu-ga refuses a close while frozen).
            opened, frozen = await ga.execute_each(
                [
                    ("guest-file-open", {"path": HOOK_LOG, "mode": "r"}),
                    ("guest-fsfreeze-freeze", None),
                ],
                timeout=ctx.freeze_timeout,
            )
            if not isinstance(opened, GuestAgentError):
                hook_installed = True
                ctx.defer_close(int(opened))
            if isinstance(frozen, GuestAgentError):
                raise frozen
            record.freeze_answered_at = time.time()
            if method in (QuiesceMethod.OVERLAY_GUEST, QuiesceMethod.GUEST_CUT):
                if record.overlays or record.cut_disks:
                    await _overlay_transaction(
                        ctx.qmp, record.overlays, record.cut_tag, record.cut_disks, existing
                    )
                record.thaw_sent_at = time.time()

                async def thaw() -> None:
                    await ga.execute("guest-fsfreeze-thaw", timeout=ctx.freeze_timeout)
                    record.thawed_at = time.time()
                    record.guest_frozen = False
                    ctx.hold_guest_agent(False)

                if at_cut is not None and record.cut_tag:
                    # The thaw is sent first; both are awaited whatever happens to
                    # either (an undo never runs beside a late adoption).
                    done = await asyncio.gather(thaw(), at_cut(record), return_exceptions=True)
                    for outcome in done:
                        if isinstance(outcome, BaseException):
                            raise outcome
                else:
                    await thaw()
        except BaseException as exc:  # noqa: BLE001 - undone below, then re-raised
            error = exc
    if error is not None:
        # Outside the session: the undo's thaw takes the (single-client) channel.
        await unquiesce(ctx, record)
        raise error
    record.consistency = Consistency.APPLICATION if hook_installed else Consistency.FILESYSTEM
    if save_end:
        await ctx.save(record)
    return record


async def _thaw(ctx: QuiesceContext, record: QuiesceRecord, *, save: bool) -> None:
    """``save``: record the thaw (when more undo steps follow: a retry of those then
    needs no qemu-ga); a record removed next is not written first."""
    async with ctx.guest_agent() as ga:
        # Thawing a thawed guest answers 0: harmless, which keeps undo idempotent.
        record.thaw_sent_at = record.thaw_sent_at or time.time()
        await ga.execute("guest-fsfreeze-thaw", timeout=ctx.freeze_timeout)
    record.guest_frozen = False
    record.thawed_at = record.thawed_at or time.time()
    ctx.hold_guest_agent(False)
    if save:
        await ctx.save(record)


async def _graph_nodes(qmp: QmpSession) -> set[str]:
    nodes = await qmp.execute("query-named-block-nodes", {"flat": True})
    return {n["node-name"] for n in nodes}


async def _commit_live(qmp: QmpSession, overlays: list[OverlayRecord]) -> None:
    """Active commit of every overlay still in the graph, all jobs in parallel.

    Each job is followed by its own events: BLOCK_JOB_READY → ``block-job-complete``
    (the pivot back onto the base; the overlay node then has no user and QEMU closes
    it) → BLOCK_JOB_COMPLETED, which carries the error of a failed job. The jobs are
    started with auto-dismiss, so nothing is left to dismiss; a restarted agent needs
    no job's record either: an overlay node still in the graph is what remains to
    commit (a failed commit leaves it there, a finished one removes it). The
    ``block-commit`` commands are sent together (QEMU answers them in order, without
    a round trip each). ``query-jobs`` is read only when a job id is in use (a job a
    previous agent started) and when no event came for JOB_RECHECK_INTERVAL (a safety
    net). Every job is seen to its end before the first error is raised: none is left
    running.
    """
    async with qmp.listening(*_JOB_EVENTS) as events:
        follow: dict[str, str] = {}  # job id -> "running" | "ready"
        errors: list[str] = []
        # Started at once, without reading the graph or the jobs first: an overlay
        # node gone from the graph (DeviceNotFound) is committed already. Any other
        # refusal may be a job an earlier agent started on the node (QEMU then says
        # "Need a root block node" or "Job ID ... already in use"): only then are the
        # jobs read, to follow such a job, or dismiss an ended one and start again.
        pending = list(overlays)
        for attempt in range(2):
            outcomes = await asyncio.gather(
                *(_start_commit(qmp, o) for o in pending), return_exceptions=True
            )
            refused: list[tuple[OverlayRecord, BaseException]] = []
            for o, outcome in zip(pending, outcomes, strict=True):
                if outcome is None:
                    follow[_commit_job_id(o)] = "running"
                elif not _left_the_graph(outcome):
                    refused.append((o, outcome))
            if not refused:
                break
            jobs = await _commit_jobs(qmp) if not attempt else {}
            pending = []
            for o, exc in refused:
                job_id = _commit_job_id(o)
                status = jobs.get(job_id)
                if attempt or (status is None and not isinstance(exc, QmpCommandError)):
                    errors.append(f"{job_id}: {exc}")
                elif status in (None, "concluded", "null"):
                    # No job (it may have ended meanwhile), or an earlier agent's job
                    # without auto-dismiss that ended while nobody watched: start again.
                    if status is not None:
                        with contextlib.suppress(QmpCommandError):
                            await qmp.execute("job-dismiss", {"id": job_id})
                    pending.append(o)
                else:
                    follow[job_id] = "ready" if status == "ready" else "running"
            if not pending:
                break
        unseen = await _follow_commits(qmp, events, follow, errors)
        if unseen:
            nodes = await _graph_nodes(qmp)
            errors += [
                f"{_commit_job_id(o)}: ended without its pivot"
                for o in overlays
                if _commit_job_id(o) in unseen and o.overlay_node in nodes
            ]
    if errors:
        raise QmpCommandError(f"commit of overlays failed: {'; '.join(errors)}")


_JOB_EVENTS = ("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")


def _left_the_graph(refusal: BaseException) -> bool:
    """QEMU refused a commit because the overlay node is gone: committed already."""
    return isinstance(refusal, QmpCommandError) and error_class(refusal) == "DeviceNotFound"


def _commit_job_id(o: OverlayRecord) -> str:
    return f"commit-{node_key(o.disk)}"


async def _start_commit(qmp: QmpSession, o: OverlayRecord) -> None:
    await qmp.execute(
        "block-commit",
        {
            "job-id": _commit_job_id(o),
            "device": o.overlay_node,
            "base-node": o.base_node,
            "auto-dismiss": True,
        },
    )


async def _commit_jobs(qmp: QmpSession) -> dict[str, str]:
    """Status of every commit job QEMU knows, by id."""
    return {
        str(job.get("id")): str(job.get("status"))
        for job in await qmp.execute("query-jobs")
        if str(job.get("id", "")).startswith("commit-")
    }


async def _follow_commits(
    qmp: QmpSession, events: EventListener, follow: dict[str, str], errors: list[str]
) -> set[str]:
    """Complete each job once READY; return when none of ``follow`` is left, with the
    jobs that ended without their BLOCK_JOB_COMPLETED being seen."""
    unseen: set[str] = set()
    completing: dict[str, asyncio.Task[object]] = {}
    async with asyncio.timeout(COMMIT_TIMEOUT):
        while follow or completing:
            for job_id, status in follow.items():
                if status == "ready" and job_id not in completing:
                    completing[job_id] = asyncio.ensure_future(
                        qmp.execute("block-job-complete", {"device": job_id})
                    )
            for job_id, task in list(completing.items()):
                if task.done():
                    del completing[job_id]
                    if task.exception() is not None and job_id in follow:
                        # Not ready after all (or gone): query-jobs decides below.
                        follow[job_id] = "running"
            if not follow:
                if completing:
                    await asyncio.wait(completing.values())
                continue
            try:
                async with asyncio.timeout(JOB_RECHECK_INTERVAL):
                    message = await events.get()
            except TimeoutError:
                jobs = await _commit_jobs(qmp)
                for job_id in list(follow):
                    now = jobs.get(job_id)
                    if now is None or now in ("concluded", "null"):
                        # Ended unseen: the graph says whether it pivoted.
                        del follow[job_id]
                        unseen.add(job_id)
                    elif now == "ready":
                        follow[job_id] = "ready"
                continue
            raw = message.get("data")
            data: dict[str, Any] = raw if isinstance(raw, dict) else {}
            job_id = str(data.get("device", ""))
            if job_id not in follow:
                continue
            event = message.get("event")
            if event == "BLOCK_JOB_READY":
                follow[job_id] = "ready"
            else:
                del follow[job_id]
                if event == "BLOCK_JOB_CANCELLED":
                    errors.append(f"{job_id}: cancelled")
                elif data.get("error"):
                    errors.append(f"{job_id}: {data['error']}")
    return unseen


def _existing(overlays: list[OverlayRecord]) -> list[OverlayRecord]:
    return [o for o in overlays if Path(o.overlay_path).exists()]


def _delete_files(overlays: list[OverlayRecord]) -> None:
    for o in overlays:
        Path(o.overlay_path).unlink(missing_ok=True)


async def _commit_offline(overlays: list[OverlayRecord]) -> None:
    """The VM stopped while quiesced: fold the overlays into their bases with qemu-img."""
    for o in _existing(overlays):
        proc = await asyncio.create_subprocess_exec(
            "qemu-img",
            "commit",
            "-q",
            o.overlay_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise QmpCommandError(f"qemu-img commit {o.overlay_path}: {err.decode().strip()}")


def _missing(message: str) -> bool:
    text = message.lower()
    return "not found" in text or "does not exist" in text


async def _drop_cut(ctx: QuiesceContext, tag: str, disks: list[str]) -> None:
    """Delete a cut snapshot nobody adopted (idempotent: a missing one is fine)."""
    by_name = {d.name: d for d in ctx.spec.disks}
    for name in disks:
        if ctx.qmp is not None:
            try:
                await ctx.qmp.execute(
                    "blockdev-snapshot-delete-internal-sync",
                    {"device": format_node(name), "name": tag},
                )
            except QmpCommandError as exc:
                if not _missing(str(exc)):
                    raise
        else:
            proc = await asyncio.create_subprocess_exec(
                "qemu-img",
                "snapshot",
                "-d",
                tag,
                by_name[name].path,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
            if proc.returncode != 0 and not _missing(err.decode(errors="replace")):
                raise QmpCommandError(f"qemu-img snapshot -d {tag}: {err.decode().strip()}")


async def unquiesce(ctx: QuiesceContext, record: QuiesceRecord) -> None:
    """Thaw the guest, commit the overlays, delete them and the record. Idempotent."""
    thaw_error: GuestAgentUnavailable | None = None
    if record.guest_frozen and ctx.qmp is not None:
        try:
            more = bool(record.overlays or record.cut_tag or record.vm_paused or record.memory_path)
            await _thaw(ctx, record, save=more)
        except GuestAgentUnavailable as exc:
            # Keep going so at least the overlays are committed; the record stays
            # (guest_frozen set) so that a later call retries the thaw.
            log.error("cannot thaw %s: %s", ctx.spec.vm_id, exc)
            thaw_error = exc
    if record.vm_paused:
        if ctx.qmp is not None:
            await memory.resume(ctx.qmp)
        record.thawed_at = time.time()
        record.vm_paused = False
        await ctx.save(record)
    if record.memory_path and not (
        record.adopted_by or memory.adopted(ctx.paths.root, record.memory_path)
    ):
        # A state nobody adopted (the take failed): nothing may stay behind. (The
        # index is the adoption's commit point: one listed there is a snapshot's.)
        await memory.remove(record.memory_path)
    if record.overlays:
        if ctx.qmp is not None:
            await _commit_live(ctx.qmp, record.overlays)
        else:
            await _commit_offline(record.overlays)
        await asyncio.to_thread(_delete_files, record.overlays)
        record.overlays = []
    if record.cut_tag:
        # After the commit: the bases are roots again. Adopted cuts stay (renamed by alias).
        # The aliases file is a cut's adoption commit point (hypervisor._adopt_cut).
        adopted = record.adopted_by or ctx.cut_adopted(record.cut_tag)
        unused = [] if adopted else record.cut_disks
        await _drop_cut(ctx, record.cut_tag, unused)
        record.cut_tag, record.cut_disks = "", []
    # The record is not saved between these steps: each is idempotent (a commit of an
    # overlay gone from the graph is skipped, a missing file or cut is fine), so a
    # crash in between repeats them from the record as it was; it is removed below.
    if thaw_error is not None:
        await ctx.save(record)  # kept: a later call retries the thaw
        raise thaw_error
    # A stopped VM has no frozen guest any more: the record is done.
    ctx.paths.quiesce.unlink(missing_ok=True)
