"""A running VM's device and RAM state, saved to a file and loaded back.

Used by the ``pause+memory`` quiesce (memory snapshots whose disks are partly on
storage arrays, which QEMU's internal snapshots cannot hold):

* save — QEMU's migration stream into a file the agent opened and passed over
  QMP (``getfd`` + ``migrate fd:``). In the default *live* mode the RAM is copied
  while the guest still runs (pre-copy); QEMU then stops the VM for the last
  dirty pages, and the ``pause-before-switchover`` capability holds the migration
  there (VM stopped, disks still active): the caller's ``at_pause`` cuts the local
  disks at that instant, then the device state is written. The VM stays paused
  until :func:`resume`, so the arrays can cut their disks at the same instant.
  The file is fsynced before :func:`save` returns: the state is durable before
  the VM ever resumes. The *stop-first* mode (``live=False``) pauses before the
  copy: the whole RAM is written inside the pause (kept for the bench's figures).
* load — QEMU started with ``-incoming defer``; ``migrate-incoming fd:`` from
  the file; the guest runs on from the saved instant.

QEMU 7.2 has no ``file:`` migration URI; an fd works for regular files and, unlike
``exec:cat``, the agent knows when every byte is written (it fsyncs its own copy
of the fd).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import QmpCommandError, VmStateError
from .qmp import QmpSession
from .statefile import read_json

#: A whole save (live copy included) or load may take this long.
MIGRATION_TIMEOUT = 300.0
#: No throttling: the stream goes to a local file (QEMU's default is 128 MiB/s).
MAX_BANDWIDTH = 1 << 40
#: The longest pause QEMU may plan for the last RAM pages (ms); a busy guest
#: whose dirty rate outruns the disk converges within it.
DOWNTIME_LIMIT_MS = 300
FD_NAME = "vmsnap-memory"
SUFFIX = ".state"


class MemorySaveFailed(QmpCommandError):
    """QEMU could not save the state (INTERNAL, MEMORY_SAVE_FAILED)."""

    default_reason = "MEMORY_SAVE_FAILED"


@dataclass(frozen=True)
class Saved:
    size_bytes: int
    #: Wall clock when QEMU stopped the VM (the pause begins).
    paused_at: float
    #: The whole save, live copy included.
    save_seconds: float


def index_path(vm_root: Path) -> Path:
    """Snapshot id -> its state file (and figures): the states native snapshots own."""
    return vm_root / "memory" / "index.json"


def adopted(vm_root: Path, state: str) -> bool:
    """Whether a native snapshot owns this state file (then its quiesce must not delete it)."""
    data = read_json(index_path(vm_root)) or {}
    return any(isinstance(e, dict) and e.get("file") == state for e in data.values())


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def remove(path: str | Path) -> None:
    """Delete a state file (idempotent), off the event loop."""
    await asyncio.to_thread(_unlink, str(path))


def _ts(event: Any) -> float | None:
    stamp = event.get("timestamp") if hasattr(event, "get") else None
    if isinstance(stamp, dict):
        return float(stamp.get("seconds", 0)) + float(stamp.get("microseconds", 0)) / 1e6
    return None


async def _status(qmp: QmpSession) -> dict[str, Any]:
    return dict(await qmp.execute("query-migrate"))


async def _until(
    qmp: QmpSession, listener: Any, wanted: set[str], stops: list[float]
) -> dict[str, Any]:
    while True:
        info = await _status(qmp)
        status = info.get("status", "none")
        if status in wanted:
            return info
        if status in ("failed", "cancelled"):
            raise MemorySaveFailed(
                f"saving the VM's memory failed: {info.get('error-desc', status)}"
            )
        try:
            async with asyncio.timeout(0.5):
                event = await listener.get()
        except TimeoutError:
            continue
        if event.get("event") == "STOP" and (t := _ts(event)) is not None:
            stops.append(t)


async def _flush_until_stopped(fd: int, stops: list[float]) -> None:
    while not stops:
        await asyncio.to_thread(os.fdatasync, fd)
        await asyncio.sleep(0.1)


async def save(
    qmp: QmpSession,
    path: Path,
    at_pause: Callable[[], Awaitable[None]],
    *,
    live: bool = True,
) -> Saved:
    """Save the device and RAM state to ``path``; the VM is left paused."""
    await asyncio.to_thread(os.makedirs, path.parent, exist_ok=True)
    started = time.time()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        await qmp.execute(
            "migrate-set-capabilities",
            {
                "capabilities": [
                    {"capability": "events", "state": True},
                    {"capability": "pause-before-switchover", "state": True},
                ]
            },
        )
        await qmp.execute(
            "migrate-set-parameters",
            {"max-bandwidth": MAX_BANDWIDTH, "downtime-limit": DOWNTIME_LIMIT_MS},
        )
        await qmp.send_fd(fd, FD_NAME)
        stops: list[float] = []
        async with asyncio.timeout(MIGRATION_TIMEOUT), qmp.listening("MIGRATION", "STOP") as ev:
            if not live:
                await qmp.execute("stop")
                stops.append(time.time())
            await qmp.execute("migrate", {"uri": f"fd:{FD_NAME}"})
            # Flush what the live copy wrote while the guest still runs: the fsync
            # that must precede the resume then has only the last pages to write.
            flusher = asyncio.create_task(_flush_until_stopped(fd, stops))
            try:
                await _until(qmp, ev, {"pre-switchover"}, stops)
            finally:
                stops.append(stops[0] if stops else time.time())  # ends the flusher
                flusher.cancel()
            # The VM is stopped, its disks still active: the local disks' cut now.
            await at_pause()
            await qmp.execute("migrate-continue", {"state": "pre-switchover"})
            await _until(qmp, ev, {"completed"}, stops)
        await asyncio.to_thread(os.fsync, fd)
        size = os.fstat(fd).st_size
    except BaseException:
        with contextlib.suppress(QmpCommandError):
            await qmp.execute("migrate_cancel")
        await remove(path)
        raise
    finally:
        os.close(fd)
    paused_at = stops[0] if stops else time.time()
    return Saved(size_bytes=size, paused_at=paused_at, save_seconds=time.time() - started)


async def resume(qmp: QmpSession) -> None:
    """Run the VM again (idempotent): a save still going is cancelled first."""
    info = await _status(qmp)
    if info.get("status") in ("active", "pre-switchover", "device", "setup"):
        await qmp.execute("migrate_cancel")
        deadline = time.monotonic() + 30
        while (await _status(qmp)).get("status") not in ("cancelled", "failed", "completed"):
            if time.monotonic() > deadline:
                raise QmpCommandError("the memory save would not cancel")
            await asyncio.sleep(0.02)
    state = await qmp.execute("query-status")
    if state.get("status") != "running":
        await qmp.execute("cont")


async def load(qmp: QmpSession, path: Path) -> None:
    """Feed a QEMU started with ``-incoming defer`` the saved state; it runs on."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        await qmp.execute(
            "migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]}
        )
        await qmp.send_fd(fd, FD_NAME)
        async with asyncio.timeout(MIGRATION_TIMEOUT):
            await qmp.execute("migrate-incoming", {"uri": f"fd:{FD_NAME}"})
            while True:
                info = await _status(qmp)
                status = info.get("status", "none")
                if status == "completed":
                    break
                if status in ("failed", "cancelled"):
                    raise VmStateError(
                        f"starting the VM from {path.name} failed: "
                        f"{info.get('error-desc', status)}",
                        reason="MEMORY_LOAD_FAILED",
                    )
                await asyncio.sleep(0.02)
    finally:
        os.close(fd)
    state = await qmp.execute("query-status")
    if state.get("status") != "running":
        await qmp.execute("cont")
