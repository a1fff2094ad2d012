"""``python -m tests.fuzz [--count N] [--seed S]``: the full fuzz run, on demand.

N requests in all (default 10,000), split like the bounded run: half to the
host, a quarter each to the driver and the agent. Prints what each answered and
its memory before and after; exits 1 on the first INTERNAL, UNKNOWN or hang
(shrunk to a small request), a process that stopped serving, or RSS past +10 %.
"""

from __future__ import annotations

import argparse
import sys

from tests.fuzz.runner import run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz")
    parser.add_argument("--count", type=int, default=10_000, help="requests in all")
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    counts = {"host": args.count // 2, "driver": args.count // 4}
    counts["agent"] = args.count - sum(counts.values())
    try:
        report = run(counts, args.seed)
    except AssertionError as exc:
        print(f"fuzz failed: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
