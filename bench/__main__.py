"""Entry point: ``python -m bench [--quick] [--json FILE] [--only NAME ...]``.

Runs every benchmark against real processes, prints a table and writes the
figures as JSON. A benchmark that cannot run here (a missing dependency) is
reported as skipped with the reason; one that fails is reported as failed
and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import (
    catalog,
    create,
    emulator,
    freeze,
    memory,
    peer_libvirt,
    qemu,
    replicas,
    scale,
    skeleton,
)
from bench.floor import Floor, measure_floor, measure_fsync
from bench.report import Report
from bench.stats import median, percentile

SECTIONS = (
    "floor",
    "create",
    "create_mem",
    "skeleton",
    "scale",
    "freeze",
    "catalog",
    "replicas",
    "emulator",
    "qemu",
    "memory",
    "peer_libvirt",
)


def _floor(quick: bool, report: Report, floor: Floor) -> None:
    report.add("floor_latency_ms", floor.latency_ms, "ms", note="median unary round trip")
    report.add("floor_rate_rps", floor.rate_rps, "rps", note="64 concurrent callers")
    report.add("disk_fsync_ms", measure_fsync(), "ms", note="one fsync in /tmp, median of 100")


def _create(quick: bool, report: Report, floor: Floor) -> None:
    results = {r.concurrency: r for r in create.measure_create(quick, floor_beside=True)}
    for c, r in results.items():
        s = create.summarize(r)
        report.add(f"create_c{c}_p50_ms", s["p50"], "ms", note=f"concurrency {c}")
        report.add(f"create_c{c}_p99_ms", s["p99"], "ms", note=f"concurrency {c}")
        report.add(f"create_c{c}_ops_per_s", s["rate"], "ops/s", note=f"concurrency {c}")
    one, many = create.summarize(results[1]), create.summarize(results[64])
    report.add("create_p50_ms", one["p50"], "ms", note="concurrency 1")
    report.add("create_p99_ms", one["p99"], "ms", note="concurrency 1")
    report.add("create_ops_per_s", many["rate"], "ops/s", note="concurrency 64, 64 VMs")
    report.add(
        "create_rpcs_critical_path",
        create.RPCS_CRITICAL,
        "rpcs",
        note="Create(wait), Quiesce, Take‖, Unquiesce; DescribeVM beside a commit "
        f"(before issue 16: {create.RPCS_CRITICAL_BEFORE})",
    )
    drivers = results[1].driver_calls_per_op
    client = results[1].client_calls_per_op
    measured = client + 3 + drivers.get("can_handle", 0) + drivers.get("take", 0)
    report.add(
        "create_rpcs_per_op",
        measured,
        "rpcs",
        note=f"measured: {client:g} client, 3 agent, {drivers.get('can_handle', 0):g} CanHandle "
        f"(cached after a VM's first take), {drivers.get('take', 0):g} Take "
        f"(before issue 16: {create.RPCS_PER_OP_BEFORE})",
    )
    beside = median(results[1].floor_ms)
    report.add(
        "floor_beside_latency_ms",
        beside,
        "ms",
        note=f"the floor's round trip, {create.FLOOR_BESIDE} before each c=1 create",
    )
    report.add(
        "latency_ratio",
        one["p50"] / (beside * create.RPCS_CRITICAL_BEFORE),
        "x",
        goal="<= 1.5",
        note=f"create p50 ÷ (floor latency beside it x {create.RPCS_CRITICAL_BEFORE}, the "
        "RPCs the goal was priced on)",
    )
    report.add(
        "latency_ratio_floor_section",
        one["p50"] / (floor.latency_ms * create.RPCS_CRITICAL_BEFORE),
        "x",
        note="the same against the floor section's round trip (measured before, apart)",
    )
    report.add(
        "latency_ratio_per_rpc",
        one["p50"] / (beside * create.RPCS_CRITICAL),
        "x",
        note=f"create p50 ÷ (floor latency beside it x {create.RPCS_CRITICAL}, today's "
        "critical path)",
    )
    report.add(
        "throughput_ratio",
        many["rate"] / (floor.rate_rps / create.RPCS_PER_OP_BEFORE),
        "x",
        goal=">= 0.5",
        note=f"ops/s at 64 ÷ (floor rate ÷ {create.RPCS_PER_OP_BEFORE}, the RPCs the goal was "
        "priced on)",
    )
    report.add(
        "throughput_ratio_per_rpc",
        many["rate"] / (floor.rate_rps / create.RPCS_PER_OP),
        "x",
        note=f"ops/s at 64 ÷ (floor rate ÷ {create.RPCS_PER_OP}, today's RPCs per create)",
    )
    report.add(
        "agent_describe_ms",
        results[1].agent_describe_ms,
        "ms",
        note="DescribeVM straight to the sim agent",
    )
    report.add(
        "agent_freeze_thaw_ms",
        results[1].agent_freeze_thaw_ms,
        "ms",
        note="Quiesce + Unquiesce straight to the sim agent (each a copy into its freeze page)",
    )


def _skeleton(quick: bool, report: Report, floor: Floor) -> None:
    """A create's shape with no logic (bench/skeleton.py), on disk and in /dev/shm as
    ``create`` and ``create_mem`` run: the goal's ratios for Python's floor of the
    design, and vmsnap's figures over it when those sections ran."""
    bases = [("skeleton", "/tmp")]
    if Path("/dev/shm").is_dir():
        bases.append(("skeleton_mem", "/dev/shm"))
    for prefix, base in bases:
        results = {r.concurrency: r for r in skeleton.measure(quick, base=base)}
        one, many = results[1], results[64]
        p50 = median(one.latencies_ms)
        where = "on disk (/tmp)" if base == "/tmp" else "in /dev/shm"
        report.add(f"{prefix}_c1_p50_ms", p50, "ms", note=f"concurrency 1, state {where}")
        report.add(f"{prefix}_c64_ops_per_s", many.ops_per_s, "ops/s", note="concurrency 64")
        report.add(
            f"{prefix}_cpu_ms_per_create",
            one.cpu_ms_per_op,
            "ms",
            note="its four processes together, concurrency 1",
        )
        report.add(
            f"{prefix}_latency_ratio",
            p50 / (floor.latency_ms * create.RPCS_CRITICAL_BEFORE),
            "x",
            note="latency_ratio of the skeleton: Python's floor for this design",
        )
        report.add(
            f"{prefix}_throughput_ratio",
            many.ops_per_s / (floor.rate_rps / create.RPCS_PER_OP_BEFORE),
            "x",
            note="throughput_ratio of the skeleton",
        )
        ours, p50_name, rate_name = (
            ("create", "create_c1_p50_ms", "create_c64_ops_per_s")
            if prefix == "skeleton"
            else ("create_mem", "create_mem_p50_ms", "create_mem_ops_per_s")
        )
        vmsnap_p50 = report.metrics.get(p50_name)
        vmsnap_rate = report.metrics.get(rate_name)
        if vmsnap_p50 is not None and vmsnap_rate is not None:
            report.add(
                f"{ours}_over_{prefix}_p50",
                vmsnap_p50.value / p50,
                "x",
                note=f"vmsnap's create p50 ÷ the skeleton's, concurrency 1, state {where}",
            )
            report.add(
                f"{prefix}_over_{ours}_rate",
                many.ops_per_s / vmsnap_rate.value,
                "x",
                note="the skeleton's creates/s ÷ vmsnap's, concurrency 64",
            )


