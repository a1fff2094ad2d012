"""Calling a driver on the wire, and what a failed call carried back.

The suite talks to the generated stubs directly, not through DriverClient:
it must see exactly what the driver sent (the status details, the domain of
ErrorInfo), which a client adapter is right to smooth over.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

DETAILS_KEY = "grpc-status-details-bin"

_R = TypeVar("_R")


@dataclass(frozen=True)
class StatusDetails:
    """The ``google.rpc.Status`` a driver attached to an error, decoded."""

    code: int
    message: str
    #: (domain, reason) of every ErrorInfo.
    error_infos: tuple[tuple[str, str], ...] = ()
    #: (field, description) of every BadRequest field violation.
    field_violations: tuple[tuple[str, str], ...] = ()
    retry_delay: float | None = None


class RpcFailure(Exception):
    """A call that ended with a status other than OK."""

    def __init__(
        self,
        method: str,
        code: grpc.StatusCode,
        message: str,
        details: StatusDetails | None = None,
        details_error: str = "",
    ) -> None:
        super().__init__(f"{method} → {code.name}: {message}")
        self.method = method
        self.code = code
        self.message = message
        #: None when the driver attached no status details.
        self.details = details
        #: Why the attached details could not be decoded ("" when they could).
        self.details_error = details_error

    def summary(self) -> str:
        text = self.message if len(self.message) <= 200 else self.message[:200] + "…"
        return f"{self.code.name} ({text!r})"


def parse_details(raw: bytes) -> StatusDetails:
    """Decode grpc-status-details-bin; raises DecodeError when it is not a Status."""
    status = status_pb2.Status.FromString(raw)
    infos: list[tuple[str, str]] = []
    violations: list[tuple[str, str]] = []
    retry: float | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append((info.domain, info.reason))
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend((v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info_retry = error_details_pb2.RetryInfo()
            detail.Unpack(info_retry)
            retry = info_retry.retry_delay.ToNanoseconds() / 1e9
    return StatusDetails(status.code, status.message, tuple(infos), tuple(violations), retry)


def failure_from(method: str, error: grpc.aio.AioRpcError) -> RpcFailure:
    """The RpcFailure for a failed call, with its details decoded when present."""
    raw: bytes | None = None
    trailers: Any = error.trailing_metadata() or ()
    for key, value in trailers:
        if key == DETAILS_KEY and isinstance(value, bytes):
            raw = value
    details: StatusDetails | None = None
    problem = ""
    if raw is not None:
        try:
            details = parse_details(raw)
        except DecodeError as exc:
            problem = f"grpc-status-details-bin is not a google.rpc.Status: {exc}"
    return RpcFailure(method, error.code(), error.details() or "", details, problem)


async def call(
    method: str, stub_method: Callable[..., Awaitable[_R]], request: Any, timeout: float | None
) -> _R:
    """One unary call; a non-OK status raises RpcFailure."""
    try:
        return await stub_method(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        raise failure_from(method, exc) from None
