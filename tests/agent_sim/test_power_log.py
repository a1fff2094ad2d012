"""The sim agent's power journal (``VMSNAP_SIM_POWER_LOG=1``): each power state a
VM takes, on CLOCK_MONOTONIC, for the chaos harness's "not_running" invariant."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from vmsnap_agent.sim import POWER_LOG, POWER_LOG_ENV, SimAgent
from vmsnap_sdk import VM, Volume

pytestmark = pytest.mark.asyncio


def _entries(state: Path) -> list[tuple[str, str]]:
    lines = (state / POWER_LOG).read_text().splitlines()
    return [(e["vm"], e["state"]) for e in map(json.loads, lines)]


async def test_starts_stops_and_restarts_are_journaled_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(POWER_LOG_ENV, "1")
    before = time.monotonic()
    agent = SimAgent(tmp_path / "agent")
    await agent.start()
    await agent.define_vm(VM(id="vm-1", name="vm-1", volumes=(Volume("vda", "a://p/1"),)))
    await agent.start_vm("vm-1")
    await agent.start_vm("vm-1")  # already running: nothing new
    await agent.stop_vm("vm-1", False)
    await agent.start_vm("vm-1")
    await agent.close()
    assert _entries(tmp_path / "agent") == [
        ("vm-1", "STOPPED"),
        ("vm-1", "RUNNING"),
        ("vm-1", "STOPPED"),
        ("vm-1", "RUNNING"),
    ]
    # A restarted agent journals every VM's state first (a line a kill lost is
    # corrected from then on).
    again = SimAgent(tmp_path / "agent")
    assert _entries(tmp_path / "agent")[-1] == ("vm-1", "RUNNING")
    await again.close()
    monos = [
        json.loads(x)["mono"] for x in (tmp_path / "agent" / POWER_LOG).read_text().splitlines()
    ]
    assert monos == sorted(monos) and monos[0] >= before


async def test_no_journal_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POWER_LOG_ENV, raising=False)
    agent = SimAgent(tmp_path / "agent")
    await agent.define_vm(VM(id="vm-1", name="vm-1", volumes=(Volume("vda", "a://p/1"),)))
    await agent.start_vm("vm-1")
    await agent.close()
    assert not (tmp_path / "agent" / POWER_LOG).exists()