def _create_in_memory(quick: bool, report: Report, floor: Floor) -> None:
    """The same create benchmark with the catalog and the agent's state in /dev/shm:
    what the stack costs when an fsync is free (an upper bound for a fast disk)."""
    if not Path("/dev/shm").is_dir():
        raise qemu.Skipped("no /dev/shm on this machine")
    results = {
        r.concurrency: r for r in create.measure_create(quick, base="/dev/shm", floor_beside=True)
    }
    one, many = create.summarize(results[1]), create.summarize(results[64])
    report.add("create_mem_p50_ms", one["p50"], "ms", note="concurrency 1, state in /dev/shm")
    report.add("create_mem_p99_ms", one["p99"], "ms", note="concurrency 1, state in /dev/shm")
    report.add("create_mem_ops_per_s", many["rate"], "ops/s", note="concurrency 64, /dev/shm")
    report.add(
        "latency_ratio_mem",
        one["p50"] / (median(results[1].floor_ms) * create.RPCS_CRITICAL_BEFORE),
        "x",
        note="latency_ratio without fsync costs (the floor beside it)",
    )
    report.add(
        "throughput_ratio_mem",
        many["rate"] / (floor.rate_rps / create.RPCS_PER_OP_BEFORE),
        "x",
        note="throughput_ratio without fsync costs",
    )
    for name, ms in results[64].cpu_ms_per_op.items():
        report.add(f"cpu_ms_per_create_{name}", ms, "ms", note="CPU per create at concurrency 64")


