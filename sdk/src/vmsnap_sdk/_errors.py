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
``google.rpc.Status`` details (ErrorInfo with domain :data:`DOMAIN` and the
error's reason, BadRequest, RetryInfo). The reasons vmsnap itself uses are the
contract's enum, :class:`~vmsnap_sdk.errors.Reason`; a driver may add its own. Clients get
the same classes back from :func:`from_rpc_error`, with what the peer said cut
to the sizes of :mod:`vmsnap_sdk.limits`; details that cannot be read make the
error UNKNOWN (the outcome of the call is unknown), never an exception that
escapes the client. Any other exception in a
servicer becomes INTERNAL with a fixed message: no traceback, no secret leaves
the process (it is logged locally, by type only when it may carry secrets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from vmsnap_sdk import limits
from vmsnap_sdk._reasons import Reason

DOMAIN = "vmsnap.io"

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class VMSnapError(Exception):
    """Base of every error the vmsnap contracts define."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    #: False for codes after which the operation may still be running.
    final: ClassVar[bool] = True
    #: ``google.rpc.ErrorInfo.reason`` when none is given: a :class:`Reason` (the
    #: contract's enum, ``vmsnap.common.v1.ErrorReason``).
    default_reason: ClassVar[str] = Reason.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        # A plain str, whether given as a Reason or a string (a driver's own reason).
        self.reason = str(reason or self.default_reason)
        self.metadata: dict[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(VMSnapError):
    """A field is malformed or missing; ``field_violations`` name each one."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = Reason.INVALID_ARGUMENT

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
    default_reason = Reason.NOT_FOUND


class AlreadyExists(VMSnapError):
    """The same id was used with different arguments."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = Reason.ALREADY_EXISTS


class FailedPrecondition(VMSnapError):
    """The system is not in a state where the call can work (e.g. VM running)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = Reason.FAILED_PRECONDITION


class ResourceExhausted(VMSnapError):
    """No space, or a limit such as snapshots per volume."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = Reason.RESOURCE_EXHAUSTED


class Unimplemented(VMSnapError):
    """The capability is not offered."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = Reason.UNIMPLEMENTED


class Unauthenticated(VMSnapError):
    """The call carries no valid credentials (a host with authentication on)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = Reason.UNAUTHENTICATED


class PermissionDenied(VMSnapError):
    """The caller is known, but its role does not allow the call."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = Reason.PERMISSION_DENIED


class Internal(VMSnapError):
    """A bug or an unexpected failure inside the server."""

    code = grpc.StatusCode.INTERNAL
    default_reason = Reason.INTERNAL


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
    default_reason = Reason.CONCURRENT_OPERATION


class TransientError(_Retryable):
    """Array or link trouble: the operation may still be running.

    The caller must retry the same idempotent call or compensate (delete the
    same id); it must never forget the operation.
    """

    final = False


class Unavailable(TransientError):
    """The array or the driver cannot be reached."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = Reason.UNAVAILABLE


class DeadlineExceeded(TransientError):
    """The deadline passed; the work may still complete."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = Reason.DEADLINE_EXCEEDED


class Cancelled(TransientError):
    """The call was cancelled; the work may still complete."""

    code = grpc.StatusCode.CANCELLED
    default_reason = Reason.CANCELLED


class Unknown(TransientError):
    """The outcome is unknown."""

    code = grpc.StatusCode.UNKNOWN
    default_reason = Reason.UNKNOWN


_BY_CODE: dict[grpc.StatusCode, type[VMSnapError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unimplemented,
        Unauthenticated,
        PermissionDenied,
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
    """The ``google.rpc.Status`` of an error, with its details.

    The message is cut to the contract's ``MAX_MESSAGE`` chars: a longer one would
    be cut by every vmsnap client anyway, and past gRPC's metadata limit (8 KiB)
    the whole status is lost on the way.
    """
    status = status_pb2.Status(code=error.code.value[0], message=limits.cut(error.message))
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
    return error.code, status.message, ((_STATUS_DETAILS_KEY, status.SerializeToString()),)


def from_status(code: grpc.StatusCode, message: str, details: bytes | None) -> VMSnapError:
    """The error for a status received from a peer; never raises, whatever the peer sent.

    What a peer says is bounded before it becomes an error of this process
    (:mod:`vmsnap_sdk.limits`): the message is cut to ``MAX_MESSAGE`` chars,
    ErrorInfo and BadRequest are cut to their sizes, a RetryInfo delay is
    clamped. Details that cannot be read (not a ``google.rpc.Status``, a code
    that contradicts the call's, an undecodable detail) make the call's
    outcome unknown: the error is UNKNOWN, whatever code the peer claimed,
    because a caller must not act on a code it cannot trust (a final code would
    let it forget an operation that may have happened).
    """
    if details:
        try:
            return _from_details(code, message, details)
        except Exception as exc:  # noqa: BLE001 - the boundary: a peer's bytes never escape as an exception
            return Unknown(
                limits.cut(
                    f"the peer answered {code.name} ({limits.cut(message, 200)!r}) with malformed "
                    f"error details (grpc-status-details-bin: {_describe_bad_details(exc)}); "
                    "the outcome of the call is unknown"
                ),
                reason=Reason.MALFORMED_ERROR_DETAILS,
            )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and _is_local_size_error(message):
        return _too_large(message)
    return _build(_BY_CODE.get(code, Unknown), message, None, {}, [], None)


class _BadDetails(ValueError):
    """The details decoded, but do not make sense."""


def _describe_bad_details(exc: Exception) -> str:
    if isinstance(exc, _BadDetails):
        return str(exc)
    return f"not a google.rpc.Status ({type(exc).__name__})"


def _from_details(code: grpc.StatusCode, message: str, details: bytes) -> VMSnapError:
    status = status_pb2.Status.FromString(details)
    if status.code != code.value[0]:
        raise _BadDetails(
            f"they say code {status.code}, the call ended with {code.name} ({code.value[0]})"
        )
    reason: str | None = None
    metadata: dict[str, str] = {}
    violations: list[tuple[str, str]] = []
    retry_delay: float | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            _unpack(detail, info)
            reason = info.reason[: limits.MAX_ERROR_REASON] or None
            metadata = _bounded_metadata(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            _unpack(detail, bad)
            violations = [
                (limits.cut(v.field, limits.MAX_FIELD_PATH), limits.cut(v.description))
                for v in bad.field_violations[: limits.MAX_FIELD_VIOLATIONS]
            ]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            _unpack(detail, retry)
            seconds = retry.retry_delay.ToNanoseconds() / 1e9
            retry_delay = min(max(seconds, 0.0), limits.MAX_RETRY_DELAY_SECONDS)
    cls = _BY_CODE.get(code, Unknown)
    return _build(cls, status.message or message, reason, metadata, violations, retry_delay)


def _unpack(detail: any_pb2.Any, into: Any) -> None:
    if not detail.Unpack(into):
        raise _BadDetails(f"a detail of type {detail.TypeName()[:100]!r} does not decode")


def _bounded_metadata(values: Mapping[str, str]) -> dict[str, str]:
    """At most MAX_ERROR_METADATA_ENTRIES entries (the first keys in order), keys that
    fit whole (a cut key would be another key), values cut."""
    kept: dict[str, str] = {}
    for key in sorted(values):
        if len(kept) == limits.MAX_ERROR_METADATA_ENTRIES:
            break
        if len(key) <= limits.MAX_ERROR_METADATA_KEY:
            kept[key] = limits.cut(values[key], limits.MAX_ERROR_METADATA_VALUE)
    return kept


def _build(
    cls: type[VMSnapError],
    message: str,
    reason: str | None,
    metadata: dict[str, str],
    violations: list[tuple[str, str]],
    retry_delay: float | None,
) -> VMSnapError:
    message = limits.cut(message)
    if cls is InvalidArgument:
        return InvalidArgument(
            message, field_violations=violations, reason=reason, metadata=metadata
        )
    if issubclass(cls, _Retryable):
        return cls(message, retry_delay=retry_delay, reason=reason, metadata=metadata)
    return cls(message, reason=reason, metadata=metadata)


# What gRPC itself says (in this process) when a peer's answer is over a size limit:
# its error metadata (e.g. a megabyte of message) or the message itself. The peer's
# own status is lost then, so the call's outcome is unknown.
_LOCAL_SIZE_ERRORS = ("metadata size exceeds", "message larger than max")


def _is_local_size_error(message: str) -> bool:
    return any(marker in message for marker in _LOCAL_SIZE_ERRORS)


def _too_large(message: str) -> VMSnapError:
    return Unknown(
        limits.cut(
            f"the peer's answer was over this client's size limits ({limits.cut(message, 300)}); "
            "its status was lost, so the outcome of the call is unknown; error messages are "
            f"at most {limits.MAX_MESSAGE} chars (vmsnap_sdk.limits)"
        ),
        reason=Reason.ANSWER_TOO_LARGE,
    )


def from_rpc_error(error: grpc.aio.AioRpcError) -> VMSnapError:
    """The error for a failed client call (the one place clients translate); never raises."""
    details: bytes | None = None
    trailers: Any = error.trailing_metadata() or ()
    for key, value in trailers:
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            details = value
    return from_status(error.code(), error.details() or "", details)


# Keep code_pb2 referenced: its numbers are the contract's, and a test pins that
# grpc.StatusCode agrees with them.
CODE_NUMBERS: dict[str, int] = dict(code_pb2.Code.items())
