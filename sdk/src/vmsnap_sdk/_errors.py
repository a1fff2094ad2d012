"""Errors of the vmsnap contracts, and their one mapping to gRPC status codes.

The tree::

    VMSnapError                  base; .code, .message, .reason, .final
    ├── InvalidArgument          INVALID_ARGUMENT     final; .field_violations
    ├── NotFound                 NOT_FOUND            final
    ├── AlreadyExists            ALREADY_EXISTS       final
    ├── FailedPrecondition       FAILED_PRECONDITION  final
    ├── ResourceExhausted        RESOURCE_EXHAUSTED   final
    ├── Unimplemented            UNIMPLEMENTED        final
    ├── Aborted                  ABORTED              retry with backoff; .retry_delay
    ├── Internal                 INTERNAL             final
    └── TransientError           the operation may still be running: never forget it
        ├── Unavailable          UNAVAILABLE; .retry_delay
        ├── DeadlineExceeded     DEADLINE_EXCEEDED
        ├── Cancelled            CANCELLED
        └── Unknown              UNKNOWN

Servers raise these; :func:`to_grpc_status` turns one into a status with
``google.rpc.Status`` details (ErrorInfo, BadRequest, RetryInfo). Clients get
the same classes back from :func:`from_rpc_error`. Any other exception in a
servicer becomes INTERNAL with a fixed message: no traceback, no secret leaves
the process (it is logged locally, by type only when it may carry secrets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

DOMAIN = "vmsnap.io"

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class VMSnapError(Exception):
    """Base of every error the vmsnap contracts define."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    #: False for codes after which the operation may still be running.
    final: ClassVar[bool] = True
    default_reason: ClassVar[str] = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(VMSnapError):
    """A field is malformed or missing; ``field_violations`` name each one."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        field_violations: Sequence[tuple[str, str]] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.field_violations: list[tuple[str, str]] = list(field_violations)

    @classmethod
    def for_field(cls, field: str, description: str) -> InvalidArgument:
        """One bad field: the message names it, BadRequest carries it."""
        return cls(f"{field}: {description}", field_violations=[(field, description)])


class NotFound(VMSnapError):
    """A volume or snapshot is unknown."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(VMSnapError):
    """The same id was used with different arguments."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(VMSnapError):
    """The system is not in a state where the call can work (e.g. VM running)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(VMSnapError):
    """No space, or a limit such as snapshots per volume."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unimplemented(VMSnapError):
    """The capability is not offered."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class Internal(VMSnapError):
    """A bug or an unexpected failure inside the server."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


class _Retryable(VMSnapError):
    def __init__(
        self,
        message: str,
        *,
        retry_delay: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_delay = retry_delay


class Aborted(_Retryable):
    """Another operation on the same volume runs; retry after a backoff."""

    code = grpc.StatusCode.ABORTED
    default_reason = "CONCURRENT_OPERATION"


class TransientError(_Retryable):
    """Array or link trouble: the operation may still be running.

    The caller must retry the same idempotent call or compensate (delete the
    same id); it must never forget the operation.
    """

    final = False


class Unavailable(TransientError):
    """The array or the driver cannot be reached."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(TransientError):
    """The deadline passed; the work may still complete."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Cancelled(TransientError):
    """The call was cancelled; the work may still complete."""

    code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED"


class Unknown(TransientError):
    """The outcome is unknown."""

    code = grpc.StatusCode.UNKNOWN
    default_reason = "UNKNOWN"


_BY_CODE: dict[grpc.StatusCode, type[VMSnapError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unimplemented,
        Aborted,
        Internal,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Unknown,
    )
}

#: The message of INTERNAL for an exception that is not a VMSnapError.
INTERNAL_MESSAGE = "internal error in the server; see its log"


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_rpc_status(error: VMSnapError) -> status_pb2.Status:
    """The ``google.rpc.Status`` of an error, with its details."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)
    info.metadata.update(error.metadata)
    status.details.append(_pack(info))
    if isinstance(error, InvalidArgument) and error.field_violations:
        bad = error_details_pb2.BadRequest()
        for name, description in error.field_violations:
            bad.field_violations.add(field=name, description=description)
        status.details.append(_pack(bad))
    if isinstance(error, _Retryable) and error.retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_delay * 1e9))
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status


def to_grpc_status(
    error: VMSnapError,
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """Code, message and trailing metadata to abort a call with."""
    status = to_rpc_status(error)
    return error.code, error.message, ((_STATUS_DETAILS_KEY, status.SerializeToString()),)


def from_status(code: grpc.StatusCode, message: str, details: bytes | None) -> VMSnapError:
    """The error for a status received from a peer."""
    cls = _BY_CODE.get(code, Unknown)
    reason: str | None = None
    metadata: dict[str, str] = {}
    violations: list[tuple[str, str]] = []
    retry_delay: float | None = None
    if details:
        status = status_pb2.Status.FromString(details)
        message = status.message or message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
                metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = [(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_delay = retry.retry_delay.ToNanoseconds() / 1e9
    if cls is InvalidArgument:
        return InvalidArgument(
            message, field_violations=violations, reason=reason, metadata=metadata
        )
    if issubclass(cls, _Retryable):
        return cls(message, retry_delay=retry_delay, reason=reason, metadata=metadata)
    return cls(message, reason=reason, metadata=metadata)


def from_rpc_error(error: grpc.aio.AioRpcError) -> VMSnapError:
    """The error for a failed client call (the one place clients translate)."""
    details: bytes | None = None
    trailers: Any = error.trailing_metadata() or ()
    for key, value in trailers:
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            details = value
    return from_status(error.code(), error.details() or "", details)


# Keep code_pb2 referenced: its numbers are the contract's, and a test pins that
# grpc.StatusCode agrees with them.
CODE_NUMBERS: dict[str, int] = dict(code_pb2.Code.items())