def _scale(quick: bool, report: Report, floor: Floor) -> None:
    r = scale.measure_scale(quick)
    for c, rate in r.rates.items():
        report.add(f"scale_c{c}_ops_per_s", rate, "ops/s", note=f"{c} VMs in parallel, /dev/shm")
        report.add(f"scale_c{c}_p50_ms", r.p50_ms[c], "ms", note=f"{c} VMs in parallel")
        report.add(
            f"scale_c{c}_cpu_ms_per_create",
            r.cpu_ms[c],
            "ms",
            note="CPU of host + agent + 2 drivers per create",
        )
    report.add(
        f"scale_{r.vms_defined}vms_c64_ops_per_s",
        r.rate_many_vms,
        "ops/s",
        note=f"64 in parallel with {r.vms_defined} VMs defined",
    )
    report.add(f"scale_{r.vms_defined}vms_c64_p50_ms", r.p50_ms_many_vms, "ms")
    report.add(
        f"scale_{r.vms_defined}vms_c64_cpu_ms_per_create",
        r.cpu_ms_many_vms,
        "ms",
        note="CPU of host + agent + 2 drivers per create",
    )
    report.add(
        "scale_cpu_growth_c256",
        r.cpu_ms[256] / r.cpu_ms[1],
        "x",
        note="CPU per create at 256 in parallel ÷ at 1 (how cost grows with concurrency)",
    )
    report.add(
        "scale_cpu_growth_many_vms",
        r.cpu_ms_many_vms / r.cpu_ms[64],
        "x",
        note=f"CPU per create at 64 in parallel: {r.vms_defined} VMs defined ÷ 256",
    )
    report.add(
        "scale_history_c1_p50_ms",
        r.p50_ms_history,
        "ms",
        note=f"one at a time on a VM with {r.history} removed snapshots",
    )
    report.add("scale_no_history_c1_p50_ms", r.p50_ms_no_history, "ms", note="on a new VM")
    report.add(
        "scale_cpu_growth_history",
        r.cpu_ms_history / r.cpu_ms_no_history,
        "x",
        note=f"CPU per create, a VM with {r.history} removed snapshots ÷ a new VM (alternated)",
    )
    report.add(
        "host_rss_mib_per_10k_ops",
        r.rss_mib_per_10k,
        "MiB",
        note=f"host RSS growth over {r.operations} creates, per 10k; {r.rss_mib_end:.0f} MiB "
        "at the end",
    )


def _freeze(quick: bool, report: Report, floor: Floor) -> None:
    results = freeze.measure_freeze(quick)
    for r in results:
        d = int(r.delay_ms)
        report.add(f"freeze_host_ms_d{d}", r.host_ms, "ms", note=f"two drivers of {d} ms")
        report.add(f"freeze_sequential_ms_d{d}", r.sequential_ms, "ms", note="one after the other")
    report.add(
        "freeze_ratio",
        max(r.host_ms / r.delay_ms for r in results),
        "x",
        goal="<= 1.1",
        note="host freeze window ÷ D, worst over D = 100, 300 ms",
    )
    report.add(
        "freeze_ratio_sequential",
        max(r.sequential_ms / r.delay_ms for r in results),
        "x",
        note="baseline: quiesce, take A, take B, unquiesce",
    )
    api = freeze.measure_freeze_api(quick)
    report.add(
        "freeze_api_round_trip_ms",
        api.api_ms,
        "ms",
        note="FreezeVM + ThawVM through the host (sim agent, overlay), median",
    )
    report.add(
        "freeze_api_agent_ms",
        api.agent_ms,
        "ms",
        note="baseline: Quiesce + Unquiesce on the agent directly, median",
    )


def _catalog(quick: bool, report: Report, floor: Floor) -> None:
    reads, restart = catalog.measure_catalog(quick)
    report.add("catalog_list_p50_ms", median(reads.list_ms), "ms", note="100k snapshots, 10k VMs")
    report.add("catalog_list_p99_ms", percentile(reads.list_ms, 99), "ms", goal="<= 5")
    report.add("catalog_get_p50_ms", median(reads.get_ms), "ms")
    report.add("catalog_get_p99_ms", percentile(reads.get_ms, 99), "ms", goal="<= 5")
    if restart.left:
        raise RuntimeError(f"{restart.left} operations were still unfinished after the restart")
    report.add(
        "restart_resolve_s",
        restart.resolve_s,
        "s",
        goal="<= 5",
        note=f"start → serving, {restart.in_flight} interrupted takes rolled back",
    )
    report.add("restart_empty_s", restart.empty_start_s, "s", note="same start, nothing to resolve")


