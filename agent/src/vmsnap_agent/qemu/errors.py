"""Error types of the QEMU backend.

They map one-to-one onto the contract's canonical codes (named in each
docstring) so the gRPC layer can translate without guessing.
"""

from __future__ import annotations


class QemuAgentError(Exception):
    """Base class of every error raised by vmsnap_agent.qemu."""


class VmNotFound(QemuAgentError):
    """No VM with that id is defined (NOT_FOUND)."""


class VmAlreadyExists(QemuAgentError):
    """define_vm with an id that is already defined differently (ALREADY_EXISTS)."""


class InvalidSpec(QemuAgentError):
    """A malformed VM or disk spec, or arguments that cannot work (INVALID_ARGUMENT)."""


class VmStateError(QemuAgentError):
    """The VM is not in the state the operation needs, e.g. RUNNING (FAILED_PRECONDITION)."""


class VmBusy(QemuAgentError):
    """Another quiesce is active on the VM (ABORTED: retry after it ends)."""


class VmFrozen(QemuAgentError):
    """The VM is quiesced: start, stop, revert, native snapshots and undefine wait
    for unquiesce or the end of the lease (FAILED_PRECONDITION).

    Not resolved implicitly: arrays may be snapshotting the stable bases right
    now, and committing the overlays into them would change them underneath."""


class GuestAgentUnavailable(QemuAgentError):
    """qemu-ga did not answer in time or is not configured (UNAVAILABLE).

    The host applies its quiesce policy: REQUIRED fails the take, BEST_EFFORT
    falls back to the overlay method and records crash consistency.
    """


class GuestAgentError(QemuAgentError):
    """qemu-ga answered with an error, e.g. the freeze itself failed (FAILED_PRECONDITION)."""


class QmpCommandError(QemuAgentError):
    """QEMU rejected a QMP command or a block job failed (INTERNAL)."""


class SnapshotConflict(QemuAgentError):
    """A native snapshot of that id exists with other disks or memory (ALREADY_EXISTS)."""


class SnapshotNotFound(QemuAgentError):
    """No native snapshot with that id on the VM's disks (NOT_FOUND)."""


class QuiesceNotFound(QemuAgentError):
    """renew_quiesce of a token that is not active (expired or never issued) (NOT_FOUND)."""
