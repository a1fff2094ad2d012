"""``python -m tests.chaos``: one chaos run; exit 0 when every invariant held.

Exit status: 0 no violation, 1 violations, 2 the harness could not run (no
verdict), 130 interrupted. Every process the run started is stopped on the way
out, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tests.chaos.knobs import DEFAULT
from tests.chaos.report import Report
from tests.chaos.runner import Options, run


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos",
        description="Random create/revert/delete on the real vmsnap stack while its "
        "processes are SIGKILLed; checks the invariants at the end.",
    )
    parser.add_argument("--ops", type=int, default=200, help="operations in all (default 200)")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs in all (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every choice (default 1)")
    parser.add_argument("--vms", type=int, default=DEFAULT.vms, help="VMs (default %(default)s)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON")
    parser.add_argument(
        "--qemu", action="store_true", help="the QEMU agent instead of the sim (where installed)"
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="host replicas (more than one: --db postgres)"
    )
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the catalog: SQLite, or a PostgreSQL server of the run's own",
    )
    parser.add_argument("--home", type=Path, help="run directory (default: a new one in /tmp)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the run directory even when the run passed"
    )
    args = parser.parse_args(argv)
    if args.ops < 1 or args.kills < 0 or args.vms < 1:
        parser.error("--ops and --vms must be at least 1, --kills at least 0")
    if args.replicas < 1 or (args.replicas > 1 and args.db != "postgres"):
        parser.error("--replicas: at least 1; more than one share a catalog: add --db postgres")
    return args


async def _main(options: Options, command: str) -> Report:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run(options, command)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = Options(
        ops=args.ops,
        kills=args.kills,
        seed=args.seed,
        hypervisor="qemu" if args.qemu else "sim",
        replicas=args.replicas,
        db=args.db,
        home=args.home,
        keep=args.keep,
        knobs=replace(DEFAULT, vms=args.vms),
    )
    command = shlex.join(["python", "-m", "tests.chaos", *(sys.argv[1:] if argv is None else argv)])
    try:
        report = asyncio.run(_main(options, command))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("chaos run interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    print(report.table(), flush=True)
    if args.json is not None:
        report.write_json(args.json)
    if report.error:
        return 2
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
