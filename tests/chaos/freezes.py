"""Which VMs are frozen, asked while the run goes on: a freeze must end with its take.

The agent is asked (``AgentClient.list_quiesces``) when its client offers that
call; until then, and for the sim agent while it is down, its persisted state
(``vmsnap_agent.sim.load_state``) says which freezes are in force. A freeze that
outlives its lease or its operation is mostly over by the end of a run (the
agent thaws expired leases itself), so the monitor samples during the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.chaos.checks import Freeze, Violation, check_freezes
from tests.chaos.knobs import Knobs
from tests.chaos.processes import Child
from vmsnap_agent.sim import load_state
from vmsnap_sdk import AgentClient
from vmsnap_sdk.errors import VMSnapError

#: After an agent (re)starts, leases it resolved at start-up need this long to show.
AGENT_SETTLE = 1.0


def _seconds(value: Any) -> float:
    """Unix seconds of an expire time; a freeze without one has no lease to outlive."""
    if value is None:
        return math.inf
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


class FreezeSource:
    """The freezes in force on every VM of one agent."""

    def __init__(self, agent: Child, sim_state: Path | None, rpc_timeout: float = 2.0) -> None:
        self.agent = agent
        self.sim_state = sim_state
        self.rpc_timeout = rpc_timeout
        self._client = AgentClient.connect(agent.component.address, timeout=rpc_timeout)
        #: Where the last answer came from: "agent" (ListQuiesces) or "sim state".
        self.via = ""

    @property
    def asks_agent(self) -> bool:
        return hasattr(self._client, "list_quiesces")

    async def list(self) -> list[Freeze] | None:
        """The freezes, or None when neither the agent nor its state can say."""
        if self.asks_agent and self.agent.up:
            try:
                found = await self._client.list_quiesces(vm_id="")  # type: ignore[attr-defined]
            except VMSnapError:
                pass
            else:
                self.via = "agent"
                return [
                    Freeze(
                        vm_id=str(q.vm_id),
                        operation_id=str(getattr(q, "operation_id", "")),
                        expire_time=_seconds(q.expire_time),
                        token=str(getattr(q, "token", "")),
                    )
                    for q in found
                ]
        if self.sim_state is None:
            return None
        try:
            state = await asyncio.to_thread(load_state, self.sim_state)
        except (OSError, ValueError):
            return None  # a file replaced while read: the next sample sees it
        self.via = "sim state"
        return [
            Freeze(vm.id, vm.freeze.operation_id, vm.freeze.expire_at, vm.freeze.token)
            for vm in state.vms.values()
            if vm.freeze is not None
        ]

    def lease_trusted(self) -> bool:
        """A running agent thaws expired leases; a dead one cannot."""
        return (
            self.agent.up
            and self.agent.running
            and self.agent.serving_since > 0
            and time.monotonic() - self.agent.serving_since > AGENT_SETTLE
        )

    async def close(self) -> None:
        await self._client.close()


class FreezeMonitor:
    """Samples the freezes and keeps one violation per freeze that outlived its take."""

    def __init__(self, source: FreezeSource, knobs: Knobs, ended: dict[str, float]) -> None:
        self.source = source
        self.knobs = knobs
        #: Operation id -> when the harness saw it done (unix seconds).
        self.ended = ended
        self.violations: dict[str, Violation] = {}
        self.samples = 0
        self.frozen_seen: set[str] = set()
        #: Set while a kill waits for a freeze to be held.
        self.freeze_held = asyncio.Event()

    def check(self, freezes: list[Freeze], *, idle: bool = False) -> list[Violation]:
        found = check_freezes(
            freezes,
            now=time.time(),
            ended=self.ended,
            grace=self.knobs.freeze_grace,
            lease_trusted=self.source.lease_trusted(),
            idle=idle,
        )
        for v in found:
            self.violations.setdefault(v.subject, v)
        return found

    async def sample(self, *, idle: bool = False) -> None:
        freezes = await self.source.list()
        if freezes is None:
            return
        self.samples += 1
        self.frozen_seen.update(f.key for f in freezes)
        if freezes:
            self.freeze_held.set()
        else:
            self.freeze_held.clear()
        self.check(freezes, idle=idle)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a sampling hiccup is no verdict
                await self.sample()
            await asyncio.sleep(self.knobs.freeze_poll)
