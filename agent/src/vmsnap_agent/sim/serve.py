"""How ``vmsnap-agent --hypervisor sim`` builds the agent (see ``vmsnap_agent.cli``)."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path

from vmsnap_agent.sim._agent import SimAgent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sim takes only the common --state and --name."""


async def create(args: argparse.Namespace) -> tuple[SimAgent, Callable[[], Awaitable[None]]]:
    """The agent, started (expired leases resolved, thaw task running), and its closer."""
    agent = SimAgent(Path(args.state), name=args.name or "sim-1")
    await agent.start()
    return agent, agent.close
