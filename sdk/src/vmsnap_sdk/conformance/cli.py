"""``vmsnap-conformance ENDPOINT``: run the suite against a driver and report.

Exit status: 0 when no check failed, 1 when one did (or the driver cannot be
reached: one line says so and no check runs), 2 for a usage error. Output cut
short by a closed pipe (``--list | head``) ends quietly with 141, like other
Unix tools killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from vmsnap_sdk._tls import ClientTLS
from vmsnap_sdk.conformance._policy import CAPABILITY_NAMES, apply_policy, parse_capabilities
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
    parser.add_argument(
        "--fail-on-skip",
        action="store_true",
        help="count every skipped check as failed (a CI that must prove every check ran)",
    )
    parser.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="CAPABILITY",
        help=f"fail unless the driver advertises it; checks skipped for it fail "
        f"(repeatable, or comma-separated): {', '.join(CAPABILITY_NAMES)}",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a closed pipe shows up here
        return code
    except BrokenPipeError:
        # The reader went away (``--list | head``): no traceback, and no second
        # error when the interpreter flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    only = tuple(part for item in args.only for part in item.split(",") if part)
    try:
        checks = select(all_checks(), only)
        require = parse_capabilities(args.require)
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
    apply_policy(report, require=require, fail_on_skip=args.fail_on_skip)
    text = to_text(report)
    print(text.splitlines()[-1] if args.quiet else text)
    if args.json:
        write(args.json, to_json(report))
    if args.junit:
        write(args.junit, to_junit(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
