"""The planner with in-process drivers: priorities, the native-snapshot rule, the
recorded owners, and drivers that fail, hang or are down affecting only the
disks they could claim. Never a silent change of strategy."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from vmsnap_host.config import ConfigError, Settings, parse
from vmsnap_host.model import GroupKind, QuiescePolicy
from vmsnap_host.planner import Plan, needs_freeze, plan_take
from vmsnap_host.registry import AGENT, AgentEntry, DriverEntry, Health, Peer, Registry
from vmsnap_sdk import (
    VM,
    AgentInfo,
    Capability,
    DriverInfo,
    Operation,
    Priority,
    ProbeResult,
    SnapshotResult,
    StorageDriver,
    TakeRequest,
    VMState,
    Volume,
    VolumeDecision,
)
from vmsnap_sdk.errors import FailedPrecondition, Unavailable

TIMEOUT = 0.05


@dataclass(frozen=True)
class _Volume(Volume):
    # Volume.native_snapshot is being added to the SDK with these same semantics;
    # this stand-in lets the planner's rule be tested before it lands.
    native_snapshot: bool = field(default=False, compare=False)


def vol(disk: str, locator: str, native: bool = False) -> Volume:
    return _Volume(disk, locator, native_snapshot=native)


class Fake(StorageDriver):
    """Claims volumes of its scheme; ``behaviour``: ok, fail, crash, hang, down."""

    def __init__(
        self, name: str, scheme: str, priority: Priority = Priority.PLUGIN, behaviour: str = "ok"
    ) -> None:
        self.name, self.scheme, self.priority, self.behaviour = name, scheme, priority, behaviour
        self.asked = 0
        self.cancelled = False

    async def get_info(self) -> DriverInfo:
        return DriverInfo(self.name, "0.0.1", capabilities=frozenset({Capability.CONSISTENT_GROUP}))

    async def probe(self) -> ProbeResult:
        if self.behaviour == "down":
            raise Unavailable("array gone")
        return ProbeResult(ready=True)

    async def can_handle(
        self, vm: VM, volumes: Sequence[Volume], operation: Operation, options: Mapping[str, str]
    ) -> Sequence[VolumeDecision]:
        assert operation is Operation.TAKE
        self.asked += 1
        if self.behaviour == "fail":
            raise Unavailable("CanHandle exploded " + "z" * 10_000)
        if self.behaviour == "crash":
            raise KeyError("a bug in the driver")
        if self.behaviour == "hang":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        return [
            VolumeDecision(v.disk, self.priority, f"{self.scheme}:// volume")
            if v.scheme == self.scheme
            else VolumeDecision(v.disk, Priority.CANT_HANDLE, "not mine")
            for v in volumes
        ]

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        raise AssertionError("the planner never takes")

    async def delete_snapshot(self, vm_snapshot_id: str, snapshot: SnapshotResult | None) -> None:
        raise AssertionError("the planner never deletes")


async def entries(*fakes: Fake) -> list[DriverEntry]:
    registry = Registry()
    for i, fake in enumerate(fakes):
        await registry.add_driver(f"local:{fake.name}", order=i, driver=fake)
    return registry.drivers()


def agent(memory: bool = True, with_arrays: bool = False) -> AgentEntry:
    return Peer(
        AGENT,
        "local:sim-1",
        None,
        cast(Any, None),
        name="sim-1",
        info=AgentInfo(
            "sim-1", "sim", "0.0.1", memory_snapshots=memory, memory_with_array_disks=with_arrays
        ),
        health=Health.SERVING,
    )


async def plan(
    vm: VM,
    drivers: Sequence[DriverEntry],
    owners: Mapping[str, str] | None = None,
    *,
    memory: bool = False,
    memory_supported: bool = True,
    with_arrays: bool = False,
) -> Plan:
    return await plan_take(
        vm,
        drivers,
        agent(memory_supported, with_arrays),
        owners or {},
        include_memory=memory,
        options={},
        can_handle_timeout=TIMEOUT,
    )


A1 = vol("vda", "a://1")
A2 = vol("vdb", "a://2")
FILE = vol("vdc", "file:///3", native=True)
ELEMENT = vol("vdb", "element://c/42")
VM1 = VM(id="vm1", state=VMState.RUNNING, volumes=(A1, A2, FILE))


def layout(p: Plan) -> list[tuple[str, tuple[str, ...]]]:
    return [(g.owner, g.disks) for g in p.groups]


# --- who wins a disk --------------------------------------------------------------------


async def test_ties_go_to_the_configured_order_then_the_name() -> None:
    p = await plan(VM1, await entries(Fake("z.example.b", "a"), Fake("a.example.a", "a")))
    assert layout(p) == [("z.example.b", ("vda", "vdb")), ("sim-1", ("vdc",))]
    drivers = await entries(Fake("z.example.b", "a"), Fake("a.example.a", "a"))
    for d in drivers:
        d.order = 0
    assert (await plan(VM1, drivers)).groups[0].owner == "a.example.a"


async def test_the_highest_priority_wins_and_default_loses_to_a_native_snapshot() -> None:
    p = await plan(
        VM1,
        await entries(
            Fake("x.example.low", "a"), Fake("y.example.high", "a", priority=Priority.HIGHEST)
        ),
    )
    assert p.groups[0].owner == "y.example.high"
    # DEFAULT means "the hypervisor may do it better": it loses to a disk a native
    # snapshot holds...
    native_a = VM(id="v", volumes=(vol("vda", "a://1", native=True),))
    p = await plan(native_a, await entries(Fake("x.example.d", "a", priority=Priority.DEFAULT)))
    assert [g.kind for g in p.groups] == [GroupKind.HYPERVISOR] and p.owners == {}
    # ...and wins one that no native snapshot can hold.
    p = await plan(
        VM(id="v", volumes=(A1,)),
        await entries(Fake("x.example.d", "a", priority=Priority.DEFAULT)),
    )
    assert layout(p) == [("x.example.d", ("vda",))]


async def test_the_plan_returns_the_owner_of_every_driver_disk() -> None:
    p = await plan(VM1, await entries(Fake("io.a", "a")))
    assert p.owners == {"a://1": "io.a", "a://2": "io.a"}
    assert p.warnings == ()


async def test_a_disk_nobody_can_snapshot_names_itself() -> None:
    vm = VM(id="vm1", volumes=(A1, ELEMENT, FILE))
    with pytest.raises(FailedPrecondition) as caught:
        await plan(vm, await entries(Fake("io.a", "a")))
    assert caught.value.reason == "NO_STRATEGY"
    assert caught.value.message == (
        "no registered driver claims disk vdb (element://c/42) and agent sim-1 cannot "
        "snapshot it natively: register the driver for that array"
    )


# --- drivers that fail, hang or are down ------------------------------------------------


async def test_a_failing_can_handle_affects_only_disks_it_could_claim() -> None:
    a, f = Fake("io.a", "a"), Fake("io.f", "f", behaviour="fail")
    drivers = await entries(a, f)
    # Every disk was claimed by a driver that answered or is held natively: the
    # take goes on, with a warning that names the failing driver.
    p = await plan(VM1, drivers)
    assert layout(p) == [("io.a", ("vda", "vdb")), ("sim-1", ("vdc",))]
    assert len(p.warnings) == 1 and "io.f at local:io.f was not reachable" in p.warnings[0]
    assert "CanHandle failed: UNAVAILABLE: CanHandle exploded" in p.warnings[0]
    assert len(p.warnings[0]) < 600  # the driver's 10 kB text is cut
    # A disk no answering driver claims and no native snapshot holds might be the
    # failing driver's: UNAVAILABLE, naming it and the disk.
    vm = VM(id="vm1", volumes=(A1, vol("vde", "f://9"), FILE))
    with pytest.raises(Unavailable) as caught:
        await plan(vm, drivers)
    assert caught.value.reason == "DRIVER_UNREACHABLE"
    assert "disk vde (f://9): no serving driver claims it" in caught.value.message
    assert "io.f at local:io.f: CanHandle failed: UNAVAILABLE" in caught.value.message
    assert caught.value.metadata == {"drivers": "io.f"}


async def test_a_driver_that_raises_anything_is_isolated() -> None:
    drivers = await entries(Fake("io.a", "a"), Fake("io.k", "k", behaviour="crash"))
    p = await plan(VM1, drivers)
    assert layout(p) == [("io.a", ("vda", "vdb")), ("sim-1", ("vdc",))]
    assert "KeyError" in p.warnings[0]


async def test_a_hanging_driver_costs_at_most_its_deadline() -> None:
    hang = Fake("io.h", "h", behaviour="hang")
    drivers = await entries(Fake("io.a", "a"), hang)
    p = await plan(VM1, drivers)
    # The deadline was applied: the call was cancelled, and the plan says so.
    assert hang.asked == 1 and hang.cancelled
    assert f"no CanHandle answer within {TIMEOUT:g} s" in p.warnings[0]
    assert layout(p) == [("io.a", ("vda", "vdb")), ("sim-1", ("vdc",))]
    # A disk it took before fails the take, naming it.
    with pytest.raises(Unavailable, match=r"disk vdc \(file:///3\): driver io.h snapshotted it"):
        await plan(VM1, drivers, {"file:///3": "io.h"})


async def test_a_driver_that_is_not_serving_is_not_asked() -> None:
    down = Fake("io.d", "d", behaviour="down")
    drivers = await entries(Fake("io.a", "a"), down)
    assert drivers[1].health is Health.NOT_SERVING
    p = await plan(VM1, drivers)
    assert down.asked == 0
    assert p.warnings[0].startswith(
        "driver io.d at local:io.d was not reachable (not serving: array gone)"
    )


async def test_a_disk_whose_owner_is_down_fails_even_if_native_could_take_it() -> None:
    down = Fake("io.d", "d", behaviour="down")
    drivers = await entries(Fake("io.a", "a"), down)
    with pytest.raises(Unavailable) as caught:
        await plan(VM1, drivers, {"file:///3": "io.d"})
    assert caught.value.reason == "DRIVER_UNREACHABLE"
    assert caught.value.message.startswith(
        "cannot plan a snapshot of VM vm1: disk vdc (file:///3): driver io.d snapshotted it "
        "before and is not reachable (not serving: array gone)"
    )
    assert "vmsnap drivers remove NAME" in caught.value.message
    assert caught.value.metadata == {"drivers": "io.d"}
    # Even when another serving driver would claim it.
    with pytest.raises(Unavailable, match=r"disk vda \(a://1\): driver io.d snapshotted it"):
        await plan(VM1, drivers, {"a://1": "io.d"})


async def test_a_recorded_owner_that_is_not_registered_is_unreachable() -> None:
    drivers = await entries(Fake("io.a", "a"))
    with pytest.raises(Unavailable, match=r"driver io.gone .* \(not registered under that name\)"):
        await plan(VM1, drivers, {"a://1": "io.gone"})


async def test_an_owner_that_answers_may_give_a_disk_up_with_a_warning() -> None:
    drivers = await entries(Fake("io.a", "a"), Fake("io.b", "b"))
    p = await plan(VM1, drivers, {"file:///3": "io.b", "a://1": "io.b"})
    assert layout(p) == [("io.a", ("vda", "vdb")), ("sim-1", ("vdc",))]
    assert any("disk vdc (file:///3) was snapshotted by driver io.b" in w for w in p.warnings)
    assert any("disk vda (a://1) was snapshotted by driver io.b" in w for w in p.warnings)


# --- memory -------------------------------------------------------------------------------


async def test_memory_rules() -> None:
    only_native = VM(id="v", volumes=(FILE,))
    with pytest.raises(FailedPrecondition, match="cannot include memory"):
        await plan(only_native, [], memory=True, memory_supported=False)
    p = await plan(only_native, await entries(Fake("io.a", "a")), memory=True)
    assert layout(p) == [("sim-1", ("vdc",))]
    with pytest.raises(FailedPrecondition, match=r"claimed by storage drivers: vda by io.a"):
        await plan(VM1, await entries(Fake("io.a", "a")), memory=True)


async def test_memory_with_array_disks_plans_drivers_and_the_hypervisor() -> None:
    """An agent that saves RAM to a file beside the disks: the drivers keep their disks,
    the hypervisor group holds the RAM (and the local disks), a pause is the freeze."""
    p = await plan(VM1, await entries(Fake("io.a", "a")), memory=True, with_arrays=True)
    assert layout(p) == [("io.a", ("vda", "vdb")), ("sim-1", ("vdc",))]
    assert needs_freeze(p.groups, QuiescePolicy.OFF, VMState.RUNNING, {}, include_memory=True)
    arrays_only = VM(id="v", volumes=(A1,))
    p = await plan(arrays_only, await entries(Fake("io.a", "a")), memory=True, with_arrays=True)
    assert layout(p) == [("io.a", ("vda",)), ("sim-1", ())]  # the RAM alone
    native = await plan(VM(id="v", volumes=(FILE,)), [], memory=True, with_arrays=True)
    # Hypervisor alone: QEMU pauses inside its own snapshot, no separate freeze.
    assert not needs_freeze(
        native.groups, QuiescePolicy.OFF, VMState.RUNNING, {}, include_memory=True
    )


# --- freeze and settings ------------------------------------------------------------------


async def test_freeze_only_when_needed() -> None:
    p = await plan(VM1, await entries(Fake("x.example.a", "a")))
    caps = {"x.example.a": frozenset({Capability.CONSISTENT_GROUP})}
    assert needs_freeze(p.groups, QuiescePolicy.OFF, VMState.RUNNING, caps)  # two groups
    one = p.groups[:1]
    assert not needs_freeze(one, QuiescePolicy.OFF, VMState.RUNNING, caps)  # consistent group
    assert needs_freeze(one, QuiescePolicy.OFF, VMState.RUNNING, {"x.example.a": frozenset()})
    assert needs_freeze(one, QuiescePolicy.BEST_EFFORT, VMState.RUNNING, caps)
    # A memory snapshot is never guest-frozen first (it would come back frozen): the
    # hypervisor alone pauses inside its own save; with arrays, the "freeze" is the
    # pause with the RAM saved (the take picks PAUSE_AND_SAVE_MEMORY).
    native = tuple(g for g in p.groups if g.kind is GroupKind.HYPERVISOR)
    assert not needs_freeze(
        native, QuiescePolicy.REQUIRED, VMState.RUNNING, caps, include_memory=True
    )
    assert needs_freeze(one, QuiescePolicy.REQUIRED, VMState.RUNNING, caps, include_memory=True)
    assert not needs_freeze(p.groups, QuiescePolicy.REQUIRED, VMState.STOPPED, caps)


def test_the_can_handle_deadline_is_a_bounded_setting() -> None:
    assert Settings().can_handle_timeout_seconds == 2.0
    assert parse({"host": {"can_handle_timeout_seconds": 0.5}}).settings.can_handle_timeout_seconds
    with pytest.raises(ConfigError, match=r"host.can_handle_timeout_seconds: must be a number"):
        parse({"host": {"can_handle_timeout_seconds": 600}})
