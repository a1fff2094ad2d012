"""Smoke tests of the benchmarks: the statistics, the report, and one cheap run
against real processes. Nothing here asserts a time: the machine is shared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import stack
from bench.emulator import BLOCK, MIB, _pattern
from bench.freeze import measure_freeze
from bench.report import Report
from bench.stats import median, percentile

ROOT = Path(__file__).resolve().parents[2]


def test_percentile_interpolates() -> None:
    samples = [float(x) for x in range(1, 101)]
    assert percentile(samples, 0) == 1
    assert percentile(samples, 100) == 100
    assert percentile(samples, 50) == pytest.approx(50.5)
    assert percentile(samples, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    assert median([3.0, 1.0, 2.0]) == 2.0
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)


def test_report_goals_table_and_json(tmp_path: Path) -> None:
    report = Report()
    report.add("latency_ratio", 1.2, "x", goal="<= 1.5")
    report.add("throughput_ratio", 0.4, "x", goal=">= 0.5")
    report.add("floor_latency_ms", 0.4, "ms")
    report.skip("qemu_freeze_ms", "no QEMU here")
    assert report.metrics["latency_ratio"].met() is True
    assert report.metrics["throughput_ratio"].met() is False
    assert report.metrics["floor_latency_ms"].met() is None
    table = report.table()
    assert "latency_ratio" in table
    assert "NO" in table
    assert "skipped qemu_freeze_ms: no QEMU here" in table
    report.write(tmp_path / "out.json")
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["metrics"]["latency_ratio"] == {
        "value": 1.2,
        "unit": "x",
        "goal": "<= 1.5",
        "note": "",
    }
    assert data["skipped"] == {"qemu_freeze_ms": "no QEMU here"}


def test_host_config_toml() -> None:
    config = stack.HostConfig(
        drivers=["unix:///tmp/a.sock", "unix:///tmp/b.sock"],
        agents=["unix:///tmp/g.sock"],
        settings={"queue_bound": 64},
    )
    text = config.toml()
    assert "[host]\nqueue_bound = 64" in text
    assert text.count("[[drivers]]") == 2
    assert 'address = "unix:///tmp/g.sock"' in text


def test_emulator_pattern_is_sparse_but_not_zero() -> None:
    data = _pattern(2)
    assert len(data) == 2 * MIB
    blocks = {data[i : i + BLOCK] for i in range(0, len(data), BLOCK)}
    assert len(blocks) == 2  # one distinct block per MiB
    assert all(any(b) for b in blocks) or (len(blocks) == 2 and any(data[MIB:]))


def test_freeze_window_runs_against_real_processes() -> None:
    (result,) = measure_freeze(quick=True, delays=(20.0,), samples=1)
    assert result.delay_ms == 20.0
    assert result.host_ms > 0
    assert result.sequential_ms > 0


def test_entry_point_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--quick" in out
    assert "--json" in out


def test_peer_frozen_windows_from_the_hook_and_libvirtd_logs() -> None:
    from bench.peer_libvirt import hook_windows, libvirt_windows

    hook = "freeze 100.50 90.0\nthaw 100.62 90.1\nfreeze 101.00 91.0\nthaw 101.03 91.0\n"
    assert hook_windows(hook) == pytest.approx([120.0, 30.0])
    sent = "debug : qemuAgentCommandFull:1 : Send command "
    log = "\n".join(
        [
            f'2026-11-30 07:21:10.000+0000: 7: {sent}\'{{"execute":"guest-sync"}}\' for write',
            "2026-11-30 07:21:10.010+0000: 7: debug : qemuAgentIOProcessLine:2 : Line [{}]",
            f'2026-11-30 07:21:10.020+0000: 7: {sent}\'{{"execute":"guest-fsfreeze-freeze"}}\'',
            "2026-11-30 07:21:10.100+0000: 7: debug : qemuAgentIOProcessLine:2 : Line [{1}]",
            "2026-11-30 07:21:10.150+0000: 7: info : other:3 : something else",
            f'2026-11-30 07:21:10.193+0000: 7: {sent}\'{{"execute":"guest-fsfreeze-thaw"}}\'',
        ]
    )
    # The freeze's reply read → the thaw sent; the sync before it does not count.
    assert libvirt_windows(log) == pytest.approx([93.0])


def test_one_guest_frozen_window_per_quiesce(tmp_path: Path) -> None:
    from bench.qemu import frozen_by_token

    def line(event: str, token: str, ms: float) -> str:
        fields = {"token": token, "guest_surely_frozen_ms": ms}
        return json.dumps({"message": event, "fields": fields})

    # The guest thawed within each quiesce: its quiesced and unquiesced lines both
    # carry the window. A line that is not JSON, or has no token, is not a sample.
    log = tmp_path / "agent.log"
    log.write_text(
        "\n".join(
            [
                line("quiesced", "q-1", 41.0),
                "not json",
                line("unquiesced", "q-1", 41.0),
                line("quiesced", "q-2", 39.5),
                json.dumps({"fields": {"guest_surely_frozen_ms": 1.0}}),
                line("unquiesced", "q-2", 39.5),
            ]
        )
    )
    assert list(frozen_by_token(log).items()) == [("q-1", 41.0), ("q-2", 39.5)]


def test_thread_cpu_counts_the_calling_threads_work() -> None:
    """bench.cpu_threads reads each thread's CPU from /proc: work done by this
    (main) thread shows on its own id, and only grows."""
    import os
    import time

    from bench.cpu_threads import thread_cpu

    before = thread_cpu(os.getpid())
    assert os.getpid() in before
    end = time.process_time() + 0.1
    while time.process_time() < end:
        pass
    after = thread_cpu(os.getpid())
    assert after[os.getpid()] - before[os.getpid()] >= 0.05


def test_the_skeleton_makes_a_creates_calls_and_durable_writes(tmp_path: Path) -> None:
    """The skeleton is the floor only if it does what a create must: every create
    through it reaches the agent and both drivers and leaves its two commits."""
    import asyncio
    import contextlib
    import sqlite3

    from bench import create, skeleton

    with skeleton._processes(tmp_path) as (host, _procs):
        latencies, _rate = asyncio.run(create._run(host, ["vm-1", "vm-2"], 2, 6))
    assert len(latencies) == 6
    with contextlib.closing(sqlite3.connect(tmp_path / "catalog.db")) as db:
        rows = db.execute("SELECT what FROM rows").fetchall()
    creates = 6 + 2  # and the warm-up create of each VM
    assert len(rows) == skeleton.COMMITS * creates
    assert sorted({r[0] for r in rows}) == ["creating", "ready"]
    assert (tmp_path / "vm-1.freeze").exists()


def test_the_sections_the_readme_names_exist() -> None:
    """The README's and bench/README's `--only` lists name real sections (argparse
    refuses an unknown one before it reads --help)."""
    import re

    from bench.__main__ import SECTIONS

    text = (ROOT / "README.md").read_text() + (ROOT / "bench" / "README.md").read_text()
    named = {
        word
        for found in re.findall(r"bench (?:--quick )?--only ((?:[a-z_]+ ?)+)", text)
        for word in found.split()
    }
    assert "skeleton" in named
    assert named <= set(SECTIONS), named - set(SECTIONS)
    subprocess.run(
        [sys.executable, "-m", "bench", "--only", *sorted(named), "--help"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )


def test_the_latency_goals_floor_is_measured_beside_the_creates() -> None:
    """latency_ratio's baseline: the floor's round trips made between the c=1 creates
    (FLOOR_BESIDE before each), so that the machine's busy and quiet moments fall on
    both; the creates themselves are timed alone."""
    from bench import create

    (result,) = create.measure_create(True, concurrencies=(1,), totals={1: 8}, floor_beside=True)
    assert len(result.latencies_ms) == 8
    assert len(result.floor_ms) == 8 * create.FLOOR_BESIDE
    # Round trips of their own, timed apart from the creates (not a comparison of
    # the two: on a loaded machine one round trip can outlast a create).
    assert all(0 < ms < 60_000 for ms in result.floor_ms)
    (alone,) = create.measure_create(True, concurrencies=(1,), totals={1: 2})
    assert alone.floor_ms == []
