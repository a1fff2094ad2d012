"""``vmsnap-emulator element|ontap --listen HOST:PORT --data DIR --user NAME --password-file F``.

Starts one emulator process. Once it listens it writes ``DATA/listen.json`` and prints the
same object as one JSON line on stdout (``url``, ``port``, ``cert``, ...), so a parent
process can use port 0 and read the real port. SIGTERM stops it gracefully.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .atomicio import set_durable
from .datadir import DataDirBusyError, lock_data_dir
from .httpserver import App, Credentials, parse_listen, serve
from .tlscert import ensure_certificate


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vmsnap-emulator",
        description="Run an emulator of a storage vendor's management API (HTTPS, Basic auth).",
    )
    sub = p.add_subparsers(dest="kind", required=True)
    for kind in ("element", "ontap"):
        s = sub.add_parser(kind, help=f"run the {kind} emulator")
        s.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any)")
        s.add_argument("--data", required=True, type=Path, help="state directory")
        s.add_argument("--user", required=True, help="HTTP Basic user name")
        s.add_argument(
            "--password-file",
            required=True,
            type=Path,
            help="file holding the password (trailing newline ignored)",
        )
        s.add_argument("--log-level", default="WARNING")
        s.add_argument(
            "--no-fsync",
            action="store_true",
            help="skip fsync: state stays atomic and survives a killed process, not a power "
            "loss (tests and benchmarks on busy machines)",
        )
    el = sub.choices["element"]
    el.add_argument("--cluster", default="vmsnap-element", help="cluster name")
    el.add_argument("--max-snapshots-per-volume", type=int, default=32)
    el.add_argument(
        "--async-delay",
        type=float,
        default=0.0,
        help="seconds an async result reports 'running' (tests of polling)",
    )
    on = sub.choices["ontap"]
    on.add_argument("--svm", default="svm0", help="name of the SVM volumes are created on")
    on.add_argument("--cluster", default="vmsnap-ontap", help="cluster name")
    on.add_argument(
        "--job-delay",
        type=float,
        default=0.0,
        help="seconds each job stays queued/running before it executes",
    )
    return p


def _build_app(args: argparse.Namespace, data: Path) -> App:
    if args.kind == "element":
        from .element.app import ElementApp
        from .element.state import ElementState

        state = ElementState(
            data / "element",
            cluster_name=args.cluster,
            max_snapshots_per_volume=args.max_snapshots_per_volume,
            async_delay=args.async_delay,
        )
        return ElementApp(state, data)
    from .ontap.app import OntapApp

    return OntapApp(data, svm=args.svm, cluster=args.cluster, job_delay=args.job_delay)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        listen = parse_listen(args.listen)
        password = args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except (ValueError, OSError) as exc:
        # The message names the file, never its content.
        print(f"vmsnap-emulator: {exc}", file=sys.stderr)
        return 2
    if not password:
        print("vmsnap-emulator: the password file is empty", file=sys.stderr)
        return 2
    set_durable(not args.no_fsync)
    data: Path = args.data.resolve()
    (data / args.kind).mkdir(parents=True, exist_ok=True)
    try:
        # One emulator per data dir: a second process would corrupt the state.
        lock = lock_data_dir(data)
    except DataDirBusyError as exc:
        print(f"vmsnap-emulator: {exc}", file=sys.stderr)
        return 3
    cert, key = ensure_certificate(data, f"vmsnap-{args.kind}-emulator")
    app = _build_app(args, data)
    try:
        serve(
            app,
            listen=listen,
            data_dir=data,
            credentials=Credentials(args.user, password),
            cert=cert,
            key=key,
        )
    finally:
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
