"""Real QEMU/KVM backend of the vmsnap hypervisor agent, driven over QMP.

Entry point: :class:`QemuHypervisor`. Types mirror the SDK's agent domain types by
name (VmInfo, DiskSpec, QuiesceResult, ...). See ``hypervisor`` for the state
layout, ``quiesce`` for the quiesce methods and their reasoning, ``guest_image``
for the test guest.
"""

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
from .guest_agent import GuestAgentClient
from .guest_image import GuestImage, GuestImageError, build_guest_image
from .hypervisor import QemuHypervisor
from .model import (
    Consistency,
    DiskFormat,
    DiskInfo,
    DiskSpec,
    NativeSnapshot,
    QuiesceMethod,
    QuiesceResult,
    VmInfo,
    VmSpec,
    VmState,
)

__all__ = [
    "Consistency",
    "DiskFormat",
    "DiskInfo",
    "DiskSpec",
    "GuestAgentClient",
    "GuestAgentError",
    "GuestAgentUnavailable",
    "GuestImage",
    "GuestImageError",
    "InvalidSpec",
    "NativeSnapshot",
    "QemuAgentError",
    "QemuHypervisor",
    "QmpCommandError",
    "QuiesceMethod",
    "QuiesceNotFound",
    "QuiesceResult",
    "SnapshotConflict",
    "SnapshotNotFound",
    "VmAlreadyExists",
    "VmBusy",
    "VmFrozen",
    "VmInfo",
    "VmNotFound",
    "VmSpec",
    "VmState",
    "VmStateError",
    "build_guest_image",
]
