"""Planner, registry, config and API paging, without processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.driver import FakeDriver, Options
from tests.host.conftest import Rig
from vmsnap_host.config import ConfigError, parse
from vmsnap_host.model import GroupKind, QuiescePolicy
from vmsnap_host.planner import Candidate, needs_freeze, plan_take
from vmsnap_host.registry import Health, Registry
from vmsnap_sdk import VM, Capability, Priority, VMState, Volume
from vmsnap_sdk.errors import FailedPrecondition, Unavailable

VM1 = VM(
    id="vm1",
    state=VMState.RUNNING,
    volumes=(Volume("vda", "a://1"), Volume("vdb", "a://2"), Volume("vdc", "file:///3")),
)


def _candidate(name: str, order: int, priority: Priority, scheme: str = "a") -> Candidate:
    driver = FakeDriver(Options(name=name, scheme=scheme, priority=priority))
    return Candidate(name, order, frozenset({Capability.CONSISTENT_GROUP}), driver)


async def test_ties_go_to_the_configured_order_then_the_name() -> None:
    plan = await plan_take(
        VM1,
        [
            _candidate("z.example.b", 0, Priority.PLUGIN),
            _candidate("a.example.a", 1, Priority.PLUGIN),
        ],
        "sim-1",
        include_memory=False,
        memory_supported=True,
        options={},
    )
    assert [(g.owner, g.disks) for g in plan.groups] == [
        ("z.example.b", ("vda", "vdb")),
        ("sim-1", ("vdc",)),
    ]
    plan = await plan_take(
        VM1,
        [
            _candidate("z.example.b", 0, Priority.PLUGIN),
            _candidate("a.example.a", 0, Priority.PLUGIN),
        ],
        "sim-1",
        include_memory=False,
        memory_supported=True,
        options={},
    )
    assert plan.groups[0].owner == "a.example.a"


async def test_the_highest_priority_wins_and_default_loses_to_the_hypervisor() -> None:
    plan = await plan_take(
        VM1,
        [
            _candidate("x.example.low", 0, Priority.PLUGIN),
            _candidate("y.example.high", 1, Priority.HIGHEST),
        ],
        "sim-1",
        include_memory=False,
        memory_supported=True,
        options={},
    )
    assert plan.groups[0].owner == "y.example.high"
    plan = await plan_take(
        VM1,
        [_candidate("x.example.default", 0, Priority.DEFAULT)],
        "sim-1",
        include_memory=False,
        memory_supported=True,
        options={},
    )
    assert [g.kind for g in plan.groups] == [GroupKind.HYPERVISOR]


async def test_memory_without_agent_support_says_why() -> None:
    only_native = VM(id="v", volumes=(Volume("vda", "file:///1"),))
    with pytest.raises(FailedPrecondition, match="cannot include memory"):
        await plan_take(
            only_native, [], "sim-1", include_memory=True, memory_supported=False, options={}
        )


async def test_freeze_only_when_needed() -> None:
    plan = await plan_take(
        VM1,
        [_candidate("x.example.a", 0, Priority.PLUGIN)],
        "sim-1",
        include_memory=False,
        memory_supported=True,
        options={},
    )
    caps = {"x.example.a": frozenset({Capability.CONSISTENT_GROUP})}
    assert needs_freeze(plan.groups, QuiescePolicy.OFF, VMState.RUNNING, caps)  # two groups
    one = plan.groups[:1]
    assert not needs_freeze(one, QuiescePolicy.OFF, VMState.RUNNING, caps)  # consistent group
    assert needs_freeze(one, QuiescePolicy.OFF, VMState.RUNNING, {"x.example.a": frozenset()})
    assert needs_freeze(one, QuiescePolicy.BEST_EFFORT, VMState.RUNNING, caps)
    # A memory snapshot is saved with the VM paused by the hypervisor: never frozen first.
    assert not needs_freeze(one, QuiescePolicy.REQUIRED, VMState.RUNNING, caps, include_memory=True)
    assert not needs_freeze(plan.groups, QuiescePolicy.REQUIRED, VMState.STOPPED, caps)


async def test_an_unhealthy_driver_fails_fast_naming_itself_and_comes_back() -> None:
    driver = FakeDriver(Options(name="io.vmsnap.test.a"))
    registry = Registry()
    entry = await registry.add_driver("local:a", driver=driver)
    assert entry.health is Health.SERVING and entry.contract_version == "v1"

    async def down() -> object:
        raise Unavailable("array gone")

    driver.probe = down  # type: ignore[method-assign]
    await registry.check_all()
    assert entry.health is Health.NOT_SERVING
    with pytest.raises(
        Unavailable, match=r"io.vmsnap.test.a at local:a is not serving \(array gone\)"
    ):
        await registry.driver("io.vmsnap.test.a").delete_snapshot("x", None)
    del driver.probe
    await registry.check_all()
    await registry.driver("io.vmsnap.test.a").delete_snapshot("x", None)


async def test_a_driver_of_another_contract_version_is_not_served() -> None:
    driver = FakeDriver(Options(name="io.vmsnap.test.a"))
    real = driver.get_info

    async def v2() -> object:
        info = await real()
        return type(info)(info.name, info.vendor_version, contract_versions=("v2",))

    driver.get_info = v2  # type: ignore[assignment,method-assign]
    entry = await Registry().add_driver("local:a", driver=driver)
    assert entry.health is Health.NOT_SERVING and "needs v1" in entry.message


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    config = parse(
        {
            "host": {"max_snapshots_per_vm": 5, "lease_seconds": 10},
            "drivers": [{"address": "unix:///tmp/a.sock", "order": 2}],
            "agents": [{"address": "127.0.0.1:5000"}],
        }
    )
    assert config.settings.max_snapshots_per_vm == 5 and config.drivers[0].order == 2
    with pytest.raises(ConfigError, match=r"host.queue_bound: must be a number"):
        parse({"host": {"queue_bound": -1}})
    with pytest.raises(ConfigError, match=r"host.nope: unknown setting"):
        parse({"host": {"nope": 1}})
    with pytest.raises(ConfigError, match=r"drivers\[0\].address: is required"):
        parse({"drivers": [{}]})
    with pytest.raises(ConfigError, match=r"drivers\[0\].tls.ca_file: .* is not a readable file"):
        parse({"drivers": [{"address": "unix:///a", "tls": {"ca_file": str(tmp_path / "x")}}]})


async def test_list_pages_by_vm(rig: Rig) -> None:
    await rig.define()
    await rig.define("vm2", volumes=(Volume("vda", "file:///x"),))
    for name in ("s1", "s2", "s3"):
        await rig.wait(await rig.create(name))
    await rig.wait(await rig.create("t", "vm2"))
    page = rig.store.list_snapshots("vm1", 0, 2, False)
    assert [s.name for _, s in page] == ["s1", "s2"]
    rest = rig.store.list_snapshots("vm1", page[-1][0], 2, False)
    assert [s.name for _, s in rest] == ["s3"]