def _replicas(quick: bool, report: Report, floor: Floor) -> None:
    for f in replicas.measure(quick):
        report.add(f"catalog_{f.backend}_list_p50_ms", f.list_p50_ms, "ms")
        report.add(
            f"catalog_{f.backend}_list_p99_ms",
            f.list_p99_ms,
            "ms",
            goal="<= 5",
            note="ListVMSnapshots of one VM among 100k snapshots (20k with --quick)",
        )
        report.add(f"catalog_{f.backend}_get_p99_ms", f.get_p99_ms, "ms")
        for n, rate in f.creates_per_s.items():
            report.add(
                f"creates_{f.backend}_{n}_replicas_per_s",
                rate,
                "ops/s",
                note=f"{replicas.CONCURRENCY} callers over {n} replica(s), shared 2 cores",
            )


def _emulator(quick: bool, report: Report, floor: Floor) -> None:
    try:
        import vmsnap_emulators  # noqa: F401 - optional distribution
    except ImportError as exc:
        raise qemu.Skipped(f"vmsnap_emulators is not installed ({exc}); run make venv") from exc
    r = emulator.measure_emulator(quick)
    report.add(f"element_snapshot_ms_{r.small_mib}mib", median(r.small_ms), "ms")
    report.add(f"element_snapshot_ms_{r.large_mib}mib", median(r.large_ms), "ms")
    report.add(
        "element_snapshot_size_ratio",
        r.ratio,
        "x",
        goal="<= 1.5",
        note=f"CreateSnapshot, {r.large_mib} MiB ÷ {r.small_mib} MiB written",
    )


def _qemu(quick: bool, report: Report, floor: Floor) -> None:
    r = qemu.measure_qemu(quick)
    report.add(
        "qemu_freeze_ms",
        r.freeze_ms,
        "ms",
        note="3-disk VM, agent alone: Quiesce → Unquiesce, guest freeze + overlay, median",
    )
    report.add(
        "qemu_freeze_with_drivers_ms",
        r.freeze_with_drivers_ms,
        "ms",
        note="3-disk VM through the host: freeze window recorded on the snapshot, median",
    )
    goals = {"qemu_freeze_overlay_ms": "<= 50"}  # issue 16's acceptance
    for name, value in sorted(r.figures.items()):
        if name not in ("qemu_freeze_ms", "qemu_freeze_with_drivers_ms"):
            report.add(
                name,
                value,
                "ms",
                goal=goals.get(name, ""),
                note="per quiesce method (bench/qemu.py)",
            )
    ga, guest = r.figures.get("qemu_ga_freeze_thaw_ms"), r.figures.get("qemu_freeze_guest_ms")
    if ga is not None and guest is not None:
        report.add(
            "qemu_freeze_guest_over_ga_ms",
            guest - ga,
            "ms",
            goal="<= 50",
            note="qemu_freeze_guest_ms - qemu_ga_freeze_thaw_ms: what the agent adds to qemu-ga",
        )


def _memory(quick: bool, report: Report, floor: Floor) -> None:
    """The pause window of a memory snapshot against the guest's RAM size."""
    figures, note = memory.measure_memory(quick)
    for name, value in sorted(figures.items()):
        if name == "memory_background_snapshot":
            report.add(name, value, "bool", note=note)
        elif name.endswith("_state_mib"):
            report.add(name, value, "MiB", note="state file written (bench/memory.py)")
        else:
            report.add(name, value, "ms", note="half the RAM filled (bench/memory.py)")


