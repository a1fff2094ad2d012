"""The sim agent's durable state: one JSON file, replaced atomically on every change.

Layout of ``<state dir>/state.json`` (version 1), documented because tests of
other components read it to see what the "hypervisor" is doing::

    {
      "version": 1,
      "vms": {
        "<vm id>": {
          "id": ..., "name": ..., "memory_mib": ..., "state": "STOPPED" | "RUNNING",
          "clean_shutdown": true,
          "volumes": [{"disk": "vda", "locator": "...", "size_bytes": 0, "format": "raw"}],
          "freeze": null | {            # null <=> the VM is thawed right now
            "token": ..., "method": "OVERLAY" | "GUEST_FREEZE" | ...,
            "consistency": "CRASH" | ..., "operation_id": ...,
            "frozen_at": <unix seconds>, "expire_at": <unix seconds>
          }
        }
      },
      "snapshots": {"<vm id>": {"<snapshot id>": {native snapshot record}}}
    }

A write goes to a temporary file that is fsynced, renamed over the old one and
the directory fsynced: a reader (or the agent after SIGKILL) sees the old or
the new state, never half of one. Times are wall-clock unix seconds because a
lease must be judged again after a restart, when monotonic clocks mean nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
VERSION = 1


@dataclass
class FreezeRecord:
    """A freeze in force on one VM."""

    token: str
    method: str
    consistency: str
    operation_id: str
    frozen_at: float
    expire_at: float


@dataclass
class SnapshotRecord:
    """A native snapshot (the sim keeps the record, and the VM state it captured)."""

    snapshot_id: str
    vm_id: str
    disks: list[str]
    include_memory: bool
    create_time: float
    size_bytes: int = 0


@dataclass
class VolumeRecord:
    disk: str
    locator: str
    size_bytes: int = 0
    format: str = "raw"


@dataclass
class VMRecord:
    """A simulated VM."""

    id: str
    name: str
    memory_mib: int
    state: str = "STOPPED"
    volumes: list[VolumeRecord] = field(default_factory=list)
    # False after a forced stop: the disks were left as a power cut leaves them.
    clean_shutdown: bool = True
    freeze: FreezeRecord | None = None


@dataclass
class State:
    vms: dict[str, VMRecord] = field(default_factory=dict)
    snapshots: dict[str, dict[str, SnapshotRecord]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "vms": {k: asdict(v) for k, v in self.vms.items()},
            "snapshots": {
                vm: {k: asdict(s) for k, s in snaps.items()} for vm, snaps in self.snapshots.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        if data.get("version") != VERSION:
            raise ValueError(f"unsupported sim state version {data.get('version')!r}")
        vms: dict[str, VMRecord] = {}
        for vm_id, raw in data.get("vms", {}).items():
            freeze = raw.get("freeze")
            vms[vm_id] = VMRecord(
                id=raw["id"],
                name=raw["name"],
                memory_mib=raw["memory_mib"],
                state=raw["state"],
                volumes=[VolumeRecord(**v) for v in raw["volumes"]],
                clean_shutdown=raw.get("clean_shutdown", True),
                freeze=FreezeRecord(**freeze) if freeze else None,
            )
        snapshots = {
            vm: {k: SnapshotRecord(**s) for k, s in snaps.items()}
            for vm, snaps in data.get("snapshots", {}).items()
        }
        return cls(vms=vms, snapshots=snapshots)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Temp file + fsync + rename + fsync of the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """Loads the state once, saves it whole after each change."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE
        state_dir.mkdir(parents=True, exist_ok=True)
        self.state = load_state(state_dir)

    def save(self) -> None:
        write_json_atomic(self.path, self.state.to_json())


def load_state(state_dir: Path) -> State:
    """The state in ``state_dir`` (empty when there is none yet)."""
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return State()
    return State.from_json(data)
