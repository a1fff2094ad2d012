"""Entry points that serve a driver or an agent as its own process.

``serve_driver(driver, listen=...)`` / ``serve_agent(agent, listen=...)`` run
until SIGTERM or SIGINT; ``start_driver_server`` / ``start_agent_server``
return a started :class:`Server` for tests and embedding. ``run_driver`` parses
the standard command line (``--listen``, TLS, logging) and serves: a vendor's
``main()`` is one line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

from vmsnap_sdk import event_loop, tracing
from vmsnap_sdk._agent_service import AgentServicer
from vmsnap_sdk._driver_service import DriverServicer, FixtureServicer
from vmsnap_sdk._logging import configure_logging
from vmsnap_sdk._proto.driver.v1 import driver_pb2, driver_pb2_grpc
from vmsnap_sdk._proto.hypervisor.v1 import hypervisor_pb2, hypervisor_pb2_grpc
from vmsnap_sdk._server import Server
from vmsnap_sdk._tls import ServerTLS
from vmsnap_sdk._types import Capability
from vmsnap_sdk.agent import HypervisorAgent
from vmsnap_sdk.driver import StorageDriver
from vmsnap_sdk.metrics import MetricsServer, start_metrics_server

DRIVER_SERVICE = driver_pb2.DESCRIPTOR.services_by_name["StorageDriver"].full_name
FIXTURE_SERVICE = driver_pb2.DESCRIPTOR.services_by_name["ConformanceFixture"].full_name
AGENT_SERVICE = hypervisor_pb2.DESCRIPTOR.services_by_name["HypervisorAgent"].full_name


async def start_driver_server(
    driver: StorageDriver,
    listen: str | Sequence[str],
    *,
    tls: ServerTLS | None = None,
    grace_seconds: float = 10.0,
    max_concurrent_rpcs: int | None = 256,
) -> Server:
    """Start serving a driver; the fixture service too when the driver offers it."""
    server = Server(
        listen, tls=tls, grace_seconds=grace_seconds, max_concurrent_rpcs=max_concurrent_rpcs
    )
    server.add_service(
        DRIVER_SERVICE, DriverServicer(driver), driver_pb2_grpc.add_StorageDriverServicer_to_server
    )
    info = await driver.get_info()
    if Capability.CONFORMANCE_FIXTURE in info.capabilities:
        server.add_service(
            FIXTURE_SERVICE,
            FixtureServicer(driver),
            driver_pb2_grpc.add_ConformanceFixtureServicer_to_server,
        )
    await server.start()
    return server


async def start_agent_server(
    agent: HypervisorAgent,
    listen: str | Sequence[str],
    *,
    tls: ServerTLS | None = None,
    grace_seconds: float = 10.0,
    max_concurrent_rpcs: int | None = 256,
) -> Server:
    """Start serving a hypervisor agent."""
    server = Server(
        listen, tls=tls, grace_seconds=grace_seconds, max_concurrent_rpcs=max_concurrent_rpcs
    )
    server.add_service(
        AGENT_SERVICE,
        AgentServicer(agent),
        hypervisor_pb2_grpc.add_HypervisorAgentServicer_to_server,
    )
    await server.start()
    return server


def _announce(server: Server, metrics: MetricsServer | None = None) -> None:
    # One line on stdout that a supervising process (or a test) can parse to
    # learn the bound addresses, e.g. after --listen 127.0.0.1:0 (and the
    # /metrics URL after --metrics-listen 127.0.0.1:0).
    line: dict[str, Any] = {"serving": server.addresses}
    if metrics is not None:
        line["metrics"] = metrics.url
    print(json.dumps(line), flush=True)


def open_metrics(address: str | None) -> MetricsServer | None:
    """Start ``/metrics`` when ``--metrics-listen`` was given; exits with the reason
    when it cannot (a bad or non-loopback address, a port in use)."""
    if not address:
        return None
    try:
        return start_metrics_server(address)
    except (ValueError, OSError) as exc:
        # Printed here: a SystemExit's text would be lost in a server's error log line.
        print(f"cannot serve metrics: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


async def serve_driver(
    driver: StorageDriver,
    listen: str | Sequence[str],
    *,
    tls: ServerTLS | None = None,
    grace_seconds: float = 10.0,
    max_concurrent_rpcs: int | None = 256,
    metrics_listen: str | None = None,
) -> None:
    """Serve a driver until SIGTERM/SIGINT, then shut down gracefully
    (``metrics_listen``: also serve ``/metrics`` there; traces when the ``OTEL_*``
    environment asks, :mod:`vmsnap_sdk.tracing`)."""
    tracing.setup(f"vmsnap-driver.{type(driver).__name__}")
    metrics = open_metrics(metrics_listen)
    server = await start_driver_server(
        driver,
        listen,
        tls=tls,
        grace_seconds=grace_seconds,
        max_concurrent_rpcs=max_concurrent_rpcs,
    )
    _announce(server, metrics)
    try:
        await server.serve_until_signal()
    finally:
        if metrics is not None:
            metrics.close()


async def serve_agent(
    agent: HypervisorAgent,
    listen: str | Sequence[str],
    *,
    tls: ServerTLS | None = None,
    grace_seconds: float = 10.0,
    max_concurrent_rpcs: int | None = 256,
    metrics_listen: str | None = None,
) -> None:
    """Serve an agent until SIGTERM/SIGINT, then shut down gracefully
    (``metrics_listen``: also serve ``/metrics`` there; traces when the ``OTEL_*``
    environment asks, :mod:`vmsnap_sdk.tracing`)."""
    tracing.setup(f"vmsnap-agent.{type(agent).__name__}")
    metrics = open_metrics(metrics_listen)
    server = await start_agent_server(
        agent, listen, tls=tls, grace_seconds=grace_seconds, max_concurrent_rpcs=max_concurrent_rpcs
    )
    _announce(server, metrics)
    try:
        await server.serve_until_signal()
    finally:
        if metrics is not None:
            metrics.close()


def loop_or_exit(choice: str) -> event_loop.LoopFactory:
    """The event loop ``--event-loop`` names, or exit saying what to pass instead."""
    try:
        return event_loop.loop_factory(choice)
    except ValueError as exc:
        sys.exit(str(exc))


def _run_until_stopped(
    main: Coroutine[Any, Any, None], factory: event_loop.LoopFactory
) -> NoReturn:
    """Run a server's main coroutine, then end the process at once.

    ``asyncio.run`` would, after the server stopped, join the default executor's
    worker threads. A driver that runs a vendor's blocking SDK there (through
    ``asyncio.to_thread``) may have a call stuck on an unreachable array, with
    its own timeouts and retries: the process would outlive the grace period the
    server has just honoured by tens of seconds. Work still running after the
    grace is abandoned, as after SIGKILL; the contract's idempotent calls and the
    host's compensation are made for exactly that.
    """
    loop = factory()
    asyncio.set_event_loop(loop)
    code = 0
    try:
        loop.run_until_complete(main)
    except BaseException as exc:  # noqa: BLE001 - reported, then the exit code says it
        fields = {"exc_type": type(exc).__name__}
        if isinstance(exc, OSError):  # e.g. the address is in use: say which
            fields["error"] = str(exc)
        logging.getLogger("vmsnap.server").error("server failed", extra={"fields": fields})
        code = 1
    finally:
        tracing.flush()  # the process ends below without atexit handlers
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every vmsnap server process takes."""
    parser.add_argument(
        "--listen",
        action="append",
        required=True,
        metavar="ADDRESS",
        help="gRPC address to serve on: unix:///path.sock or 127.0.0.1:PORT (repeatable)",
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="PEM server certificate (enables TLS)")
    parser.add_argument("--tls-key", metavar="FILE", help="PEM server key")
    parser.add_argument(
        "--tls-client-ca", metavar="FILE", help="PEM CA for client certificates (mutual TLS)"
    )
    parser.add_argument("--grace", type=float, default=10.0, help="shutdown grace period, seconds")
    parser.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=256,
        help="calls served at once; more are refused",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--metrics-listen",
        metavar="ADDRESS",
        help="serve Prometheus /metrics there: PORT or 127.0.0.1:PORT (loopback only; "
        "off by default), or fd:N, a listening socket a supervisor passed down",
    )
    event_loop.add_argument(parser)


