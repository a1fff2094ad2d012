"""Fixtures of the sim agent tests: the agent as its own process, and a client to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.agent_sim.simproc import SimProc
from vmsnap_sdk import AgentClient


@pytest.fixture
def sim(sockdir: Path, tmp_path: Path) -> Iterator[SimProc]:
    proc = SimProc(sockdir, tmp_path / "state", tmp_path / "agent.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def agent(sim: SimProc) -> AsyncIterator[AgentClient]:
    client = AgentClient.connect(sim.address, timeout=10)
    try:
        yield client
    finally:
        await client.close()