def _peer_libvirt(quick: bool, report: Report, floor: Floor) -> None:
    """libvirt's quiesced atomic disk-only snapshot + commit/pivot of the same guest."""
    r = peer_libvirt.measure_peer(quick)
    f = r.figures
    peer = f"one-disk guest, {r.versions}, session libvirtd"
    notes = {
        "peer_libvirt_boot_s": ("s", "", "the guest under libvirt: define → qemu-ga answers"),
        "peer_libvirt_snapshot_ms": (
            "ms",
            "",
            "virDomainSnapshotCreateXML QUIESCE|DISK_ONLY|ATOMIC|NO_METADATA",
        ),
        "peer_libvirt_commit_pivot_ms": ("ms", "", "active block commit, then pivot"),
        "peer_libvirt_take_merge_ms": ("ms", "", f"snapshot + commit/pivot ({peer})"),
        "peer_vmsnap_take_merge_ms": (
            "ms",
            "",
            "CreateVMSnapshot(wait) through the host, quiesce REQUIRED, 1.5 s idle before",
        ),
        "peer_take_merge_ratio": ("x", "<= 1", "vmsnap ÷ libvirt, whole take + merge back"),
        "peer_libvirt_frozen_ms": (
            "ms",
            "",
            "freeze answered → thaw sent, from libvirtd's qemu_agent debug log",
        ),
        "peer_libvirt_hook_frozen_ms": (
            "ms",
            "",
            "the guest's fsfreeze hook stamps (10 ms resolution; hook run included)",
        ),
    }
    for name, value in f.items():
        if name in notes:
            unit, goal, note = notes[name]
        elif name.startswith("peer_frozen_ratio_"):
            method = name.removeprefix("peer_frozen_ratio_")
            unit, goal = "x", "<= 1"
            note = f"vmsnap ({method}) ÷ libvirt, freeze answered → thaw sent"
        elif name.startswith("peer_hook_frozen_ratio_"):
            method = name.removeprefix("peer_hook_frozen_ratio_")
            unit, goal = "x", "<= 1"
            note = f"vmsnap ({method}) ÷ libvirt, from the guest hook's stamps"
        elif name.startswith("peer_vmsnap_frozen_"):
            unit, goal, note = "ms", "", "freeze answered → thaw sent, from the agent's log"
        elif name.startswith("peer_vmsnap_hook_frozen_"):
            unit, goal, note = "ms", "", "the guest's fsfreeze hook stamps"
        else:
            unit, goal, note = "ms", "", "the agent alone, Quiesce → Unquiesce round trip"
        report.add(name, value, unit, goal=goal, note=note)


RUNNERS: dict[str, Callable[[bool, Report, Floor], None]] = {
    "floor": _floor,
    "create": _create,
    "create_mem": _create_in_memory,
    "skeleton": _skeleton,
    "scale": _scale,
    "freeze": _freeze,
    "catalog": _catalog,
    "replicas": _replicas,
    "emulator": _emulator,
    "qemu": _qemu,
    "memory": _memory,
    "peer_libvirt": _peer_libvirt,
}
SKIP_NAMES = {
    "create": [
        "create_p50_ms",
        "create_p99_ms",
        "create_ops_per_s",
        "latency_ratio",
        "throughput_ratio",
    ],
    "create_mem": ["latency_ratio_mem", "throughput_ratio_mem"],
    "freeze": ["freeze_ratio", "freeze_ratio_sequential"],
    "catalog": ["catalog_list_p99_ms", "catalog_get_p99_ms", "restart_resolve_s"],
    "emulator": ["element_snapshot_size_ratio"],
    "qemu": ["qemu_freeze_ms", "qemu_freeze_with_drivers_ms"],
    "memory": ["memory_256mib_live_pause_ms"],
    "peer_libvirt": ["peer_take_merge_ratio", "peer_frozen_ratio_take"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples: ≤ 90 s in all")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="run only these"
    )
    args = parser.parse_args(argv)

    report = Report()
    started = time.monotonic()
    floor = measure_floor(args.quick)
    print(f"# floor: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    failed = False
    for name in SECTIONS:
        if name not in args.only:
            continue
        section = time.monotonic()
        try:
            RUNNERS[name](args.quick, report, floor)
        except qemu.Skipped as exc:
            for metric in SKIP_NAMES.get(name, [name]):
                report.skip(metric, str(exc))
        except Exception as exc:  # noqa: BLE001 - report it and go on with the others
            failed = True
            traceback.print_exc()
            for metric in SKIP_NAMES.get(name, [name]):
                report.skip(metric, f"FAILED: {type(exc).__name__}: {exc}")
        if name != "floor":  # measured first, above
            print(f"# {name}: {time.monotonic() - section:.1f} s", file=sys.stderr, flush=True)
    report.elapsed_s = time.monotonic() - started
    report.quick = args.quick

    print(report.table())
    if args.json:
        report.write(args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
