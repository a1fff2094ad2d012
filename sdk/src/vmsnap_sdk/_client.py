"""Client plumbing shared by the adapters: the one place client errors are translated."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from vmsnap_sdk._errors import from_rpc_error

_Resp = TypeVar("_Resp")


async def call(
    method: Callable[..., Awaitable[_Resp]],
    request: Any,
    timeout: float | None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> _Resp:
    """Invoke a stub method; a failed call raises the matching VMSnapError.

    The original grpc error stays attached as ``__cause__`` for debugging.
    """
    try:
        return await method(request, timeout=timeout, metadata=metadata or None)
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from exc
