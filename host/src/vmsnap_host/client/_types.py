"""What the control-plane client returns: frozen dataclasses and enums, no protobuf.

VMs and their disks are the SDK's :class:`vmsnap_sdk.VM` and
:class:`vmsnap_sdk.Volume`, the same vocabulary drivers and agents use.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

import grpc

from vmsnap_sdk import VM, Consistency
from vmsnap_sdk._errors import from_status
from vmsnap_sdk.blocks import BlockRange
from vmsnap_sdk.errors import VMSnapError


class VMSnapshotState(enum.Enum):
    """Lifecycle of a VM snapshot."""

    UNSPECIFIED = 0
    ALLOCATED = 1
    CREATING = 2
    READY = 3
    REVERTING = 4
    EXPUNGING = 5
    REMOVED = 6
    ERROR = 7


class QuiescePolicy(enum.Enum):
    """What to do about guest-level consistency (UNSPECIFIED means BEST_EFFORT)."""

    UNSPECIFIED = 0
    OFF = 1
    BEST_EFFORT = 2
    REQUIRED = 3


class OperationType(enum.Enum):
    """Kind of long-running operation."""

    UNSPECIFIED = 0
    CREATE = 1
    REVERT = 2
    DELETE = 3
    #: An UndefineVM, recorded done when the VM was undefined.
    UNDEFINE_VM = 4
    #: A new VM cloned from a snapshot (Operation.new_vm_id).
    CLONE = 5
    #: A FreezeVM: open while the freeze holds.
    FREEZE = 6
    #: An AdoptSnapshot, recorded done.
    ADOPT = 7


class GroupKind(enum.Enum):
    """Who takes a group of volumes: a storage driver or the hypervisor."""

    UNSPECIFIED = 0
    DRIVER = 1
    HYPERVISOR = 2


class Health(enum.Enum):
    """Health of a driver or agent as the host last saw it."""

    UNSPECIFIED = 0
    SERVING = 1
    NOT_SERVING = 2


@dataclass(frozen=True)
class Failure:
    """Why an operation or a VM snapshot failed: a status code, a message, a reason."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    # The serialized google.rpc.Status, so that :meth:`exception` keeps every detail.
    details: bytes = field(default=b"", repr=False, compare=False)

    def exception(self) -> VMSnapError:
        """The matching :mod:`vmsnap_sdk.errors` exception, ready to raise."""
        return from_status(self.code, self.message, self.details or None)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


@dataclass(frozen=True)
class GroupVolume:
    """A disk's snapshot within a group, with the array's handle."""

    disk: str
    locator: str
    handle: str
    size_bytes: int = 0


@dataclass(frozen=True)
class SnapshotGroup:
    """One group of the plan: the disks one driver (or the hypervisor) snapshots, and why."""

    kind: GroupKind
    owner: str
    disks: tuple[str, ...]
    reasons: tuple[str, ...] = ()
    ready: bool = False
    consistency: Consistency = Consistency.UNSPECIFIED
    volumes: tuple[GroupVolume, ...] = ()
    group_handle: str = ""


@dataclass(frozen=True)
class VMSnapshot:
    """A VM snapshot: its plan, what each group returned and the consistency achieved."""

    id: str
    vm_id: str
    name: str
    state: VMSnapshotState
    description: str = ""
    include_memory: bool = False
    quiesce: QuiescePolicy = QuiescePolicy.UNSPECIFIED
    consistency: Consistency = Consistency.UNSPECIFIED
    groups: tuple[SnapshotGroup, ...] = ()
    parent_id: str = ""
    current: bool = False
    #: When the VM was frozen; None when no freeze was needed.
    freeze_start_time: datetime | None = None
    #: How long the VM was frozen, in seconds; None when it was not.
    freeze_seconds: float | None = None
    error: Failure | None = None
    create_time: datetime | None = None
    update_time: datetime | None = None
    warnings: tuple[str, ...] = ()
    #: Why this READY snapshot cannot restore (a driver or agent lost its
    #: objects, found by the reconciler); "" while it is whole.
    missing: str = ""
    #: The project of its VM when it was taken ("" when none).
    project: str = ""
    #: The snapshot policy that made it ("" for a manual snapshot) and its name.
    policy_id: str = ""
    policy_name: str = ""
    #: A memory snapshot with disks on arrays: the saved RAM and device state's
    #: size and where it lives (a file on the agent's machine); 0 and "" otherwise.
    memory_state_bytes: int = 0
    memory_state_location: str = ""


@dataclass(frozen=True)
class Operation:
    """A long-running operation (create, revert or delete of a VM snapshot)."""

    id: str
    type: OperationType
    vm_id: str
    vm_snapshot_id: str
    done: bool
    error: Failure | None = None
    progress_percent: int = 0
    step: str = ""
    request_id: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None
    vm_snapshot: VMSnapshot | None = None
    #: The project of its VM ("" when none).
    project: str = ""
    #: A cancel was recorded and the work has not ended yet.
    cancel_requested: bool = False
    #: CLONE: the new VM's id.
    new_vm_id: str = ""

    @property
    def succeeded(self) -> bool:
        """Done without an error."""
        return self.done and self.error is None


