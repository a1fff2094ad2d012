"""Errors of operations: what a snapshot or operation records, with context that
keeps the original error's details (reason, metadata, field violations, retry delay).
"""

from __future__ import annotations

import copy
import logging

from vmsnap_host.model import ErrorInfo, Group, GroupKind
from vmsnap_sdk.errors import Cancelled, Internal, Reason, VMSnapError

log = logging.getLogger("vmsnap.host.executor")


class OperationFailed(Exception):
    """A take, revert or delete failed; ``error`` is what the operation records."""

    def __init__(self, error: VMSnapError) -> None:
        super().__init__(str(error))
        self.error = error


def cancelled(detail: str = "") -> Cancelled:
    """The cause an operation stopped by CancelOperation records (``detail``: what
    became of it, when the caller knows already)."""
    return Cancelled(
        f"cancelled on request (CancelOperation){detail}", reason=Reason.OPERATION_CANCELLED
    )


def error_info(error: VMSnapError) -> ErrorInfo:
    return ErrorInfo(code=error.code.value[0], message=error.message, reason=error.reason)


def with_context(error: VMSnapError, where: str) -> VMSnapError:
    """The same error (same class, reason, metadata, field violations, retry delay)
    with ``where`` in front of its message."""
    out = copy.copy(error)
    out.message = f"{where}: {error.message}"
    out.args = (out.message,)
    return out


def reworded(error: VMSnapError, message: str) -> VMSnapError:
    """The same error with a new message (its details kept)."""
    out = copy.copy(error)
    out.message = message
    out.args = (message,)
    return out


def as_error(exc: BaseException, where: str) -> VMSnapError:
    """Any exception as a VMSnapError naming where it happened. A non-vmsnap
    exception is a host bug: INTERNAL, logged with its traceback here."""
    if isinstance(exc, VMSnapError):
        return with_context(exc, where)
    log.error(
        "unexpected exception",
        exc_info=exc,
        extra={"fields": {"where": where, "type": type(exc).__name__}},
    )
    return Internal(f"{where}: unexpected {type(exc).__name__} in the host; see its log")


def label(group: Group) -> str:
    kind = "driver" if group.kind is GroupKind.DRIVER else "agent"
    return f"{kind} {group.owner}"


__all__ = [
    "OperationFailed",
    "cancelled",
    "as_error",
    "error_info",
    "label",
    "reworded",
    "with_context",
]
