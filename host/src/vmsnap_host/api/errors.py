"""The errors the host's API returns: the contract's reasons and no other.

An error leaves the host in one of two ways (``vmsnap.common.v1.ErrorReason``
says which and how): a refused call, with a ``google.rpc.Status`` in its
trailers, or a failed operation, with the same status in ``Operation.error``
(and ``VMSnapshot.error``). Both carry an ErrorInfo with domain ``vmsnap.io``
and a reason from :class:`~vmsnap_sdk.errors.Reason`.

A driver may fail with a reason of its own (a vendor's ``ELEMENT_BUSY``). The
host keeps it in its records and logs as it came, and passes it on as
``PEER_ERROR`` with the driver's reason in ErrorInfo metadata (``peer_reason``),
so that a client can rely on the enum and still see what the driver said.
"""

from __future__ import annotations

import copy

from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from vmsnap_host.model import ErrorInfo
from vmsnap_sdk import limits
from vmsnap_sdk.errors import DOMAIN, Reason, VMSnapError

#: ErrorInfo metadata key of a peer's own reason, under PEER_ERROR.
PEER_REASON = "peer_reason"


def _reason(reason: str) -> tuple[str, dict[str, str]]:
    """The reason the API says, and the metadata it adds for it."""
    if reason in Reason.__members__:
        return reason, {}
    if not reason:
        return Reason.UNKNOWN, {}
    return Reason.PEER_ERROR, {PEER_REASON: reason[: limits.MAX_ERROR_METADATA_VALUE]}


def public(error: VMSnapError) -> VMSnapError:
    """``error`` as the API returns it (the same error when its reason is the contract's)."""
    reason, extra = _reason(error.reason)
    if not extra and reason == error.reason:
        return error
    out = copy.copy(error)
    out.reason = reason
    out.metadata = {**error.metadata, **extra}
    return out


def status(error: ErrorInfo) -> status_pb2.Status:
    """The ``google.rpc.Status`` of a recorded failure (Operation.error, VMSnapshot.error)."""
    reason, metadata = _reason(error.reason)
    info = error_details_pb2.ErrorInfo(domain=DOMAIN, reason=reason, metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=error.code, message=limits.cut(error.message), details=[detail])


__all__ = ["PEER_REASON", "public", "status"]