@dataclass(frozen=True)
class DriverStatus:
    """A registered storage driver with its versions, capabilities and health."""

    name: str
    address: str
    vendor_version: str = ""
    contract_version: str = ""
    capabilities: tuple[str, ...] = ()
    health: Health = Health.UNSPECIFIED
    health_message: str = ""
    last_check_time: datetime | None = None
    order: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentStatus:
    """A registered hypervisor agent with its versions and health."""

    name: str
    address: str
    hypervisor: str = ""
    version: str = ""
    contract_version: str = ""
    health: Health = Health.UNSPECIFIED
    health_message: str = ""
    last_check_time: datetime | None = None
    #: Method names such as OVERLAY, GUEST_FREEZE (see vmsnap_sdk.QuiesceMethod).
    quiesce_methods: tuple[str, ...] = ()
    memory_snapshots: bool = False


@dataclass(frozen=True)
class Finding:
    """What the reconciler found comparing a driver's or agent's objects with the
    catalog, and what it did (vocabularies: the proto's ``Finding`` message)."""

    #: ORPHAN, FOREIGN, MISSING, FOUND, STALE_FREEZE or PEER_ERROR.
    kind: str
    #: The driver or agent.
    peer: str = ""
    #: The object on the peer (a snapshot id, a freeze token), "" for summaries.
    object_id: str = ""
    vm_id: str = ""
    vm_snapshot_id: str = ""
    #: DELETED, MARKED, CLEARED, THAWED, *_FAILED, WOULD_* (dry run), KEPT or NONE.
    action: str = ""
    detail: str = ""
    #: When the pass that found it started.
    time: datetime | None = None


@dataclass(frozen=True)
class AuditRecord:
    """One audited call: every mutating call and every refused one."""

    time: datetime | None
    #: Who ("" when the call was not authenticated) and how: token, jwt, mtls, local.
    principal: str
    authenticated_by: str
    project: str
    method: str
    target: str
    request_id: str
    #: "OK" or a gRPC code name.
    result: str
    #: Refused for who made it (UNAUTHENTICATED, PERMISSION_DENIED, another project's).
    refused: bool
    detail: str
    peer: str


@dataclass(frozen=True)
class ReconcileReport:
    """What one reconciliation pass found and did."""

    findings: tuple[Finding, ...]
    #: Findings of the pass left out of ``findings`` (all are kept: list_findings).
    omitted: int = 0


@dataclass(frozen=True)
class UndefineResult:
    """Where an UndefineVM stands: undefined, or waiting for its snapshots' deletes."""

    undefined: bool
    #: The operations deleting the VM's snapshots (with delete_snapshots).
    delete_operations: tuple[Operation, ...] = ()


@dataclass(frozen=True)
class LabeledVM:
    """A VM and its labels (kept by the host, matched by policy selectors)."""

    vm: VM
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyRun:
    """One VM's part of one run of a snapshot policy."""

    vm_id: str
    scheduled_time: datetime | None
    #: PENDING, RUNNING, SUCCEEDED or FAILED.
    outcome: str
    operation_id: str = ""
    vm_snapshot_id: str = ""
    error_message: str = ""
    #: Scheduled times the host was down for, folded into this run.
    missed_count: int = 0
    #: Snapshots of the policy its retention deleted after this run.
    deleted_snapshot_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class SnapshotPolicy:
    """A schedule, its VMs (one, or a label selector) and its retention."""

    name: str
    schedule: str
    vm_id: str = ""
    selector: dict[str, str] = field(default_factory=dict)
    time_zone: str = ""
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    quiesce: QuiescePolicy = QuiescePolicy.UNSPECIFIED
    paused: bool = False
    next_run_time: datetime | None = None
    last_run_time: datetime | None = None
    create_time: datetime | None = None
    id: str = ""
    #: Its most recent runs, newest first (get_policy only).
    runs: tuple[PolicyRun, ...] = ()


_T = TypeVar("_T")


@dataclass(frozen=True)
class Page(Generic[_T]):
    """One page of a list; pass ``next_token`` back for the next (empty on the last)."""

    items: tuple[_T, ...]
    next_token: str = ""


@dataclass(frozen=True)
class DiskRanges:
    """Ranges of one snapshot disk (allocated, or changed since an older snapshot)."""

    capacity_bytes: int
    block_size: int
    ranges: tuple[BlockRange, ...]

    @property
    def total_bytes(self) -> int:
        return sum(r.length for r in self.ranges)


@dataclass(frozen=True)
class FreezeInfo:
    """A freeze in force (FreezeVM): renew it before ``expire_time``, thaw it."""

    token: str
    operation_id: str
    consistency: Consistency
    expire_time: datetime
    method: str = ""
    message: str = ""


@dataclass(frozen=True)
class DiscoveredVolume:
    """One disk's snapshot in a discovered set."""

    disk: str
    locator: str
    handle: str
    size_bytes: int = 0


@dataclass(frozen=True)
class DiscoveredSet:
    """Array snapshots no vmsnap host made, that can become one VM snapshot."""

    id: str
    driver: str
    object_id: str
    name: str
    create_time: datetime | None
    volumes: tuple[DiscoveredVolume, ...]
    complete: bool
    consistency: Consistency


@dataclass(frozen=True)
class Discovery:
    """DiscoverSnapshots: the sets, and drivers that cannot list theirs."""

    sets: tuple[DiscoveredSet, ...]
    unsupported_drivers: tuple[str, ...] = ()
