"""Domain types for everything a driver or agent sees and returns.

These frozen dataclasses and enums are the SDK's public vocabulary; protobuf
messages never reach a vendor's code. Converters to and from the wire live in
``_convert.py`` and nowhere else.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


class VMState(enum.Enum):
    """State of a VM as its hypervisor agent reports it."""

    UNSPECIFIED = 0
    STOPPED = 1
    RUNNING = 2
    PAUSED = 3


class Consistency(enum.IntEnum):
    """Consistency of a snapshot; ordered, so ``min()`` gives the weakest."""

    UNSPECIFIED = 0
    CRASH = 1
    FILESYSTEM = 2
    APPLICATION = 3


class Priority(enum.IntEnum):
    """How much a driver wants a volume; ordered, the highest wins."""

    UNSPECIFIED = 0
    CANT_HANDLE = 1
    DEFAULT = 2
    HYPERVISOR = 3
    PLUGIN = 4
    HIGHEST = 5


class Operation(enum.Enum):
    """The operation a CanHandle question is about."""

    UNSPECIFIED = 0
    TAKE = 1
    REVERT = 2
    DELETE = 3


class Capability(enum.Enum):
    """What a driver offers beyond take, delete and CanHandle."""

    UNSPECIFIED = 0
    REVERT = 1
    CONSISTENT_GROUP = 2
    REVERT_UNDO = 3
    POST_PROCESSING = 4
    LIST = 5
    CONFORMANCE_FIXTURE = 6
    CHANGED_BLOCKS = 9
    READ_SNAPSHOT = 10
    CLONE_VOLUMES = 7
    #: ListUnmanagedSnapshots, and revert/delete of what it listed once adopted.
    LIST_UNMANAGED = 8


class QuiesceMethod(enum.Enum):
    """How a hypervisor agent freezes a VM."""

    UNSPECIFIED = 0
    OVERLAY = 1
    GUEST_FREEZE = 2
    GUEST_FREEZE_AND_OVERLAY = 3
    #: Pause the VM and save its device and RAM state to a file (memory snapshots
    #: with disks on arrays): the disks are stable until the thaw resumes it.
    PAUSE_AND_SAVE_MEMORY = 4
    #: Guest freeze, a native cut of the agent's own disks, thaw at once; only a
    #: native snapshot of the cut disks during it is consistent (no overlays).
    GUEST_FREEZE_AND_CUT = 5


@dataclass(frozen=True)
class Volume:
    """One disk of a VM and where it lives (``locator`` is a URI).

    ``native_snapshot`` is set by hypervisor agents when describing a VM: True
    when the agent's native snapshot really keeps this disk's bytes (a revert to
    it restores them), False for a disk the agent only points at (an array LUN
    over NBD/iSCSI, a file on an array's export). It is not part of a volume's
    identity: two volumes that differ only there compare equal.
    """

    disk: str
    locator: str
    size_bytes: int = 0
    format: str = "raw"
    native_snapshot: bool = field(default=False, compare=False)

    @property
    def scheme(self) -> str:
        """The locator's scheme: ``ontap``, ``element``, ``file``, …"""
        return self.locator.split("://", 1)[0] if "://" in self.locator else ""


@dataclass(frozen=True)
class VM:
    """A VM with its disks."""

    id: str
    name: str = ""
    state: VMState = VMState.UNSPECIFIED
    volumes: tuple[Volume, ...] = ()
    memory_mib: int = 0
    agent: str = ""

    def volume(self, disk: str) -> Volume | None:
        """The volume of that disk, or None."""
        return next((v for v in self.volumes if v.disk == disk), None)


@dataclass(frozen=True)
class Limits:
    """Limits a driver asks the host to respect (0 = none)."""

    max_volumes_per_snapshot: int = 0
    max_snapshots_per_volume: int = 0
    max_concurrent_calls: int = 0


@dataclass(frozen=True)
class DriverInfo:
    """Identity of a driver (``name`` is reverse-DNS, at most 63 chars)."""

    name: str
    vendor_version: str
    contract_versions: tuple[str, ...] = ("v1",)
    capabilities: frozenset[Capability] = frozenset()
    limits: Limits = Limits()
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeResult:
    """Whether a driver can reach its array."""

    ready: bool
    message: str = ""


@dataclass(frozen=True)
class VolumeDecision:
    """A driver's answer about one volume."""

    disk: str
    priority: Priority
    reason: str = ""


@dataclass(frozen=True)
class VolumeSnapshot:
    """The snapshot of one volume inside a VM snapshot."""

    disk: str
    locator: str
    handle: str
    size_bytes: int = 0


@dataclass(frozen=True)
class SnapshotResult:
    """What a driver holds for one VM snapshot (the result object of a take)."""

    vm_snapshot_id: str
    volume_snapshots: tuple[VolumeSnapshot, ...]
    ready: bool = True
    consistency: Consistency = Consistency.CRASH
    needs_unquiesce: bool = False
    group_handle: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    create_time: datetime | None = None
    vm_id: str = ""

    @property
    def disks(self) -> frozenset[str]:
        """Disk names covered."""
        return frozenset(v.disk for v in self.volume_snapshots)


@dataclass(frozen=True)
class TakeRequest:
    """Arguments of TakeVMSnapshot, validated by the SDK before the driver sees them."""

    vm_snapshot_id: str
    vm: VM
    volumes: tuple[Volume, ...]
    quiesced: bool = False
    consistency: Consistency = Consistency.UNSPECIFIED
    parameters: Mapping[str, str] = field(default_factory=dict)
    vm_snapshot_name: str = ""


@dataclass(frozen=True)
class RevertRequest:
    """Arguments of RevertVMSnapshot."""

    vm_snapshot_id: str
    snapshot: SnapshotResult
    vm: VM
    save_current_state: bool = False
    undo_vm_snapshot_id: str = ""


@dataclass(frozen=True)
class RevertResult:
    """Result of a revert: the undo snapshot, when one was kept."""

    undo: SnapshotResult | None = None


@dataclass(frozen=True)
class CloneTarget:
    """One new volume of a clone: the snapshot's disk, and the new volume's name."""

    disk: str
    name: str


@dataclass(frozen=True)
class CloneRequest:
    """Arguments of CloneVolumes, validated by the SDK before the driver sees them."""

    clone_id: str
    vm_snapshot_id: str
    snapshot: SnapshotResult
    new_vm_id: str
    targets: tuple[CloneTarget, ...]
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Page:
    """Paging arguments of a list call."""

    size: int = 100
    token: str = ""


@dataclass(frozen=True)
class SnapshotPage:
    """A page of snapshots."""

    snapshots: tuple[SnapshotResult, ...]
    next_token: str = ""


@dataclass(frozen=True)
class UnmanagedSnapshot:
    """A snapshot on the array that no vmsnap host made (ListUnmanagedSnapshots).

    ``id`` is the array's id of the object (a group snapshot, or one volume's
    snapshot); ``volume_snapshots`` has one entry per member, each a requested
    volume (its disk and locator as given); ``consistent_group`` is True when the
    array cut every member at one instant. Once adopted, the host hands a
    :class:`SnapshotResult` made of these fields (with its own vm_snapshot_id)
    to revert and delete: ``metadata`` must let the driver find the object again.
    """

    id: str
    volume_snapshots: tuple[VolumeSnapshot, ...]
    name: str = ""
    create_time: datetime | None = None
    consistent_group: bool = False
    group_handle: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    def as_result(self, vm_snapshot_id: str, vm_id: str = "") -> SnapshotResult:
        """The result the host stores when it adopts this snapshot."""
        return SnapshotResult(
            vm_snapshot_id=vm_snapshot_id,
            volume_snapshots=self.volume_snapshots,
            ready=True,
            consistency=Consistency.CRASH if self.consistent_group else Consistency.UNSPECIFIED,
            group_handle=self.group_handle,
            metadata=dict(self.metadata),
            create_time=self.create_time,
            vm_id=vm_id,
        )


@dataclass(frozen=True)
class UnmanagedPage:
    """A page of unmanaged snapshots."""

    snapshots: tuple[UnmanagedSnapshot, ...]
    next_token: str = ""


# --- hypervisor agent -------------------------------------------------------------


@dataclass(frozen=True)
class AgentInfo:
    """Identity of a hypervisor agent."""

    name: str
    hypervisor: str
    version: str
    contract_versions: tuple[str, ...] = ("v1",)
    quiesce_methods: frozenset[QuiesceMethod] = frozenset()
    memory_snapshots: bool = False
    #: CopyNativeDisks / DeleteCopiedDisks are offered (clone to a new VM).
    copy_native_disks: bool = False
    #: A memory snapshot may span disks on arrays (PAUSE_AND_SAVE_MEMORY offered).
    memory_with_array_disks: bool = False


@dataclass(frozen=True)
class MemoryState:
    """A VM's saved device and RAM state, in a file on the agent's machine."""

    location: str
    size_bytes: int = 0
    #: How long the VM was paused while it was saved.
    paused_seconds: float = 0.0
    #: How long the whole save took (live copy included).
    save_seconds: float = 0.0


@dataclass(frozen=True)
class QuiesceResult:
    """A freeze in force."""

    token: str
    expire_time: datetime
    consistency: Consistency
    method: QuiesceMethod
    warning: str = ""
    #: The saved state (PAUSE_AND_SAVE_MEMORY only).
    memory_state: MemoryState | None = None
    #: The native snapshot asked for with the quiesce (``native_snapshot=``), taken
    #: inside the freeze; None when the agent did not take it.
    native_snapshot: NativeSnapshot | None = None
    #: The freeze is over and left nothing to undo: no renewal or unquiesce needed.
    released: bool = False


@dataclass(frozen=True)
class NativeSnapshotAtFreeze:
    """A disk-only native snapshot asked for with a quiesce (take_native_snapshot's
    arguments, include_memory false): taken inside the freeze, in the same call."""

    snapshot_id: str
    #: Disk names (empty = all).
    disks: tuple[str, ...] = ()


@dataclass(frozen=True)
class QuiesceInfo:
    """A freeze in force, as ``list_quiesces`` reports it.

    Listed until the agent has fully undone it (guest thawed, overlays committed
    back), so ``expire_time`` may lie in the past for a freeze whose undo failed.
    """

    token: str
    vm_id: str
    operation_id: str = ""
    method: QuiesceMethod = QuiesceMethod.UNSPECIFIED
    start_time: datetime | None = None
    expire_time: datetime | None = None


@dataclass(frozen=True)
class UnquiesceResult:
    """Result of a thaw (``thawed_now`` is False when it was already thawed)."""

    frozen_for_seconds: float = 0.0
    thawed_now: bool = False


@dataclass(frozen=True)
class NativeSnapshot:
    """A hypervisor-native snapshot."""

    snapshot_id: str
    vm_id: str
    disks: tuple[str, ...] = ()
    include_memory: bool = False
    create_time: datetime | None = None
    size_bytes: int = 0
    #: The device and RAM state when kept in a file beside the disks.
    memory_state: MemoryState | None = None


@dataclass(frozen=True)
class VMPage:
    """A page of VMs."""

    vms: tuple[VM, ...]
    next_token: str = ""
