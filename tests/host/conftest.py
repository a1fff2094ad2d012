"""In-process host fixtures: the real manager, store and registry, the sim agent
and fake drivers as objects (no sockets), for fast tests of the logic."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.driver import FakeDriver, Options
from vmsnap_agent.sim import SimAgent
from vmsnap_host.config import Settings
from vmsnap_host.manager import Manager
from vmsnap_host.model import OperationRecord, QuiescePolicy
from vmsnap_host.recovery import Recovery
from vmsnap_host.registry import Registry
from vmsnap_host.store import Store
from vmsnap_sdk import VM, Volume

FAST = Settings(
    quiesce_lease_seconds=5.0,
    take_timeout_seconds=3.0,
    call_timeout_seconds=2.0,
    post_processing_timeout_seconds=5.0,
    max_snapshots_per_vm=3,
    queue_bound=1,
)

THREE_DISKS = (
    Volume("vda", "a://pool/1"),
    Volume("vdb", "b://pool/2"),
    Volume("vdc", "file:///var/lib/vm/3.img"),
)


@dataclass
class Rig:
    store: Store
    registry: Registry
    manager: Manager
    agent: SimAgent
    drivers: dict[str, FakeDriver]
    path: Path
    recovery: Recovery = field(init=False)

    def __post_init__(self) -> None:
        self.recovery = Recovery(self.manager)

    async def close(self) -> None:
        await self.manager.close()
        await self.agent.close()
        await self.registry.close()
        self.store.close()

    async def define(
        self, vm_id: str = "vm1", volumes: tuple[Volume, ...] = THREE_DISKS, running: bool = True
    ) -> VM:
        await self.agent.define_vm(VM(id=vm_id, name=vm_id, volumes=volumes, memory_mib=64))
        if running:
            return await self.agent.start_vm(vm_id)
        return await self.agent.describe_vm(vm_id)

    async def create(
        self,
        name: str = "s1",
        vm_id: str = "vm1",
        *,
        memory: bool = False,
        quiesce: QuiescePolicy = QuiescePolicy.BEST_EFFORT,
        request_id: str = "",
    ) -> OperationRecord:
        return await self.manager.create_snapshot(
            request_id or f"req-{vm_id}-{name}",
            vm_id,
            name,
            description="",
            include_memory=memory,
            quiesce=quiesce,
            parameters={},
        )

    async def wait(self, op: OperationRecord) -> OperationRecord:
        done = await self.manager.wait_operation(op.id, 20.0)
        assert done.done, done
        return done

    def frozen(self, vm_id: str = "vm1") -> bool:
        return self.agent._vms[vm_id].freeze is not None


def count_calls(counts: Counter[str], name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (async), counting each call in ``counts[name]``: put in its place
    on a rig's agent or driver to count the calls a test makes it answer."""

    async def counted(*args: Any, **kwargs: Any) -> Any:
        counts[name] += 1
        return await method(*args, **kwargs)

    return counted


async def make_rig(
    tmp_path: Path, *driver_options: Options, settings: Settings = FAST, db: str = ""
) -> Rig:
    """The host's parts in process, on the catalog at ``db`` (default: SQLite in
    ``tmp_path``)."""
    store = Store.open(db or f"sqlite:///{tmp_path / 'host.db'}")
    registry = Registry(call_timeout=settings.call_timeout_seconds)
    drivers = {}
    for i, o in enumerate(driver_options):
        d = FakeDriver(o)
        drivers[o.name] = d
        await registry.add_driver(f"local:{o.name}", order=i, driver=d)
    agent = SimAgent(tmp_path / "agent", name="sim-1")
    await agent.start()
    await registry.add_agent("local:sim-1", agent=agent)
    return Rig(
        store, registry, Manager(store, registry, settings, "test"), agent, drivers, tmp_path
    )


@pytest.fixture
async def rig(tmp_path: Path, db_url: str) -> AsyncIterator[Rig]:
    """On each backend (SQLite, PostgreSQL)."""
    r = await make_rig(
        tmp_path,
        Options(name="io.vmsnap.test.a", scheme="a"),
        Options(name="io.vmsnap.test.b", scheme="b"),
        db=db_url,
    )
    yield r
    await r.close()
