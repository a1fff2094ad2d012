"""Wire-level breakage: raw servicers on the generated stubs, around the SDK's adapter.

The SDK validates requests and maps errors correctly before a driver sees
anything, so some faults cannot be written as a StorageDriver subclass. A
:class:`WireServicer` implements the generated servicer interface itself:
it calls the SDK's servicer for the plain work and rewrites what goes out
(status codes, details, responses) the way a driver written from the .proto
alone could get it wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from vmsnap_sdk import Server, StorageDriver
from vmsnap_sdk._driver_service import DriverServicer, FixtureServicer
from vmsnap_sdk._proto.driver.v1 import driver_pb2, driver_pb2_grpc
from vmsnap_sdk.serve import DRIVER_SERVICE, FIXTURE_SERVICE

Trailers = tuple[tuple[str, bytes], ...]
#: (code, message, trailers) → what to abort with instead, or an exception to raise.
Rewrite = Callable[
    [grpc.StatusCode, str, Trailers], "tuple[grpc.StatusCode, str, Trailers] | Exception"
]
#: (method, request, response) → the response to send.
ResponseHook = Callable[[str, Any, Any], Any]


class _RewritingContext:
    """A servicer context whose abort() goes through a rewrite."""

    def __init__(self, context: Any, rewrite: Rewrite) -> None:
        self._context = context
        self._rewrite = rewrite

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        result = self._rewrite(code, details, tuple(trailing_metadata or ()))
        if isinstance(result, Exception):
            raise result  # escapes to grpc itself: UNKNOWN, with the text
        await self._context.abort(*result)


def _wrap(inner: object, method: str, rewrite: Rewrite, hook: ResponseHook | None) -> Any:
    async def handler(self: object, request: Any, context: Any) -> Any:
        response = await getattr(inner, method)(request, _RewritingContext(context, rewrite))
        return hook(method, request, response) if hook else response

    return handler


def _keep(
    code: grpc.StatusCode, message: str, trailers: Trailers
) -> tuple[grpc.StatusCode, str, Trailers]:
    return code, message, trailers


def wire_servicers(
    driver: StorageDriver, rewrite: Rewrite = _keep, hook: ResponseHook | None = None
) -> tuple[Any, Any]:
    """Raw StorageDriver and ConformanceFixture servicers over ``driver``."""
    inner_driver, inner_fixture = DriverServicer(driver), FixtureServicer(driver)
    driver_methods = driver_pb2.DESCRIPTOR.services_by_name["StorageDriver"].methods_by_name
    fixture_methods = driver_pb2.DESCRIPTOR.services_by_name["ConformanceFixture"].methods_by_name
    driver_cls = type(
        "WireDriverServicer",
        (driver_pb2_grpc.StorageDriverServicer,),
        {m: _wrap(inner_driver, m, rewrite, hook) for m in driver_methods},
    )
    fixture_cls = type(
        "WireFixtureServicer",
        (driver_pb2_grpc.ConformanceFixtureServicer,),
        {m: _wrap(inner_fixture, m, rewrite, hook) for m in fixture_methods},
    )
    return driver_cls(), fixture_cls()


class BareServer:
    """A grpc.aio server with only the driver services: no health, no reflection."""

    def __init__(self, address: str) -> None:
        self._server = grpc.aio.server()
        self._address = address

    def add_service(
        self, name: str, servicer: object, registrar: Callable[[Any, Any], None]
    ) -> None:
        registrar(servicer, self._server)

    async def start(self) -> None:
        self._server.add_insecure_port(self._address)
        await self._server.start()

    async def stop(self, grace: float | None = None) -> None:
        await self._server.stop(grace)


async def start_wire_server(
    driver: StorageDriver,
    address: str,
    *,
    rewrite: Rewrite = _keep,
    hook: ResponseHook | None = None,
    fixture: bool = True,
    bare: bool = False,
) -> Server | BareServer:
    """Serve ``driver`` through raw servicers (the fixture whatever it advertises)."""
    driver_servicer, fixture_servicer = wire_servicers(driver, rewrite, hook)
    server: Server | BareServer = BareServer(address) if bare else Server(address, grace_seconds=0)
    server.add_service(
        DRIVER_SERVICE, driver_servicer, driver_pb2_grpc.add_StorageDriverServicer_to_server
    )
    if fixture:
        server.add_service(
            FIXTURE_SERVICE,
            fixture_servicer,
            driver_pb2_grpc.add_ConformanceFixtureServicer_to_server,
        )
    await server.start()
    return server


# --- the rewrites -----------------------------------------------------------------


def internal_on_bad_input(code: grpc.StatusCode, message: str, trailers: Trailers) -> Any:
    """Bad input reaches code that was never meant to see it: INTERNAL."""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return grpc.StatusCode.INTERNAL, "internal error", ()
    return code, message, trailers


def crash_on_bad_input(code: grpc.StatusCode, message: str, trailers: Trailers) -> Any:
    """An unhandled exception: grpc answers UNKNOWN with the exception's text."""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return KeyError(f'Traceback (most recent call last): File "driver.py", line 42: {message}')
    return code, message, trailers


def no_details(code: grpc.StatusCode, message: str, trailers: Trailers) -> Any:
    """Bare status codes: no google.rpc.Status, no message."""
    return code, "", ()


_WRONG = {
    grpc.StatusCode.NOT_FOUND: grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS: grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED: grpc.StatusCode.INTERNAL,
}


def wrong_codes(code: grpc.StatusCode, message: str, trailers: Trailers) -> Any:
    """A driver that maps its array's errors to the wrong canonical codes."""
    return _WRONG.get(code, code), message, trailers if code not in _WRONG else ()


def reversed_decisions(method: str, request: Any, response: Any) -> Any:
    """CanHandle answers out of request order."""
    if method == "CanHandle":
        return driver_pb2.CanHandleResponse(decisions=list(response.decisions)[::-1])
    return response
