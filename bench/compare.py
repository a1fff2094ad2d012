"""This tree's create path against another tree's, alternately, in one run:
``python -m bench.compare BASE [--runs N] [--creates N] [--concurrency C]
[--base-dir DIR]``.

``BASE`` is another checkout of vmsnap (``git worktree add /tmp/base <commit>``).
Each run starts the create benchmark's stack (sim agent, two no-op drivers, the
host) once with BASE's code first on ``PYTHONPATH`` and once with this tree's,
alternating, and measures creates at ``--concurrency`` (64: as ``create_c64``
does; 1: as ``create_c1`` does, the latency goal's figure), ``--creates`` of
them after one warm-up create per VM: creates/s, p50 and the CPU each process
used per create. The machine is shared and noisy, so the runs
alternate and the report gives medians and this tree ÷ BASE.

The bench's own code (this module, bench.create, bench.stack) is this tree's in
both; the host, SDK, agent and drivers are each tree's own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.stats import median

ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ("host/src", "sdk/src", "agent/src")

_ONE = """
import json, sys
from bench import create
from bench.stats import median
c = int(sys.argv[3])
(r,) = create.measure_create(True, concurrencies=(c,), base=sys.argv[1], totals={c: int(sys.argv[2])})
print(json.dumps({"ops_per_s": r.ops_per_s, "p50_ms": median(r.latencies_ms), "cpu": r.cpu_ms_per_op}))
"""


def _paths(tree: Path) -> str:
    return os.pathsep.join([*(str(tree / p) for p in _PACKAGES), str(ROOT)])


def measure(tree: Path, creates: int, base_dir: str, concurrency: int = 64) -> dict[str, float]:
    """One run of the create benchmark on ``tree``'s code."""
    env = {**os.environ, "PYTHONPATH": _paths(tree)}
    out = subprocess.run(
        [sys.executable, "-c", _ONE, base_dir, str(creates), str(concurrency)],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    row = json.loads(out.strip().splitlines()[-1])
    flat = {"ops_per_s": row["ops_per_s"], "p50_ms": row["p50_ms"]}
    flat.update({f"cpu_{k}_ms": v for k, v in row["cpu"].items()})
    return flat


def compare(
    base: Path, runs: int, creates: int, base_dir: str, concurrency: int = 64
) -> dict[str, dict[str, float]]:
    """Medians per tree (``base``, ``this``) of ``runs`` alternating runs."""
    seen: dict[str, list[dict[str, float]]] = {"base": [], "this": []}
    for i in range(runs):
        for name, tree in (("base", base), ("this", ROOT)):
            row = measure(tree, creates, base_dir, concurrency)
            seen[name].append(row)
            print(f"run {i + 1} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
    return {name: {k: median([r[k] for r in rows]) for k in rows[0]} for name, rows in seen.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("base", type=Path, help="another vmsnap checkout")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--creates", type=int, default=960)
    parser.add_argument(
        "--concurrency", type=int, default=64, help="creates in flight (1: the latency goal's)"
    )
    parser.add_argument("--base-dir", default="/tmp", help="where catalogs live (/dev/shm: RAM)")
    args = parser.parse_args(argv)
    if not (args.base / "host" / "src" / "vmsnap_host").is_dir():
        parser.error(f"{args.base} is not a vmsnap checkout (no host/src/vmsnap_host)")
    if not 1 <= args.concurrency <= 256:
        parser.error(f"--concurrency must be between 1 and 256, not {args.concurrency}")
    medians = compare(args.base.resolve(), args.runs, args.creates, args.base_dir, args.concurrency)
    print(
        f"\nmedians of {args.runs} alternating runs "
        f"(c={args.concurrency}, {args.creates} creates each):"
    )
    print(f"{'':24} {'base':>10} {'this':>10} {'this/base':>10}")
    for key in medians["this"]:
        b, t = medians["base"][key], medians["this"][key]
        print(f"{key:24} {b:10.2f} {t:10.2f} {t / b if b else float('nan'):10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
