"""Just enough of a ``grpc.aio.ServicerContext`` to call a servicer's method in
process: its error boundary aborts through :meth:`ServicerContext.abort`, which
records the status and raises :class:`Aborted`."""

from __future__ import annotations

from typing import Any

import grpc


class Aborted(Exception):
    """Raised by :meth:`ServicerContext.abort`, as grpc's own raises to end the call."""


class ServicerContext:
    def __init__(self) -> None:
        #: (code, message, trailers) of the abort, once aborted.
        self.aborted: tuple[grpc.StatusCode, str, Any] | None = None

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "test"

    async def abort(self, code: grpc.StatusCode, message: str, trailers: Any) -> None:
        self.aborted = (code, message, trailers)
        raise Aborted
