"""Profile the create path: ``python -m bench.profile [--ops N] [--out DIR]``.

Runs the create benchmark's stack (sim agent, two no-op drivers, the host)
with every process under cProfile, drives ``--ops`` creates at concurrency 64
(plus 100 at concurrency 1), stops the processes and writes, per process, the
top functions by own time and by cumulative time (``<process>.txt``) to ``--out``
(default ``bench/profiles``). cProfile adds its own overhead (about 2x CPU):
read the shares, not the absolute times.
"""

from __future__ import annotations

import argparse
import io
import pstats
import sys
from collections.abc import Callable
from pathlib import Path

from bench import create, stack

ROOT = Path(__file__).resolve().parent


def _wrap(directory: Path) -> Callable[[str, list[str]], list[str]]:
    def wrap(name: str, argv: list[str]) -> list[str]:
        out = str(directory / f"{name}.prof")
        if argv[0] == sys.executable and argv[1] == "-m":
            return [sys.executable, "-m", "cProfile", "-o", out, *argv[1:]]
        return [sys.executable, "-m", "cProfile", "-o", out, *argv]  # a console script

    return wrap


def summarize(prof: Path, top: int = 45) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(str(prof), stream=buf)
    stats.strip_dirs()
    buf.write(f"# {prof.stem}: top {top} by own time (tottime)\n")
    stats.sort_stats("tottime").print_stats(top)
    buf.write(f"\n# {prof.stem}: top {top} by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--ops", type=int, default=1500, help="creates at concurrency 64")
    parser.add_argument("--out", type=Path, default=ROOT / "profiles")
    parser.add_argument(
        "--c1-only",
        action="store_true",
        help="only --ops creates at concurrency 1 (files <process>-c1-cprofile.txt)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with stack.workdir(base="/dev/shm" if Path("/dev/shm").is_dir() else "/tmp") as tmp:
        stack.WRAP = _wrap(tmp)
        try:
            concurrencies = (1,) if args.c1_only else (1, 64)
            totals = {1: args.ops} if args.c1_only else {1: 100, 64: args.ops}
            results = create.measure_create(
                quick=True, concurrencies=concurrencies, base=str(tmp), totals=totals
            )
        finally:
            stack.WRAP = None
        for r in results:
            s = create.summarize(r)
            print(
                f"concurrency {r.concurrency}: p50 {s['p50']:.1f} ms, {s['rate']:.0f} ops/s "
                f"(under cProfile); CPU ms per create: "
                + ", ".join(f"{k} {v:.2f}" for k, v in r.cpu_ms_per_op.items())
            )
        for prof in sorted(tmp.rglob("*.prof")):
            text = summarize(prof)
            stem = f"{prof.stem}-c1-cprofile" if args.c1_only else prof.stem
            (args.out / f"{stem}.txt").write_text(text)
            print(f"wrote {args.out / stem}.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
