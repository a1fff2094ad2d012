"""Public error classes (see ``vmsnap_sdk._errors`` for the tree and the mapping)."""

from vmsnap_sdk._errors import (
    DOMAIN,
    Aborted,
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TransientError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    VMSnapError,
)
from vmsnap_sdk._reasons import Reason

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DOMAIN",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "Reason",
    "ResourceExhausted",
    "TransientError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "VMSnapError",
]
