"""The host's own vocabulary: VM snapshots, their plan, and operations.

Frozen dataclasses like the SDK's; the API layer converts them to and from the
host proto, the store to and from rows. Nothing here imports protobuf.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vmsnap_sdk import Consistency, Priority, SnapshotResult, VolumeSnapshot


class SnapshotState(enum.Enum):
    """Lifecycle of a VM snapshot (values are the proto's numbers)."""

    ALLOCATED = 1
    CREATING = 2
    READY = 3
    REVERTING = 4
    EXPUNGING = 5
    REMOVED = 6
    ERROR = 7

    @property
    def transitional(self) -> bool:
        return self in (
            SnapshotState.ALLOCATED,
            SnapshotState.CREATING,
            SnapshotState.REVERTING,
            SnapshotState.EXPUNGING,
        )


class QuiescePolicy(enum.Enum):
    """What to do about guest-level consistency (values are the proto's numbers)."""

    OFF = 1
    BEST_EFFORT = 2
    REQUIRED = 3


class OperationType(enum.Enum):
    CREATE = 1
    REVERT = 2
    DELETE = 3
    #: Recorded done when UndefineVM removed the VM: it makes the request_id
    #: idempotent (never queued or run by the executor).
    UNDEFINE_VM = 4
    #: CreateVMFromSnapshot: a new VM (params new_vm_id) cloned from vm_snapshot_id.
    CLONE = 5
    #: FreezeVM: open while the freeze holds the VM (and its lease), run by
    #: :meth:`vmsnap_host.executor.freeze_api.FreezeAPI.hold`.
    FREEZE = 6
    #: AdoptSnapshot: recorded done with the snapshot it made (never run).
    ADOPT = 7


class GroupKind(enum.Enum):
    DRIVER = 1
    HYPERVISOR = 2


@dataclass(frozen=True)
class Claim:
    """Why a group got a disk: the winning priority and the driver's reason."""

    disk: str
    priority: Priority
    reason: str

    def describe(self) -> str:
        return (
            f"{self.disk}: {self.priority.name} ({self.reason})"
            if self.reason
            else (f"{self.disk}: {self.priority.name}")
        )


@dataclass(frozen=True)
class Group:
    """One group of the plan, and once taken, what its owner returned."""

    kind: GroupKind
    owner: str
    claims: tuple[Claim, ...]
    #: The driver's result (drivers) or the native snapshot turned into one (hypervisor).
    result: SnapshotResult | None = None

    @property
    def disks(self) -> tuple[str, ...]:
        return tuple(c.disk for c in self.claims)

    @property
    def ready(self) -> bool:
        return self.result is not None and self.result.ready

    def with_result(self, result: SnapshotResult | None) -> Group:
        return Group(self.kind, self.owner, self.claims, result)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind.name,
            "owner": self.owner,
            "claims": [[c.disk, c.priority.name, c.reason] for c in self.claims],
        }
        if self.result is not None:
            r = self.result
            data["result"] = {
                "id": r.vm_snapshot_id,
                "volumes": [
                    [v.disk, v.locator, v.handle, v.size_bytes] for v in r.volume_snapshots
                ],
                "ready": r.ready,
                "consistency": r.consistency.name,
                "needs_unquiesce": r.needs_unquiesce,
                "group_handle": r.group_handle,
                "metadata": dict(r.metadata),
                "vm_id": r.vm_id,
            }
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Group:
        result = None
        if "result" in data:
            r = data["result"]
            result = SnapshotResult(
                vm_snapshot_id=r["id"],
                volume_snapshots=tuple(
                    VolumeSnapshot(d, loc, h, int(s)) for d, loc, h, s in r["volumes"]
                ),
                ready=bool(r["ready"]),
                consistency=Consistency[r["consistency"]],
                needs_unquiesce=bool(r["needs_unquiesce"]),
                group_handle=r["group_handle"],
                metadata=dict(r["metadata"]),
                vm_id=r["vm_id"],
            )
        return cls(
            kind=GroupKind[data["kind"]],
            owner=data["owner"],
            claims=tuple(Claim(d, Priority[p], reason) for d, p, reason in data["claims"]),
            result=result,
        )


#: Keys of a hypervisor group's result metadata for a memory state kept in a file
#: beside the disks (a memory snapshot with disks on arrays).
MEMORY_STATE_LOCATION = "memory_state_location"
MEMORY_STATE_BYTES = "memory_state_bytes"


@dataclass(frozen=True)
class ErrorInfo:
    """Why something failed: a gRPC code number, a message, a machine reason."""

    code: int
    message: str
    reason: str = ""


@dataclass(frozen=True)
class Snapshot:
    """A VM snapshot as the host stores it."""

    id: str
    vm_id: str
    name: str
    state: SnapshotState
    agent: str
    description: str = ""
    include_memory: bool = False
    quiesce: QuiescePolicy = QuiescePolicy.BEST_EFFORT
    consistency: Consistency = Consistency.UNSPECIFIED
    groups: tuple[Group, ...] = ()
    parent_id: str = ""
    current: bool = False
    freeze_start: datetime | None = None
    freeze_seconds: float | None = None
    error: ErrorInfo | None = None
    warnings: tuple[str, ...] = ()
    parameters: dict[str, str] = field(default_factory=dict)
    #: Why this READY snapshot cannot restore any more ("" while its objects exist).
    missing: str = ""
    #: The project of its VM when it was taken ("" = none; issue 12).
    project: str = ""
    #: The snapshot policy that made it ("" for a CreateVMSnapshot call) and its name.
    policy_id: str = ""
    policy_name: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(frozen=True)
class KeptState:
    """A state a revert keeps on one group so that it can be undone.

    Journaled before it exists (``result`` None until the owner answered) and
    forgotten only once the owner confirmed its delete."""

    id: str
    owner: str
    kind: GroupKind
    operation_id: str
    vm_id: str
    vm_snapshot_id: str
    result: SnapshotResult | None = None

    @property
    def group(self) -> Group:
        """The group to revert to, or delete, this kept state with."""
        return Group(self.kind, self.owner, (), self.result)


#: The journal entry of a recorded cancel request (its time): docs/design.md,
#: "Live events, cancel and traces".
CANCEL_KEY = "cancel_requested"


@dataclass(frozen=True)
class OperationRecord:
    """A long-running operation and its journal (what was done, for recovery)."""

    id: str
    type: OperationType
    vm_id: str
    vm_snapshot_id: str
    request_id: str
    done: bool = False
    error: ErrorInfo | None = None
    progress: int = 0
    step: str = ""
    journal: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    owner: str = ""
    #: The project of its VM ("" = none; issue 12).
    project: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None

    @property
    def cancel_requested(self) -> bool:
        """A CancelOperation was recorded (the journal entry ``cancel_requested``)."""
        return CANCEL_KEY in self.journal
