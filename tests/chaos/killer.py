"""SIGKILL a random process of the stack at a random point, and restart it after a while.

The plan (which process, after which operation, at what moment, for how long)
comes from the seed. A kill waits until the workload has started its
operation, then, for some kills, until a freeze is held or a revert runs; then
it kills the planned process (or, when that one is already down, the next one
that runs: outages overlap, e.g. the host killed while the agent is down), and
restarts it after a short outage or one longer than the host's call timeout.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from tests.chaos.freezes import FreezeSource
from tests.chaos.knobs import Knobs
from tests.chaos.processes import Cluster, StartFailed
from tests.chaos.workload import Progress

ANY = "any"
WHILE_FROZEN = "while frozen"
DURING_REVERT = "during revert"

#: How much more often a process of each role is chosen; the host and the agent
#: hold the most state between calls.
ROLE_WEIGHTS = {
    "host": 2.0,
    "hypervisor agent": 1.5,
    "storage driver": 1.0,
    "array emulator": 1.0,
}


def targets_of(cluster: Cluster) -> dict[str, float]:
    """Every process of the stack and how often it is chosen, in start order."""
    return {c.name: ROLE_WEIGHTS.get(c.role, 1.0) for c in cluster.components}


@dataclass(frozen=True)
class PlannedKill:
    after_op: int
    target: str
    moment: str
    #: Seconds between the moment and the kill.
    delay: float
    #: Seconds the process stays down.
    outage: float

    #: Longer than the host's call timeout.
    long: bool = False


@dataclass
class KillRecord:
    planned: PlannedKill
    target: str = ""
    #: Whether the planned moment (a freeze held, a revert running) came before the kill.
    moment_met: bool = True
    #: Seconds into the run.
    at: float = 0.0
    #: Seconds from the kill until it served again.
    restarted_after: float = 0.0
    note: str = ""


def plan_kills(
    seed: int, kills: int, ops: int, targets: dict[str, float], knobs: Knobs
) -> list[PlannedKill]:
    rng = random.Random(f"kills-{seed}")
    if kills <= 0:
        return []
    span = max(1, ops - 1)
    points = (
        sorted(rng.sample(range(1, span + 1), kills))
        if kills <= span
        else sorted(rng.randint(1, span) for _ in range(kills))
    )
    names = list(targets)
    weights = [targets[n] for n in names]
    plan = []
    for point in points:
        target = rng.choices(names, weights)[0]
        roll = rng.random()
        if roll < knobs.while_frozen_share:
            moment = WHILE_FROZEN
        elif roll < knobs.while_frozen_share + knobs.during_revert_share:
            moment = DURING_REVERT
        else:
            moment = ANY
        delay = rng.uniform(0.0, 0.05) if moment == WHILE_FROZEN else rng.uniform(0.0, 0.5)
        long = rng.random() < knobs.long_outage_share
        outage = rng.uniform(*(knobs.long_outage if long else knobs.short_outage))
        plan.append(PlannedKill(point, target, moment, delay, outage, long))
    return plan


@dataclass
class Killer:
    cluster: Cluster
    plan: list[PlannedKill]
    progress: Progress
    freezes: FreezeSource
    knobs: Knobs
    log: list[KillRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _restarts: set[asyncio.Task[None]] = field(default_factory=set)
    _t0: float = field(default_factory=time.monotonic)

    async def run(self) -> None:
        for planned in self.plan:
            point = planned.after_op
            if not await self.progress.wait_for(lambda: self.progress.started >= point, None):  # noqa: B023 - awaited at once
                return  # the workload ended before this point
            record = KillRecord(planned)
            if planned.moment == WHILE_FROZEN:
                record.moment_met = await self._until_frozen()
            elif planned.moment == DURING_REVERT:
                record.moment_met = await self.progress.wait_for(
                    lambda: self.progress.reverts_running > 0, self.knobs.moment_wait
                )
            if self.progress.finished:
                return
            await asyncio.sleep(planned.delay)
            child = self._pick(planned.target)
            if child is None:
                record.note = "every process was down"
                self.log.append(record)
                continue
            record.target = child
            record.at = round(time.monotonic() - self._t0, 2)
            await self.cluster.children[child].kill()
            self.log.append(record)
            task = asyncio.create_task(self._restore(record))
            self._restarts.add(task)
            task.add_done_callback(self._restarts.discard)

    async def _until_frozen(self) -> bool:
        deadline = time.monotonic() + self.knobs.moment_wait
        while time.monotonic() < deadline and not self.progress.finished:
            freezes = await self.freezes.list()
            if freezes:
                return True
            await asyncio.sleep(0.01)
        return False

    def _pick(self, target: str) -> str | None:
        names = [c.name for c in self.cluster.components]
        start = names.index(target) if target in names else 0
        for name in names[start:] + names[:start]:
            child = self.cluster.children.get(name)
            if child is not None and child.up and child.running:
                return name
        return None

    async def _restore(self, record: KillRecord) -> None:
        killed = time.monotonic()
        await asyncio.sleep(record.planned.outage)
        for attempt in range(3):
            try:
                await self.cluster.restart(record.target)
            except StartFailed as exc:
                self.notes.append(f"restart #{attempt + 1} of {record.target} failed: {exc}")
                await self.cluster.children[record.target].kill()
                await asyncio.sleep(1.0)
            else:
                record.restarted_after = round(time.monotonic() - killed, 2)
                return

    async def wait_restarts(self) -> None:
        """Let every pending restart finish (each is bounded by the start timeout)."""
        if self._restarts:
            await asyncio.gather(*self._restarts, return_exceptions=True)
