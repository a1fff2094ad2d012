"""Serving a driver or an agent: listen, TLS, health, reflection, shutdown.

Every server process of vmsnap takes ``--listen ADDRESS`` in gRPC address
syntax (``unix:///run/x.sock``, ``127.0.0.1:PORT``; port 0 picks one). On
SIGTERM or SIGINT the server reports NOT_SERVING, refuses new calls, ends the
calls that would only wait (:meth:`Server.on_stopping`) and lets calls in flight
finish within the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from vmsnap_sdk._context import CallContext, _reset_call, _set_call
from vmsnap_sdk._errors import INTERNAL_MESSAGE, Internal, VMSnapError, to_grpc_status
from vmsnap_sdk._tls import MAX_MESSAGE_BYTES, ServerTLS
from vmsnap_sdk.metrics import observe_rpc

log = logging.getLogger("vmsnap.server")

_R = TypeVar("_R")


async def invoke(
    context: grpc.aio.ServicerContext[Any, Any], method: str, handler: Callable[[], Awaitable[_R]]
) -> _R:
    """Run one RPC handler: the one place server-side errors become statuses.

    Sets the current call (deadline visible to the handler), logs the call as
    one structured line, and turns a VMSnapError into its code with details;
    any other exception into INTERNAL with a fixed message (the frames are
    logged locally, never the exception's text, which may carry a secret).
    """
    remaining = context.time_remaining()
    metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
    call = CallContext(
        method=method,
        peer=context.peer() or "",
        deadline=time.monotonic() + remaining if remaining is not None else None,
        metadata=metadata,
    )
    token = _set_call(call)
    start = time.monotonic()
    error: VMSnapError | None = None
    try:
        return await handler()
    except VMSnapError as exc:
        error = exc
    except Exception as exc:  # noqa: BLE001 - the boundary: nothing unexpected leaks
        frames = "".join(traceback.format_tb(exc.__traceback__))
        log.error(
            "unexpected exception in handler",
            extra={"fields": {"method": method, "exc_type": type(exc).__name__, "frames": frames}},
        )
        error = Internal(INTERNAL_MESSAGE)
    finally:
        _reset_call(token)
        elapsed = time.monotonic() - start
        observe_rpc(method, error.code.name if error else "OK", elapsed)
        log.info(
            "rpc",
            extra={
                "fields": {
                    "method": method,
                    "code": error.code.name if error else "OK",
                    "ms": round(elapsed * 1000, 2),
                }
            },
        )
    code, message, trailers = to_grpc_status(error)
    await context.abort(code, message, trailers)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


async def invoke_stream(
    context: grpc.aio.ServicerContext[Any, Any],
    method: str,
    handler: Callable[[], AsyncIterator[_R]],
) -> AsyncIterator[_R]:
    """:func:`invoke` for a server-streaming handler (an async generator, the form
    every interceptor, e.g. tracing's, expects): the same boundary, the same log
    line and metrics once the stream ends."""
    remaining = context.time_remaining()
    metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
    call = CallContext(
        method=method,
        peer=context.peer() or "",
        deadline=time.monotonic() + remaining if remaining is not None else None,
        metadata=metadata,
    )
    token = _set_call(call)
    start = time.monotonic()
    error: VMSnapError | None = None
    try:
        async for item in handler():
            yield item
    except VMSnapError as exc:
        error = exc
    except Exception as exc:  # noqa: BLE001 - the boundary: nothing unexpected leaks
        frames = "".join(traceback.format_tb(exc.__traceback__))
        log.error(
            "unexpected exception in handler",
            extra={"fields": {"method": method, "exc_type": type(exc).__name__, "frames": frames}},
        )
        error = Internal(INTERNAL_MESSAGE)
    finally:
        _reset_call(token)
        elapsed = time.monotonic() - start
        observe_rpc(method, error.code.name if error else "OK", elapsed)
        log.info(
            "rpc",
            extra={
                "fields": {
                    "method": method,
                    "code": error.code.name if error else "OK",
                    "ms": round(elapsed * 1000, 2),
                }
            },
        )
    if error is not None:
        code, message, trailers = to_grpc_status(error)
        await context.abort(code, message, trailers)


Registrar = Callable[[Any, grpc.aio.Server], None]


class Server:
    """A gRPC asyncio server with health, reflection and graceful shutdown."""

    def __init__(
        self,
        listen: str | Sequence[str],
        *,
        tls: ServerTLS | None = None,
        grace_seconds: float = 10.0,
        max_concurrent_rpcs: int | None = 256,
        interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    ) -> None:
        self._listen = [listen] if isinstance(listen, str) else list(listen)
        self._tls = tls
        self.grace_seconds = grace_seconds
        self._server = grpc.aio.server(
            interceptors=list(interceptors) or None,
            maximum_concurrent_rpcs=max_concurrent_rpcs,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        self._health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._services: list[str] = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        self.addresses: list[str] = []
        self._stopped = asyncio.Event()
        self._on_stopping: list[Callable[[], Awaitable[None]]] = []

    def add_service(self, full_name: str, servicer: object, registrar: Registrar) -> None:
        """Add a servicer (``registrar`` is the generated ``add_XServicer_to_server``)."""
        registrar(servicer, self._server)
        self._services.append(full_name)

    async def start(self) -> list[str]:
        """Bind and start; returns the addresses actually bound (port 0 resolved)."""
        reflection.enable_server_reflection(
            [*self._services, reflection.SERVICE_NAME], self._server
        )
        for address in self._listen:
            if self._tls is not None:
                port = self._server.add_secure_port(address, self._tls.credentials())
            else:
                port = self._server.add_insecure_port(address)
            if port == 0 and not address.startswith("unix"):
                raise OSError(f"cannot listen on {address}")
            host = address.rsplit(":", 1)[0]
            self.addresses.append(address if address.startswith("unix") else f"{host}:{port}")
        await self._server.start()
        for name in self._services:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving", extra={"fields": {"addresses": self.addresses, "services": self._services}}
        )
        return self.addresses

    def on_stopping(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await ``callback`` when the server begins to stop, once it reports
        NOT_SERVING and before it waits for the calls in flight: the place to end
        calls that would otherwise hold the stop for the whole grace period (a
        stream that runs until the client cancels it, a long poll). It may be
        called more than once."""
        self._on_stopping.append(callback)

    async def stop(self, grace_seconds: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, end the calls that only wait (see
        :meth:`on_stopping`), let calls in flight finish."""
        await self._health.enter_graceful_shutdown()
        for callback in self._on_stopping:
            await callback()
        grace = self.grace_seconds if grace_seconds is None else grace_seconds
        log.info("shutting down", extra={"fields": {"grace_seconds": grace}})
        await self._server.stop(grace)
        self._stopped.set()

    async def serve_until_signal(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        try:
            await stop_requested.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        await self.stop()
