"""``vmsnap-host``: the host process.

    vmsnap-host --listen unix:///run/vmsnap/host.sock --db sqlite:///var/lib/vmsnap/host.db \
        --config /etc/vmsnap/host.toml

Replicas share one PostgreSQL catalog, each with its own ``--instance-id``::

    vmsnap-host --listen unix:///run/vmsnap/host-1.sock --instance-id host-1 \
        --db postgresql+psycopg://vmsnap@/vmsnap?host=/run/postgresql

On unix sockets and loopback the host serves as before: authentication is off
unless the configuration's ``[auth] required = true``. It listens on any other
address only with TLS (``--tls-cert``/``--tls-key``, ``--tls-client-ca`` for
client certificates) and then always requires authentication, with principals
configured in ``[auth]``; see :mod:`vmsnap_host.config` and
:mod:`vmsnap_host.auth.settings`, and the README's "Deploying securely".
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import socket
import sys
from collections.abc import Sequence

from prometheus_client import REGISTRY

from vmsnap_host import tracing
from vmsnap_host.app import HostApp
from vmsnap_host.config import Config, ConfigError, load
from vmsnap_host.metrics import HostCollector
from vmsnap_host.store.store import CatalogUnavailable, database_url
from vmsnap_sdk import configure_logging, event_loop
from vmsnap_sdk.metrics import check_address
from vmsnap_sdk.serve import (
    add_server_arguments,
    loop_or_exit,
    open_metrics,
    server_tls_from_args,
)


def _loopback_or_unix(address: str) -> bool:
    if address.startswith("unix:"):
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vmsnap-host", description="vmsnap host")
    add_server_arguments(parser)
    parser.add_argument(
        "--db",
        required=True,
        metavar="URL",
        help="the catalog: sqlite:///PATH (or a file path; one host) or "
        "postgresql+psycopg://USER@HOST/DB (replicas share it)",
    )
    parser.add_argument(
        "--config", metavar="FILE.toml", help="settings, drivers and agents (optional)"
    )
    parser.add_argument(
        "--instance-id",
        default=socket.gethostname(),
        help="owner name of the per-VM leases (unique per replica; default: the hostname)",
    )
    args = parser.parse_args(argv)
    try:
        database_url(args.db)
    except ValueError as exc:
        parser.error(str(exc))
    if args.metrics_listen:
        try:
            check_address(args.metrics_listen)
        except ValueError as exc:
            parser.error(str(exc))
    args.remote = [a for a in args.listen if not _loopback_or_unix(a)]
    if args.remote and not (args.tls_cert and args.tls_key):
        parser.error(
            f"--listen {args.remote[0]}: off loopback the host serves only with TLS "
            "(--tls-cert, --tls-key; --tls-client-ca for client certificates)"
        )
    return args


async def _serve(args: argparse.Namespace, config: Config) -> None:
    app = HostApp(
        config,
        args.db,
        args.listen,
        owner=args.instance_id,
        tls=server_tls_from_args(args),
        grace_seconds=args.grace,
        require_auth=bool(args.remote),
    )
    addresses = await app.start()
    metrics = open_metrics(args.metrics_listen)
    collector = None
    line: dict[str, object] = {"serving": addresses}
    if metrics is not None:
        collector = HostCollector(asyncio.get_running_loop(), app.metrics_sample)
        REGISTRY.register(collector)
        line["metrics"] = metrics.url
    # One line a supervisor (vmsnap up) or a test parses for the bound addresses.
    print(json.dumps(line), flush=True)
    try:
        await app.server.serve_until_signal()
    finally:
        if metrics is not None:
            metrics.close()
        if collector is not None:
            REGISTRY.unregister(collector)
        await app.stop(0)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = load(args.config) if args.config else Config()
    except ConfigError as exc:
        sys.exit(f"vmsnap-host: {exc}")
    if args.remote and not config.auth.has_credentials:
        sys.exit(
            f"vmsnap-host: --listen {args.remote[0]} requires authentication: configure "
            "principals with tokens or certificates, or a JWT key, in [auth] of --config"
        )
    loop = loop_or_exit(args.event_loop)  # exits saying what to pass when it cannot be had
    tracing.setup()  # before any gRPC server or channel exists
    try:
        event_loop.run(_serve(args, config), loop)
    except CatalogUnavailable as exc:
        sys.exit(f"vmsnap-host: {exc.message}")


if __name__ == "__main__":
    main()
