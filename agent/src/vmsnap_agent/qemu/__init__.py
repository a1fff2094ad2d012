"""Real QEMU/KVM backend of the vmsnap hypervisor agent, driven over QMP.

Entry point: :class:`QemuHypervisor`, a library with types of its own (VmInfo,
DiskSpec, QuiesceResult, ...) and no SDK import. ``agent.QemuAgent`` serves it
through the SDK's HypervisorAgent contract and ``serve`` plugs it into
``vmsnap-agent --hypervisor qemu``.

Where to look: ``hypervisor`` (state layout, VM lifecycle), ``quiesce`` (the
methods and why freeze → overlay → thaw), ``native`` (internal snapshots),
``process`` (QEMU command line), ``qmp`` / ``guest_agent`` (the two sockets),
``guest_image`` (the test guest built from Debian packages), ``locators``.
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
    BootMode,
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
    "BootMode",
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