def server_tls_from_args(args: argparse.Namespace) -> ServerTLS | None:
    """ServerTLS from the standard flags; exits with a clear message when half set."""
    if not args.tls_cert and not args.tls_key:
        if args.tls_client_ca:
            sys.exit("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (args.tls_cert and args.tls_key):
        sys.exit("--tls-cert and --tls-key go together")
    return ServerTLS(args.tls_cert, args.tls_key, args.tls_client_ca)


def _parse_server_args(
    description: str,
    argv: Sequence[str] | None,
    extra_arguments: Callable[[argparse.ArgumentParser], None] | None,
) -> argparse.Namespace:
    """The standard flags plus the caller's; logging configured from them."""
    parser = argparse.ArgumentParser(description=description)
    add_server_arguments(parser)
    if extra_arguments is not None:
        extra_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    return args


def run_driver(
    factory: Callable[[argparse.Namespace], StorageDriver],
    *,
    description: str = "vmsnap storage driver",
    argv: Sequence[str] | None = None,
    extra_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Parse the standard flags (plus ``extra_arguments``), build the driver, serve it."""
    args = _parse_server_args(description, argv, extra_arguments)
    loop = loop_or_exit(args.event_loop)
    _run_until_stopped(
        serve_driver(
            factory(args),
            args.listen,
            tls=server_tls_from_args(args),
            grace_seconds=args.grace,
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            metrics_listen=args.metrics_listen,
        ),
        loop,
    )


def run_agent(
    factory: Callable[[argparse.Namespace], HypervisorAgent],
    *,
    description: str = "vmsnap hypervisor agent",
    argv: Sequence[str] | None = None,
    extra_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Parse the standard flags (plus ``extra_arguments``), build the agent, serve it."""
    args = _parse_server_args(description, argv, extra_arguments)
    loop = loop_or_exit(args.event_loop)
    _run_until_stopped(
        serve_agent(
            factory(args),
            args.listen,
            tls=server_tls_from_args(args),
            grace_seconds=args.grace,
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            metrics_listen=args.metrics_listen,
        ),
        loop,
    )
