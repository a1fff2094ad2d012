"""``vmsnap up --replicas 2 --db postgres``: a PostgreSQL server of the stack's own,
two host replicas on it, the CLI reaching both (docs/design.md, "Replicas")."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.stack_support import Up, alive, vmsnap


@pytest.fixture
def replicated(
    sockdir: Path, tmp_path: Path, pg_cluster: object
) -> Iterator[Up]:  # pg_cluster: skipped (or failed in CI) without the server binaries
    sockdir.chmod(0o711)  # as root the server runs as postgres, which must get through
    stack = Up(sockdir, tmp_path / "up.log", "--replicas", "2", "--db", "postgres")
    try:
        yield stack
    finally:
        stack.proc.stop(timeout=30)


def test_up_with_two_replicas_on_its_own_postgresql(replicated: Up) -> None:
    up = replicated
    pids = up.pids()
    assert {"postgres", "host-1", "host-2"} <= set(pids)
    assert "host" not in pids
    output = up.proc.output()
    for name in ("postgres", "host-1", "host-2"):
        assert name in output  # the table shows every replica and the database
    hosts = up.stack["host"].split(",")
    assert hosts == [up.address("host-1"), up.address("host-2")]

    # The CLI finds both replicas by itself; the story passes.
    demo = vmsnap(up.home, "demo")
    assert "demo passed" in demo.stdout, demo.stdout + demo.stderr

    # One replica dies: the CLI goes on through the other, with the same catalog.
    os.kill(pids["host-1"], signal.SIGKILL)
    listed = vmsnap(up.home, "vm", "list")
    assert listed.returncode == 0
    snapshots = vmsnap(up.home, "operations", "list")
    assert snapshots.stdout.strip()

    up.proc.signal(signal.SIGTERM)
    assert up.proc.popen.wait(60) == 0, up.proc.output()
    for name, pid in pids.items():
        assert not alive(pid), f"{name} (pid {pid}) outlived vmsnap up"


def test_several_replicas_need_postgresql(sockdir: Path) -> None:
    result = vmsnap(sockdir, "up", "--home", str(sockdir), "--replicas", "2", check=False)
    assert result.returncode != 0
    assert "--db postgres" in result.stdout + result.stderr


def test_the_cli_takes_several_addresses_and_skips_a_dead_one(shared_up: Up, sockdir: Path) -> None:
    hosts = f"unix://{sockdir}/gone.sock,{shared_up.stack['host']}"
    result = vmsnap(shared_up.home, "--host", hosts, "drivers", "list")
    assert "driver" in result.stdout.lower() or result.stdout.strip()
