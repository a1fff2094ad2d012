"""``vmsnap-host``: the host process.

    vmsnap-host --listen unix:///run/vmsnap/host.sock --db /var/lib/vmsnap/host.db \
        --config /etc/vmsnap/host.toml

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

from vmsnap_host.app import HostApp
from vmsnap_host.config import Config, ConfigError, load
from vmsnap_sdk import configure_logging
from vmsnap_sdk.serve import add_server_arguments, server_tls_from_args


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
    parser.add_argument("--db", required=True, metavar="PATH", help="SQLite catalog file")
    parser.add_argument(
        "--config", metavar="FILE.toml", help="settings, drivers and agents (optional)"
    )
    parser.add_argument(
        "--instance-id",
        default=socket.gethostname(),
        help="owner name of the per-VM leases (unique per replica; default: the hostname)",
    )
    args = parser.parse_args(argv)
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
    print(json.dumps({"serving": addresses}), flush=True)
    try:
        await app.server.serve_until_signal()
    finally:
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
    asyncio.run(_serve(args, config))


if __name__ == "__main__":
    main()
