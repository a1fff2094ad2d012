"""The registry: one guard that covers every interface method, registration
rules (no name takeover, a failed registration changes nothing), and a health
loop that no peer can stop. Over real sockets where the wire matters."""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import inspect
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from tests.fakes.driver import FakeDriver, Options
from tests.support.procs import Proc, wait_serving
from vmsnap_agent.sim import SimAgent
from vmsnap_host.registry import (
    AGENT,
    DRIVER,
    Health,
    Peer,
    PeerKind,
    Registry,
    guard_class,
    guarded,
    interface_methods,
)
from vmsnap_host.store import Store
from vmsnap_sdk import HypervisorAgent, StorageDriver
from vmsnap_sdk._proto.driver.v1 import driver_pb2, driver_pb2_grpc
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_sdk._proto.host.v1 import host_pb2_grpc
from vmsnap_sdk.errors import (
    FailedPrecondition,
    Unavailable,
    VMSnapError,
)

NAME = "io.vmsnap.test.a"

# --- the guard ------------------------------------------------------------------------


class _Recorder:
    """Any method, recording its calls; ``raises`` makes every call raise it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.raises: BaseException | None = None

    def __getattr__(self, name: str) -> Callable[..., Any]:
        async def method(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            if self.raises is not None:
                raise self.raises
            return ("answer of", name)

        return method


def _peer(kind: PeerKind[Any, Any], health: Health = Health.SERVING) -> Peer[Any, Any]:
    return Peer(kind, "local:x", None, _Recorder(), name="x", health=health, message="down")


def _public_methods(interface: type) -> list[str]:
    # Enumerated here independently of the registry's own listing.
    return [n for n, v in inspect.getmembers(interface) if callable(v) and not n.startswith("_")]


class _ExtendedAgent(HypervisorAgent):
    """An interface that grew a method (as list_quiesces will): no guard edit."""

    @abc.abstractmethod
    async def list_quiesces(self, vm_id: str) -> list[str]: ...


@pytest.mark.parametrize(
    "kind", [DRIVER, AGENT, dataclasses.replace(AGENT, interface=_ExtendedAgent)]
)
async def test_every_interface_method_is_guarded(kind: PeerKind[Any, Any]) -> None:
    methods = _public_methods(kind.interface)
    assert methods and set(interface_methods(kind.interface)) == set(methods)
    cls = guard_class(kind.interface)
    for name in methods:
        # Overridden by the guard, not inherited from the interface (a default
        # implementation there would answer without the peer being asked).
        assert name in vars(cls), f"{name} is not guarded"

    down = _peer(kind, Health.NOT_SERVING)
    up = _peer(kind)
    for name in methods:
        arity = len(inspect.signature(getattr(kind.interface, name)).parameters) - 1
        args = tuple(object() for _ in range(arity))
        with pytest.raises(Unavailable, match=r"is not serving \(down\)"):
            await getattr(guarded(down), name)(*args)
        assert await getattr(guarded(up), name)(*args) == ("answer of", name)
        assert cast(_Recorder, up.impl).calls[-1] == (name, args, {})
    assert cast(_Recorder, down.impl).calls == []


def test_a_method_the_guard_cannot_cover_fails_loudly() -> None:
    class Sync(StorageDriver):
        def describe(self) -> str:  # not async: the guard must refuse, not skip it
            return ""

    with pytest.raises(TypeError, match=r"Sync.describe is not an async method"):
        guard_class(Sync)


async def test_a_transient_error_rechecks_the_peer_at_once() -> None:
    peer = _peer(DRIVER)
    troubles: list[int] = []
    peer.on_trouble = lambda: troubles.append(1)
    cast(_Recorder, peer.impl).raises = Unavailable("link gone")
    with pytest.raises(Unavailable, match="link gone"):
        await guarded(peer).probe()
    assert troubles == [1]
    # Any other error passes through unchanged (the executor decides what it means).
    cast(_Recorder, peer.impl).raises = KeyError("bug")
    with pytest.raises(KeyError):
        await guarded(peer).delete_snapshot("s", None)
    assert troubles == [1]


# --- health, in process -------------------------------------------------------------


async def test_an_unhealthy_driver_fails_fast_naming_itself_and_comes_back() -> None:
    driver = FakeDriver(Options(name=NAME))
    registry = Registry()
    entry = await registry.add_driver("local:a", driver=driver)
    assert entry.health is Health.SERVING and entry.contract_version == "v1"

    async def down() -> object:
        raise Unavailable("array gone")

    driver.probe = down  # type: ignore[method-assign]
    await registry.check_all()
    assert entry.health is Health.NOT_SERVING
    with pytest.raises(Unavailable, match=rf"{NAME} at local:a is not serving \(array gone\)"):
        await registry.driver(NAME).delete_snapshot("x", None)
    del driver.probe
    await registry.check_all()
    await registry.driver(NAME).delete_snapshot("x", None)


async def test_a_driver_of_another_contract_version_is_not_served() -> None:
    driver = FakeDriver(Options(name=NAME))
    real = driver.get_info

    async def v2() -> object:
        info = await real()
        return type(info)(info.name, info.vendor_version, contract_versions=("v2",))

    driver.get_info = v2  # type: ignore[assignment,method-assign]
    entry = await Registry().add_driver("local:a", driver=driver)
    assert entry.health is Health.NOT_SERVING and "needs v1" in entry.message


async def test_any_exception_in_one_check_marks_only_that_peer() -> None:
    good, bad = FakeDriver(Options(name=NAME)), FakeDriver(Options(name="io.vmsnap.test.b"))
    registry = Registry()
    await registry.add_driver("local:a", driver=good)
    entry = await registry.add_driver("local:b", driver=bad)

    async def broken() -> object:
        raise RuntimeError("y" * 1_000_000)

    bad.get_info = broken  # type: ignore[assignment,method-assign]
    await registry.check_all()  # does not raise
    assert entry.health is Health.NOT_SERVING
    assert entry.message.startswith("unexpected answer: RuntimeError: yyy")
    assert len(entry.message) <= 300
    assert registry.driver_entry(NAME) is not None
    assert [e.health for e in registry.drivers()] == [Health.SERVING, Health.NOT_SERVING]


async def test_a_peer_may_not_change_its_name_by_a_health_check() -> None:
    a, b = FakeDriver(Options(name=NAME)), FakeDriver(Options(name="io.vmsnap.test.b"))
    registry = Registry()
    await registry.add_driver("local:a", driver=a)
    entry_b = await registry.add_driver("local:b", driver=b)
    b.o.name = NAME  # restarted announcing a's name
    await registry.check_all()
    assert entry_b.health is Health.NOT_SERVING and entry_b.name == "io.vmsnap.test.b"
    assert f"now announces the name {NAME}" in entry_b.message
    entry = registry.driver_entry(NAME)
    assert entry is not None and entry.address == "local:a"


async def test_a_peer_down_since_start_may_not_take_a_name_in_use() -> None:
    a, late = FakeDriver(Options(name=NAME)), FakeDriver(Options(name=NAME))
    calls = {"n": 0}
    real = late.get_info

    async def first_down() -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise Unavailable("not started yet")
        return await real()

    late.get_info = first_down  # type: ignore[assignment,method-assign]
    registry = Registry()
    await registry.add_driver("local:a", driver=a)
    entry = await registry.add_driver("local:late", driver=late)  # startup: kept, unnamed
    assert entry.name == "" and entry.health is Health.NOT_SERVING
    await registry.check_all()
    assert entry.health is Health.NOT_SERVING and entry.name == ""
    assert "which the driver at local:a has" in entry.message
    assert f"vmsnap drivers remove {NAME}" in entry.message


# --- registration rules ----------------------------------------------------------------


async def test_a_registration_may_not_take_the_name_of_a_serving_driver() -> None:
    a, impostor = FakeDriver(Options(name=NAME)), FakeDriver(Options(name=NAME))
    registry = Registry()
    await registry.add_driver("local:a", driver=a)
    with pytest.raises(FailedPrecondition) as caught:
        await registry.add_driver("local:c", driver=impostor)
    assert caught.value.reason == "DRIVER_NAME_IN_USE"
    assert "the driver at local:a has and which is serving" in caught.value.message
    assert f"vmsnap drivers remove {NAME}" in caught.value.message
    assert [e.address for e in registry.drivers()] == ["local:a"]
    await registry.driver(NAME).delete_snapshot("s1", None)
    assert a.calls == [["delete", "s1"]] and impostor.calls == []


async def test_a_failed_registration_at_a_new_address_keeps_the_working_driver() -> None:
    a, broken = FakeDriver(Options(name=NAME)), FakeDriver(Options(name=NAME))

    async def down() -> object:
        raise Unavailable("array gone")

    broken.probe = down  # type: ignore[method-assign]
    registry = Registry()
    await registry.add_driver("local:a", driver=a)
    # As RegisterDriver does it: the new one announces the name but fails its checks.
    with pytest.raises(VMSnapError):
        await registry.add_driver("local:c", driver=broken, require_serving=True)
    entry = registry.driver_entry(NAME)
    assert entry is not None and entry.address == "local:a"
    assert entry.health is Health.SERVING
    # The new address does not answer at all: nothing changes either.
    with pytest.raises(Unavailable) as caught:
        await registry.add_driver("unix:///nonexistent/x.sock", require_serving=True)
    assert caught.value.reason == "DRIVER_NOT_SERVING"
    assert [e.address for e in registry.drivers()] == ["local:a"]
    await registry.close()


async def test_a_name_moves_when_the_old_address_is_down() -> None:
    old, new = FakeDriver(Options(name=NAME)), FakeDriver(Options(name=NAME))
    registry = Registry()
    await registry.add_driver("local:a", driver=old)

    async def down() -> object:
        raise Unavailable("host gone")

    old.get_info = down  # type: ignore[assignment,method-assign]
    entry = await registry.add_driver("local:c", driver=new, require_serving=True)
    assert [e.address for e in registry.drivers()] == ["local:c"]
    assert entry.health is Health.SERVING
    await registry.driver(NAME).delete_snapshot("s1", None)
    assert new.calls == [["delete", "s1"]]


async def test_re_registering_the_same_address_replaces_the_entry() -> None:
    driver = FakeDriver(Options(name=NAME))
    registry = Registry()
    first = await registry.add_driver("local:a", driver=driver, order=0)
    second = await registry.add_driver("local:a", driver=driver, order=5)
    assert registry.drivers() == [second] and second is not first and second.order == 5


async def test_agents_follow_the_same_rules(tmp_path: Path) -> None:
    registry = Registry()
    agents = [SimAgent(tmp_path / str(i), name="sim-1") for i in range(2)]
    for agent in agents:
        await agent.start()
    try:
        entry = await registry.add_agent("local:one", agent=agents[0])
        assert entry.health is Health.SERVING
        with pytest.raises(FailedPrecondition) as caught:
            await registry.add_agent("local:two", agent=agents[1])
        assert caught.value.reason == "AGENT_NAME_IN_USE"
        assert "vmsnap agents remove sim-1" in caught.value.message
        assert [e.address for e in registry.agents()] == ["local:one"]
    finally:
        for agent in agents:
            await agent.close()
        await registry.close()


# --- over real sockets ----------------------------------------------------------------


class _GarbageTrailer(driver_pb2_grpc.StorageDriverServicer):
    """A driver written against the .proto alone, whose error details are garbage."""

    def __init__(self) -> None:
        self.garbage = False

    async def GetDriverInfo(self, request: Any, context: Any) -> Any:
        if self.garbage:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "busy",
                trailing_metadata=(("grpc-status-details-bin", b"\xff\x00not a status"),),
            )
        return driver_pb2.GetDriverInfoResponse(
            name="io.vmsnap.test.garbage", vendor_version="0.0.1", contract_versions=["v1"]
        )

    async def Probe(self, request: Any, context: Any) -> Any:
        return driver_pb2.ProbeResponse(ready=True)


@pytest.fixture
async def garbage_server(sockdir: Path) -> AsyncIterator[tuple[str, _GarbageTrailer]]:
    servicer = _GarbageTrailer()
    server = grpc.aio.server()
    driver_pb2_grpc.add_StorageDriverServicer_to_server(servicer, server)
    health = HealthServicer()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    address = f"unix://{sockdir}/garbage.sock"
    server.add_insecure_port(address)
    await server.start()
    yield address, servicer
    await server.stop(None)


@pytest.fixture
def driver_proc(sockdir: Path, tmp_path: Path) -> Iterator[tuple[str, Proc]]:
    address = f"unix://{sockdir}/a.sock"
    proc = Proc(
        [sys.executable, "-m", "tests.fakes.driver", "--listen", address, "--name", NAME],
        tmp_path / "a.log",
    )
    try:
        wait_serving(address)
        yield address, proc
    finally:
        proc.stop(5)


async def _eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.05)


async def test_a_garbage_status_trailer_does_not_stop_the_health_loop(
    garbage_server: tuple[str, _GarbageTrailer], driver_proc: tuple[str, Proc]
) -> None:
    (bad_address, servicer), (good_address, proc) = garbage_server, driver_proc
    registry = Registry(call_timeout=2.0)
    good = await registry.add_driver(good_address)
    bad = await registry.add_driver(bad_address)
    assert good.health is Health.SERVING and bad.health is Health.SERVING
    loop = asyncio.create_task(registry.run_health_loop(0.05))
    try:
        servicer.garbage = True
        await _eventually(lambda: bad.health is Health.NOT_SERVING, "the garbage one is down")
        assert len(bad.message) <= 300
        proc.kill()
        await _eventually(
            lambda: good.health is Health.NOT_SERVING, "the killed driver is NOT_SERVING"
        )
        assert not loop.done()
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
        await registry.close()


async def test_register_and_remove_over_the_api(
    sockdir: Path, tmp_path: Path, driver_proc: tuple[str, Proc]
) -> None:
    """RegisterDriver refuses a name takeover with a message that says how to move
    it; RemoveDriver forgets the stored registration and the volumes' owner."""
    from vmsnap_host.api.servicer import HostServicer
    from vmsnap_sdk import Server

    good_address, _ = driver_proc
    impostor_address = f"unix://{sockdir}/c.sock"
    impostor = Proc(
        [sys.executable, "-m", "tests.fakes.driver", "--listen", impostor_address, "--name", NAME],
        tmp_path / "c.log",
    )
    store = Store.open_sqlite(tmp_path / "host.db")
    registry = Registry(call_timeout=2.0)
    server = Server(f"unix://{sockdir}/host.sock", grace_seconds=0)
    server.add_service(
        "vmsnap.host.v1.VMSnapshotService",
        HostServicer(cast(Any, None), registry, store),
        host_pb2_grpc.add_VMSnapshotServiceServicer_to_server,
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix://{sockdir}/host.sock")
    host = host_pb2_grpc.VMSnapshotServiceStub(channel)
    try:
        wait_serving(impostor_address)
        await host.RegisterDriver(pb.RegisterDriverRequest(address=good_address), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await host.RegisterDriver(
                pb.RegisterDriverRequest(address=impostor_address), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"the driver at {good_address} has" in (caught.value.details() or "")
        assert f"vmsnap drivers remove {NAME}" in (caught.value.details() or "")
        listed = await host.ListDrivers(pb.ListDriversRequest(), timeout=10)
        assert [(d.name, d.address) for d in listed.drivers] == [(NAME, good_address)]
        assert [r[:2] for r in store.registrations("driver")] == [(good_address, NAME)]

        await store.write(store.w_set_owners({"a://pool/1": NAME, "b://x": "other"}))
        await host.RemoveDriver(pb.RemoveDriverRequest(name=NAME), timeout=10)
        assert store.registrations("driver") == []
        assert store.volume_owners(["a://pool/1", "b://x"]) == {"b://x": "other"}
        # Now the name is free: the driver at the new address may take it.
        await host.RegisterDriver(pb.RegisterDriverRequest(address=impostor_address), timeout=10)
        assert [r[:2] for r in store.registrations("driver")] == [(impostor_address, NAME)]
        # A driver that moved: the old address is down, the name follows the new
        # one, and the stored registration of the old address goes with it.
        impostor.kill()
        await host.RegisterDriver(pb.RegisterDriverRequest(address=good_address), timeout=10)
        assert [r[:2] for r in store.registrations("driver")] == [(good_address, NAME)]
        listed = await host.ListDrivers(pb.ListDriversRequest(), timeout=10)
        assert [(d.name, d.address) for d in listed.drivers] == [(NAME, good_address)]
    finally:
        impostor.stop(5)
        await channel.close()
        await server.stop(0)
        await registry.close()
        store.close()
