"""Hypervisor-native snapshots: qcow2 internal snapshots, with or without memory.

Running VM:
* with memory — the ``snapshot-save`` / ``snapshot-load`` / ``snapshot-delete`` QMP
  jobs (QEMU >= 6.0). QEMU pauses the VM for the save, so disks and RAM match.
* disk only — one ``transaction`` of ``blockdev-snapshot-internal-sync``: atomic
  across the disks, the guest keeps running (crash-consistent).
Stopped VM: ``qemu-img snapshot -c/-a/-d`` per disk.

Only qcow2 disks can hold internal snapshots; the memory state is stored in the
first selected disk (``vmstate``), as ``savevm`` does. Which disks a native
snapshot really keeps the bytes of is :func:`holds_bytes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from typing import Any

from .errors import InvalidSpec, QmpCommandError
from .model import DiskFormat, DiskSpec, NativeSnapshot
from .process import format_node
from .qmp import QmpSession

SNAPSHOT_JOB_TIMEOUT = 300.0


def holds_bytes(disk: DiskSpec) -> bool:
    """Whether a native snapshot keeps this disk's bytes, so that a revert restores them.

    Only a writable local qcow2 image that is the agent's own (a ``file://``
    locator, or a bare path given to the library): its internal snapshots live
    inside the image. Not a raw image (no internal snapshots), not an NBD export
    (the array's LUN: QEMU cannot snapshot it), and not an array's file either
    (``ontap://`` mapped to the array's export): even as qcow2, the array owns
    it, and the array's own restore replaces the file under QEMU, internal
    snapshots and all; its driver, not this agent, must snapshot it.
    """
    owned = not disk.locator or disk.locator.startswith(("file://", "/"))
    return owned and disk.format is DiskFormat.QCOW2 and not disk.is_nbd and not disk.read_only


def select_disks(all_disks: tuple[DiskSpec, ...], names: list[str] | None) -> list[DiskSpec]:
    chosen = [d for d in all_disks if names is None or d.name in names]
    if names is not None and len(chosen) != len(set(names)):
        raise InvalidSpec(f"unknown disk in {names}")
    if names is None:
        chosen = [d for d in chosen if d.format is DiskFormat.QCOW2]
    bad = [d.name for d in chosen if d.format is not DiskFormat.QCOW2]
    if bad or not chosen:
        raise InvalidSpec(f"native snapshots need qcow2 disks (not: {bad or 'none selected'})")
    return chosen


def check_memory_covers_all(all_disks: tuple[DiskSpec, ...], chosen: list[DiskSpec]) -> None:
    """RAM restored over a disk that was not reverted would corrupt the guest's file
    systems, so a memory snapshot must cover every writable disk (as savevm does)."""
    names = {d.name for d in chosen}
    missing = [d.name for d in all_disks if not d.read_only and d.name not in names]
    if missing:
        raise InvalidSpec(f"a memory snapshot must include every writable disk: {missing}")


def _job_id(kind: str, snapshot_id: str) -> str:
    # Snapshot ids are the host's (any text); QMP job ids must be simple identifiers.
    return f"{kind}-{hashlib.sha256(snapshot_id.encode()).hexdigest()[:16]}"


async def qemu_img(*args: str) -> str:
    """Run ``qemu-img``; its stdout, or QmpCommandError with its stderr. A caller's
    cancellation (a timeout) kills it: none is left running."""
    proc = await asyncio.create_subprocess_exec(
        "qemu-img", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    if proc.returncode != 0:
        raise QmpCommandError(f"qemu-img {' '.join(args)}: {err.decode().strip()}")
    return out.decode()


def _merge(per_disk: dict[str, list[dict[str, Any]]]) -> list[NativeSnapshot]:
    """Snapshots by tag across disks (one VM snapshot = one tag on several disks)."""
    by_tag: dict[str, dict[str, Any]] = {}
    for disk, snaps in per_disk.items():
        for s in snaps:
            entry = by_tag.setdefault(s["name"], {"disks": [], "mem": 0, "at": s["date-sec"]})
            entry["disks"].append(disk)
            entry["mem"] = max(entry["mem"], int(s.get("vm-state-size", 0)))
    return [
        NativeSnapshot(
            snapshot_id=tag,
            disks=tuple(e["disks"]),
            include_memory=e["mem"] > 0,
            created_at=float(e["at"]),
            vm_state_size=e["mem"],
        )
        for tag, e in sorted(by_tag.items(), key=lambda kv: kv[1]["at"])
    ]


async def list_live(qmp: QmpSession, disks: tuple[DiskSpec, ...]) -> list[NativeSnapshot]:
    graph = await qmp.execute("query-named-block-nodes", {"flat": True})
    nodes = {n["node-name"]: n for n in graph}
    per_disk: dict[str, list[dict[str, Any]]] = {}
    for d in disks:
        node = nodes.get(format_node(d.name))
        if node and d.format is DiskFormat.QCOW2:
            per_disk[d.name] = list(node.get("image", {}).get("snapshots", []))
    return _merge(per_disk)


async def list_offline(disks: tuple[DiskSpec, ...]) -> list[NativeSnapshot]:
    per_disk: dict[str, list[dict[str, Any]]] = {}
    for d in disks:
        if d.format is DiskFormat.QCOW2:
            info = json.loads(await qemu_img("info", "-f", "qcow2", "--output=json", d.path))
            per_disk[d.name] = list(info.get("snapshots", []))
    return _merge(per_disk)


async def take_live(
    qmp: QmpSession, snapshot_id: str, disks: list[DiskSpec], include_memory: bool
) -> None:
    nodes = [format_node(d.name) for d in disks]
    if not include_memory:
        actions = [
            {"type": "blockdev-snapshot-internal-sync", "data": {"device": n, "name": snapshot_id}}
            for n in nodes
        ]
        await qmp.execute("transaction", {"actions": actions})
        return
    job_id = _job_id("snapsave", snapshot_id)
    await qmp.execute(
        "snapshot-save",
        {"job-id": job_id, "tag": snapshot_id, "vmstate": nodes[0], "devices": nodes},
    )
    await qmp.finish_job(job_id, SNAPSHOT_JOB_TIMEOUT)


async def load_live(qmp: QmpSession, snapshot: NativeSnapshot) -> None:
    nodes = [format_node(d) for d in snapshot.disks]
    job_id = _job_id("snapload", snapshot.snapshot_id)
    await qmp.execute(
        "snapshot-load",
        {"job-id": job_id, "tag": snapshot.snapshot_id, "vmstate": nodes[0], "devices": nodes},
    )
    await qmp.finish_job(job_id, SNAPSHOT_JOB_TIMEOUT)


async def delete_live(qmp: QmpSession, snapshot: NativeSnapshot) -> None:
    job_id = _job_id("snapdel", snapshot.snapshot_id)
    await qmp.execute(
        "snapshot-delete",
        {
            "job-id": job_id,
            "tag": snapshot.snapshot_id,
            "devices": [format_node(d) for d in snapshot.disks],
        },
    )
    await qmp.finish_job(job_id, SNAPSHOT_JOB_TIMEOUT)


async def offline(op: str, snapshot_id: str, disks: list[DiskSpec]) -> None:
    """qemu-img snapshot -c (create), -a (apply) or -d (delete) on every disk."""
    for d in disks:
        await qemu_img("snapshot", op, snapshot_id, d.path)
