"""``vmsnap-conformance ENDPOINT``: run the suite against a driver and report.

Exit status: 0 when no check failed, 1 when one did, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from vmsnap_sdk._tls import ClientTLS
from vmsnap_sdk.conformance._registry import CATEGORIES, all_checks, select
from vmsnap_sdk.conformance._report import to_json, to_junit, to_text, write
from vmsnap_sdk.conformance._runner import run_suite
from vmsnap_sdk.conformance._session import Params


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmsnap-conformance",
        description="Check that a vmsnap storage driver keeps the vmsnap.driver.v1 contract.",
    )
    parser.add_argument(
        "endpoint", nargs="?", help="gRPC address: unix:///run/driver.sock or host:port"
    )
    parser.add_argument("--tls-ca", metavar="FILE", help="PEM CA that signed the driver's cert")
    parser.add_argument("--tls-cert", metavar="FILE", help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", metavar="FILE", help="PEM client key (mutual TLS)")
    parser.add_argument(
        "--tls-server-name", metavar="NAME", help="expected name in the driver's certificate"
    )
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    parser.add_argument("--junit", metavar="FILE", help="write the report as JUnit XML")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="CATEGORY",
        help=f"run only these categories or check ids (repeatable, or comma-separated): "
        f"{', '.join(CATEGORIES)}",
    )
    parser.add_argument(
        "--params", metavar="FILE", help="JSON with test volumes and driver parameters"
    )
    parser.add_argument(
        "--check-timeout", type=float, default=30.0, help="seconds one check may take"
    )
    parser.add_argument(
        "--list", action="store_true", help="list the checks and exit, without a driver"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    only = tuple(part for item in args.only for part in item.split(",") if part)
    try:
        checks = select(all_checks(), only)
    except ValueError as exc:
        parser.error(str(exc))
    if args.list:
        for c in checks:
            print(f"{c.id:45} {c.description}")
        return 0
    if not args.endpoint:
        parser.error("ENDPOINT is required (or --list)")
    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key:
        if bool(args.tls_cert) != bool(args.tls_key):
            parser.error("--tls-cert and --tls-key go together")
        tls = ClientTLS(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    params = Params.load(args.params) if args.params else Params()
    report = asyncio.run(
        run_suite(
            args.endpoint, tls=tls, params=params, checks=checks, check_timeout=args.check_timeout
        )
    )
    text = to_text(report)
    print(text.splitlines()[-1] if args.quiet else text)
    if args.json:
        write(args.json, to_json(report))
    if args.junit:
        write(args.junit, to_junit(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
