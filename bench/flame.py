"""Sample the c=1 create path with py-spy: ``python -m bench.flame [--seconds S] [--out DIR]``.

Starts the create benchmark's stack (sim agent, two no-op drivers, the host) on
disk (/tmp, as ``create_c1``), drives creates one at a time for ``--seconds`` and
samples the host and the agent with py-spy meanwhile (100 Hz; ``--idle``: the
samples where a thread waits count too, so the flame graph shows where a
create's wall time goes, not only its CPU). Writes per process a flame graph
(``<process>-c1.svg``), the collapsed stacks (``<process>-c1.txt``: any
flame-graph tool reads them) and a summary of where the samples fall
(``<process>-c1-top.txt``). Needs ``pip install py-spy`` (not a dependency of
the project) and ptrace rights over the processes (root, or
``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
from pathlib import Path

from bench import create, stack
from bench.stats import median

ROOT = Path(__file__).resolve().parent


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def summarize(collapsed: Path, top: int = 40) -> str:
    """Share of samples per leaf frame (own) and per frame anywhere on the stack (total)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        count = int(count_text)
        frames = stack_text.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    out = [f"# {collapsed.stem}: {samples} samples (100 Hz, idle included)", ""]
    out.append(f"## top {top} by own samples")
    out += [f"{100 * n / samples:6.2f} %  {frame}" for frame, n in own.most_common(top)]
    out += ["", f"## top {top} by total samples (the frame anywhere on the stack)"]
    out += [f"{100 * n / samples:6.2f} %  {frame}" for frame, n in total.most_common(top)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flame", description=__doc__)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "profiles")
    args = parser.parse_args(argv)
    spy = _py_spy()
    args.out.mkdir(parents=True, exist_ok=True)
    with stack.workdir() as tmp:
        procs: list[stack.Proc] = []
        try:
            agent, drivers = stack.start_agent_and_drivers(tmp, procs)
            vms = asyncio.run(create.define_vms(agent.address, 1))
            config = stack.HostConfig(
                drivers=[d.address for d in drivers],
                agents=[agent.address],
                settings={"max_snapshots_per_vm": 100_000, "queue_bound": 64},
            )
            host = stack.start_host(tmp, config)
            procs.append(host)
            asyncio.run(create._run(host.address, vms, 1, 50))  # warm up
            spies = []
            for name, proc in (("host", host), ("agent", agent)):
                for fmt, suffix in (("flamegraph", "svg"), ("raw", "txt")):
                    out = args.out / f"{name}-c1.{suffix}"
                    spies.append(
                        subprocess.Popen(
                            [
                                spy,
                                "record",
                                "--pid",
                                str(proc.popen.pid),
                                "--rate",
                                "100",
                                "--duration",
                                str(args.seconds),
                                "--idle",
                                "--nonblocking",
                                "--format",
                                fmt,
                                "--output",
                                str(out),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    )
            latencies: list[float] = []

            async def drive() -> None:
                loop = asyncio.get_running_loop()
                end = loop.time() + args.seconds
                while loop.time() < end:
                    lat, _ = await create._run(host.address, vms, 1, 20)
                    latencies.extend(lat)

            asyncio.run(drive())
            for s in spies:
                s.wait(60)
            print(f"{len(latencies)} creates at c=1, p50 {median(latencies):.1f} ms (sampled)")
        finally:
            for p in reversed(procs):
                p.stop()
    for name in ("host", "agent"):
        collapsed = args.out / f"{name}-c1.txt"
        if collapsed.exists():
            (args.out / f"{name}-c1-top.txt").write_text(summarize(collapsed))
            print(f"wrote {args.out}/{name}-c1.svg, -c1.txt, -c1-top.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
