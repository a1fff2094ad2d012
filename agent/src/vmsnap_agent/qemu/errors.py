"""Error types of the QEMU backend.

They map one-to-one onto the contract's canonical codes (named in each
docstring) so the gRPC layer can translate without guessing.
"""

from __future__ import annotations


class QemuAgentError(Exception):
    """Base class of every error raised by vmsnap_agent.qemu.

    ``reason`` is a stable machine-readable word (the contract's ErrorInfo.reason).
    """

    default_reason = "QEMU_AGENT_ERROR"

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason


class VmNotFound(QemuAgentError):
    """No VM with that id is defined (NOT_FOUND)."""

    default_reason = "VM_NOT_FOUND"


class VmAlreadyExists(QemuAgentError):
    """define_vm with an id that is already defined differently (ALREADY_EXISTS)."""

    default_reason = "VM_ALREADY_EXISTS"


class InvalidSpec(QemuAgentError):
    """A malformed VM or disk spec, or arguments that cannot work (INVALID_ARGUMENT)."""

    default_reason = "INVALID_SPEC"


class VmStateError(QemuAgentError):
    """The VM is not in the state the operation needs, e.g. RUNNING (FAILED_PRECONDITION)."""

    default_reason = "VM_STATE"


class VmBusy(QemuAgentError):
    """Another quiesce is active on the VM (ABORTED: retry after it ends)."""

    default_reason = "VM_FROZEN"


class VmFrozen(QemuAgentError):
    """The VM is quiesced: start, stop, revert, native snapshots and undefine wait
    for unquiesce or the end of the lease (FAILED_PRECONDITION).

    Not resolved implicitly: arrays may be snapshotting the stable bases right
    now, and committing the overlays into them would change them underneath."""

    default_reason = "VM_FROZEN"


class GuestAgentUnavailable(QemuAgentError):
    """qemu-ga did not answer in time or is not configured (UNAVAILABLE).

    The host applies its quiesce policy: REQUIRED fails the take, BEST_EFFORT
    falls back to the overlay method and records crash consistency.
    """

    default_reason = "GUEST_AGENT_UNAVAILABLE"


class GuestAgentError(QemuAgentError):
    """qemu-ga answered with an error, e.g. the freeze itself failed (FAILED_PRECONDITION)."""

    default_reason = "GUEST_AGENT_ERROR"


class QmpCommandError(QemuAgentError):
    """QEMU rejected a QMP command or a block job failed (INTERNAL)."""

    default_reason = "QMP_ERROR"


class SnapshotConflict(QemuAgentError):
    """A native snapshot of that id exists with other disks or memory (ALREADY_EXISTS)."""

    default_reason = "SNAPSHOT_CONFLICT"


class SnapshotNotFound(QemuAgentError):
    """No native snapshot with that id on the VM's disks (NOT_FOUND)."""

    default_reason = "SNAPSHOT_NOT_FOUND"


class QuiesceNotFound(QemuAgentError):
    """renew_quiesce of a token that is not active (expired or never issued) (NOT_FOUND)."""

    default_reason = "QUIESCE_NOT_FOUND"


class CopyConflict(QemuAgentError):
    """A copy id already names copies of another snapshot or other disks (ALREADY_EXISTS)."""

    default_reason = "CLONE_ID_REUSED"


class NoSpace(QemuAgentError):
    """The agent's state directory has no room for a copy (RESOURCE_EXHAUSTED)."""

    default_reason = "RESOURCE_EXHAUSTED"
