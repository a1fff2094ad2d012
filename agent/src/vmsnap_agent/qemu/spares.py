"""Overlay images made ahead of a quiesce, so that its transaction only opens them.

``blockdev-snapshot-sync`` in mode ``absolute-paths`` creates each qcow2 overlay
inside the QMP transaction, with the VM's I/O drained and, with ``overlay+guest``,
the guest frozen: 10-15 ms per disk under TCG, most of an overlay quiesce. libvirt
creates its overlay images before the freeze for the same reason. A *spare* is that
same file made before it is needed:

    qemu-img create -f qcow2 -u -b <base's filename> -F <base's format> <virtual size>

with the values QEMU itself writes into an overlay it creates (the base node's
``file``, ``drv`` and ``virtual-size`` from ``query-named-block-nodes``), so an
overlay folded offline (``qemu-img commit`` after QEMU died) still finds its base.
The transaction then names it in mode ``existing``: QEMU opens the file, the node is
implicit and leaves the graph at the commit's pivot exactly as a created one does,
so the undo and the crash recovery of quiesce.py are the same for both.

Trust: a spare is used only by the agent object that made it, and only for the QEMU
process (pid) whose graph it was made from. A restarted agent, or a VM stopped and
started again, makes new ones; the files of an old generation are deleted when the
next generation is made, when the VM stops, and when it is undefined (the directory
is the VM's). Spares are made after each unquiesce of a running VM, off the
quiesce's path; the first quiesce after a start (or when making one failed) creates
its overlays inside the transaction as before. See docs/design.md, "Spare overlays".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .errors import QmpCommandError
from .model import VmSpec
from .native import qemu_img
from .process import format_node, node_key
from .qmp import QmpSession

log = logging.getLogger(__name__)

#: Bound on one ``qemu-img create`` (it writes about 200 KiB of metadata).
CREATE_TIMEOUT = 30.0


@dataclass
class _Generation:
    """The spares of one VM for one QEMU process."""

    pid: int
    by_disk: dict[str, Path] = field(default_factory=dict)


class SpareOverlays:
    """Per VM, one ready overlay file per writable disk (see the module docstring)."""

    def __init__(self) -> None:
        self._ready: dict[str, _Generation] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def claim(self, vm_id: str, pid: int | None, disk: str) -> Path | None:
        """The spare for ``disk`` of the VM running as ``pid``, now the caller's (None:
        none ready, or made for another QEMU process)."""
        gen = self._ready.get(vm_id)
        if gen is None or pid is None or gen.pid != pid:
            return None
        return gen.by_disk.pop(disk, None)

    def refill(self, vm_id: str, pid: int, qmp: QmpSession, spec: VmSpec, where: Path) -> None:
        """Make the missing spares in the background (one task per VM at a time)."""
        task = self._tasks.get(vm_id)
        if task is not None and not task.done():
            return
        self._tasks[vm_id] = asyncio.create_task(
            self._refill(vm_id, pid, qmp, spec, where), name=f"spares-{vm_id}"
        )

    async def _refill(
        self, vm_id: str, pid: int, qmp: QmpSession, spec: VmSpec, where: Path
    ) -> None:
        try:
            gen = self._ready.get(vm_id)
            if gen is None or gen.pid != pid:
                # A new QEMU process (or agent): the old generation's files go.
                gen = _Generation(pid)
                self._ready[vm_id] = gen
                await asyncio.to_thread(_reset_dir, where)
            wanted = [d for d in spec.disks if not d.read_only and d.name not in gen.by_disk]
            if not wanted:
                return
            graph = await qmp.execute("query-named-block-nodes", {"flat": True})
            nodes = {n["node-name"]: n for n in graph}
            made = await asyncio.gather(
                *(_make(where, d.name, nodes.get(format_node(d.name))) for d in wanted)
            )
            current = self._ready.get(vm_id)
            for name, path in zip((d.name for d in wanted), made, strict=True):
                if path is None:
                    continue
                if current is gen:
                    gen.by_disk[name] = path
                else:  # the VM stopped or restarted meanwhile: made for nothing
                    path.unlink(missing_ok=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - spares are an optimisation only
            log.warning("cannot make spare overlays for %s: %s", vm_id, exc)

    async def drop(self, vm_id: str, where: Path) -> None:
        """Forget the VM's spares and delete their files (a stop, a start, an undefine)."""
        task = self._tasks.pop(vm_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._ready.pop(vm_id, None)
        await asyncio.to_thread(shutil.rmtree, where, True)

    async def close(self) -> None:
        """Stop making spares (the files stay; the next agent deletes them)."""
        for task in self._tasks.values():
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._ready.clear()


def _reset_dir(where: Path) -> None:
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True, exist_ok=True)


async def _make(where: Path, disk: str, node: dict[str, object] | None) -> Path | None:
    """One spare over the base node ``node`` (the disk's format node), or None."""
    image = node.get("image") if node else None
    if not node or not isinstance(image, dict) or not isinstance(node.get("file"), str):
        return None
    final = where / f"{node_key(disk)}-{uuid.uuid4().hex[:12]}.qcow2"
    tmp = final.with_name(f".{final.name}.tmp")
    try:
        async with asyncio.timeout(CREATE_TIMEOUT):
            await qemu_img(
                "create",
                "-q",
                "-f",
                "qcow2",
                "-u",
                "-b",
                str(node["file"]),
                "-F",
                str(node["drv"]),
                str(tmp),
                str(int(image["virtual-size"])),
            )
    except QmpCommandError as exc:
        tmp.unlink(missing_ok=True)
        log.warning("cannot make spare overlay %s: %s", final.name, exc)
        return None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # Renamed complete: a file under its final name is always a whole image.
    tmp.rename(final)
    return final
