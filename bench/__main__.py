"""Entry point: ``python -m bench [--quick] [--json FILE]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.floor import measure_floor
from bench.report import Report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples: ≤ 90 s in all")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)

    report = Report()
    floor = measure_floor(args.quick)
    report.add("floor_latency_ms", floor.latency_ms, "ms", note="median unary round trip")
    report.add("floor_rate_rps", floor.rate_rps, "rps", note="64 concurrent callers")

    print(report.table())
    if args.json:
        report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
