"""How a check says what it expected (csi-test's util.go, in one place).

A check fails by raising :class:`CheckFailed` with what was expected and what
came back; it skips by raising :class:`CheckSkipped` with the missing
capability. :func:`expect_code` is the one helper that asserts a status code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import NoReturn, TypeVar

import grpc

from vmsnap_sdk.conformance._rpc import RpcFailure

_T = TypeVar("_T")

OK = grpc.StatusCode.OK


class CheckFailed(AssertionError):
    """The driver did not do what the host relies on."""

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"expected {expected}; got {got}")
        self.expected = expected
        self.got = got


class CheckSkipped(Exception):
    """The check does not apply: the reason names the missing capability."""


def fail(expected: str, got: str) -> NoReturn:
    raise CheckFailed(expected, got)


def expect(condition: bool, expected: object, got: object) -> None:
    """Fail with ``expected`` / ``got`` unless ``condition`` holds."""
    if not condition:
        fail(str(expected), str(got))


def _names(codes: Iterable[grpc.StatusCode]) -> str:
    return " or ".join(c.name for c in codes)


async def expect_ok(call: Awaitable[_T], what: str) -> _T:
    """The result of a call that must succeed."""
    try:
        return await call
    except RpcFailure as exc:
        fail(f"{what} to succeed", exc.summary())


async def expect_code(
    call: Awaitable[object], *codes: grpc.StatusCode, what: str
) -> RpcFailure | None:
    """Assert the call ends with one of ``codes`` (OK allowed only when listed).

    Returns the failure (None when it succeeded and OK was allowed), so the
    caller can look at its details.
    """
    try:
        await call
    except RpcFailure as exc:
        if exc.code not in codes:
            fail(f"{what} → {_names(codes)}", exc.summary())
        return exc
    if OK not in codes:
        fail(f"{what} → {_names(codes)}", "OK")
    return None
