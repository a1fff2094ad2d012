"""Drivers and agents, found by address: identity, contract version, health.

Drivers and agents are both *peers*: one :class:`Peer` type, parametrised by
the domain interface it serves (:class:`~vmsnap_sdk.StorageDriver` or
:class:`~vmsnap_sdk.HypervisorAgent`) and by its info. What differs between
the two kinds is data (:class:`PeerKind`), not code.

Each registration is checked at once (GetDriverInfo / GetAgentInfo, the
contract version negotiated, gRPC health, Probe) and again every
``health_interval``. Each check is isolated: whatever one peer answers
(a garbage status trailer, a hang, any exception) marks that peer NOT_SERVING
with a bounded message, never stops the loop that checks the others.

The rest of the host reaches a peer only through its *guard* (:func:`guarded`),
built from the interface itself so that no method can be left out: every
public method fails fast with UNAVAILABLE naming the peer while its last check
failed (a dead array must not eat a take's freeze window in connect timeouts).
gRPC channels reconnect by themselves; the next passing check lets calls
through again.

Names: a peer's name is what it announces at registration. A registration may
not take over the name of another peer that is serving; a name moves to a new
address only when the old one is down and the new one passes its checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import inspect
import itertools
import logging
import time
import types
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vmsnap_host import checks, metrics
from vmsnap_host.peers import check_pin
from vmsnap_sdk import (
    VM,
    AgentClient,
    AgentInfo,
    Capability,
    ClientTLS,
    DriverClient,
    DriverInfo,
    HypervisorAgent,
    StorageDriver,
    VMState,
)
from vmsnap_sdk.errors import (
    FailedPrecondition,
    NotFound,
    Reason,
    TransientError,
    Unavailable,
    VMSnapError,
)
from vmsnap_sdk.metrics import child

log = logging.getLogger("vmsnap.host.registry")

CONTRACT_VERSION = "v1"
#: The bound of one whole check of one peer (info, health, probe).
_CHECK_TIMEOUT = 5.0
#: The longest text of a peer's (or an exception's) that goes into a health
#: message or an error: a hostile peer must not fill the catalog or the logs.
MAX_PEER_TEXT = 300


class _Info(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def contract_versions(self) -> tuple[str, ...]: ...


P = TypeVar("P")
I = TypeVar("I", bound=_Info)  # noqa: E741 — the info type, next to P


class Health(enum.Enum):
    UNSPECIFIED = 0
    SERVING = 1
    NOT_SERVING = 2


def _cut(text: str, limit: int = MAX_PEER_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- what differs between a driver and an agent ----------------------------------


@dataclass(frozen=True, eq=False)
class PeerKind(Generic[P, I]):
    """A kind of peer: its word in messages, interface, client and readiness check."""

    word: str
    #: The domain interface (abstract: typed loosely, mypy wants concrete type[P]).
    interface: type[Any]
    #: (address, tls, call timeout) → a gRPC client and its channel.
    connect: Callable[[str, ClientTLS | None, float], tuple[P, grpc.aio.Channel]]
    get_info: Callable[[P], Awaitable[I]]
    #: "" when the peer says it is ready, else why not (a driver's Probe).
    not_ready: Callable[[P], Awaitable[str]]
    #: The CLI command that removes one (named in messages).
    remove_command: str
    #: ErrorInfo reasons: not serving, and its name taken by another serving peer.
    not_serving: Reason
    name_in_use: Reason


def _connect_driver(
    address: str, tls: ClientTLS | None, timeout: float
) -> tuple[StorageDriver, grpc.aio.Channel]:
    client = DriverClient.connect(address, tls=tls, timeout=timeout)
    return client, client.channel


def _connect_agent(
    address: str, tls: ClientTLS | None, timeout: float
) -> tuple[HypervisorAgent, grpc.aio.Channel]:
    client = AgentClient.connect(address, tls=tls, timeout=timeout)
    return client, client.channel


async def _driver_info(driver: StorageDriver) -> DriverInfo:
    return await driver.get_info()


async def _agent_info(agent: HypervisorAgent) -> AgentInfo:
    return await agent.get_info()


async def _probe(driver: StorageDriver) -> str:
    probe = await driver.probe()
    return "" if probe.ready else f"probe: {probe.message or 'the array is not ready'}"


async def _always_ready(_agent: HypervisorAgent) -> str:
    return ""


DRIVER: PeerKind[StorageDriver, DriverInfo] = PeerKind(
    "driver",
    StorageDriver,
    _connect_driver,
    _driver_info,
    _probe,
    "vmsnap drivers remove",
    Reason.DRIVER_NOT_SERVING,
    Reason.DRIVER_NAME_IN_USE,
)
AGENT: PeerKind[HypervisorAgent, AgentInfo] = PeerKind(
    "agent",
    HypervisorAgent,
    _connect_agent,
    _agent_info,
    _always_ready,
    "vmsnap agents remove",
    Reason.AGENT_NOT_SERVING,
    Reason.AGENT_NAME_IN_USE,
)


def _nothing() -> None:
    return None


#: Peer generations: unique across registrations in this process.
_GENERATIONS = itertools.count(1)


@dataclass(eq=False)
class Peer(Generic[P, I]):
    """One registered driver or agent (identity compares, not fields)."""

    kind: PeerKind[P, I]
    address: str
    tls: ClientTLS | None
    impl: P
    channel: grpc.aio.Channel | None = None
    order: int = 0
    name: str = ""
    info: I | None = None
    health: Health = Health.UNSPECIFIED
    message: str = "not checked yet"
    last_check: datetime | None = None
    contract_version: str = ""
    #: Called when a call failed in a way that may mean the link is gone.
    on_trouble: Callable[[], None] = field(default=_nothing)
    #: New for each registration, moved on when the health or the announced info
    #: changes: answers cached from this peer (CanHandle) are valid for one
    #: generation only (:mod:`vmsnap_host.decisions`).
    generation: int = field(default_factory=lambda: next(_GENERATIONS))

    @property
    def label(self) -> str:
        return f"{self.name or '(unnamed)'} at {self.address}"

    def require_serving(self) -> None:
        if self.health is not Health.SERVING:
            raise Unavailable(
                f"{self.kind.word} {self.label} is not serving ({self.message}); "
                "calls resume when its health check passes",
                reason=self.kind.not_serving,
            )


DriverEntry = Peer[StorageDriver, DriverInfo]
AgentEntry = Peer[HypervisorAgent, AgentInfo]


# --- the guard ----------------------------------------------------------------------


def interface_methods(interface: type) -> tuple[str, ...]:
    """Every public method of a domain interface, inherited ones included.

    Raises TypeError for a public method that is not ``async``: the guard could
    not cover it, and an unguarded method must be impossible, not silent.
    """
    names = []
    for name in sorted(dir(interface)):
        if name.startswith("_"):
            continue
        value = inspect.getattr_static(interface, name)
        if not callable(value) and not isinstance(value, staticmethod | classmethod):
            continue  # data (a constant): nothing to call, nothing to guard
        if not inspect.iscoroutinefunction(value):
            raise TypeError(
                f"{interface.__name__}.{name} is not an async method: the registry's guard "
                "covers async methods only (make it async)"
            )
        names.append(name)
    return tuple(names)


def _forward(interface: type, name: str) -> Callable[..., Awaitable[Any]]:
    declared = getattr(interface, name)

    # updated=() keeps __isabstractmethod__ off the wrapper: the guard class must
    # be concrete; the name, doc and signature (through __wrapped__) are kept.
    @functools.wraps(declared, updated=())
    async def call(self: _Guard, *args: Any, **kwargs: Any) -> Any:
        peer = self.peer
        peer.require_serving()
        # Every host → peer call passes here: the one place to time and count them.
        start = time.monotonic()
        code = "OK"
        try:
            return await getattr(peer.impl, name)(*args, **kwargs)
        except TransientError as exc:
            code = exc.code.name
            # The link may be gone: check now rather than at the next tick, so later
            # calls fail fast (or pass again) on fresh information.
            peer.on_trouble()
            raise
        except VMSnapError as exc:
            code = exc.code.name
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "UNKNOWN"
            raise
        finally:
            labels = (peer.kind.word, peer.name or peer.address, name)
            child(metrics.PEER_CALL_SECONDS, *labels).observe(time.monotonic() - start)
            if code != "OK":
                child(metrics.PEER_CALL_ERRORS, *labels, code).inc()

    return call


class _Guard:
    """Base of the generated guard classes (see :func:`guard_class`)."""

    def __init__(self, peer: Peer[Any, Any]) -> None:
        self.peer = peer

    def __repr__(self) -> str:
        return f"<guarded {self.peer.kind.word} {self.peer.label}>"


_GUARDS: dict[type, type] = {}


def guard_class(interface: type[Any]) -> type[Any]:
    """The guard of ``interface``: a subclass whose every public method (as
    :func:`interface_methods` lists them) checks health and forwards to the peer."""
    cls = _GUARDS.get(interface)
    if cls is None:
        methods = {name: _forward(interface, name) for name in interface_methods(interface)}
        cls = types.new_class(
            f"Guarded{interface.__name__}",
            (_Guard, interface),
            exec_body=lambda ns: ns.update(methods, __module__=__name__),
        )
        _GUARDS[interface] = cls
    return cls


def guarded(peer: Peer[P, Any]) -> P:
    """The peer as its domain interface, behind the guard."""
    return cast(P, guard_class(peer.kind.interface)(peer))


# --- checks ---------------------------------------------------------------------------


async def _grpc_health(channel: grpc.aio.Channel | None) -> None:
    """The standard health check of a remote peer (in-process peers have none)."""
    if channel is None:
        return
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=_CHECK_TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        raise Unavailable(f"health check failed: {exc.code().name}") from exc
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise Unavailable("grpc.health.v1 reports NOT_SERVING")


def _negotiate(versions: Sequence[str]) -> str:
    if CONTRACT_VERSION not in versions:
        raise FailedPrecondition(
            f"speaks contract versions {_cut(str(list(versions)), 100)}; this host needs "
            f"{CONTRACT_VERSION}",
            reason=Reason.CONTRACT_VERSION_MISMATCH,
        )
    return CONTRACT_VERSION


def _describe(exc: BaseException) -> str:
    if isinstance(exc, VMSnapError):
        return _cut(exc.message)
    if isinstance(exc, TimeoutError):
        return f"no answer within the check timeout ({_CHECK_TIMEOUT:g} s)"
    return _cut(f"unexpected answer: {type(exc).__name__}: {exc}")


async def _close(peer: Peer[Any, Any]) -> None:
    if peer.channel is not None:
        await peer.channel.close(None)


#: How many VMs' last descriptions a registry keeps (the least recently found go).
DESCRIPTIONS_KEPT = 20_000  # about 1 KiB each


class Registry:
    """Every driver and agent the host knows, with their last health check."""

    def __init__(self, call_timeout: float = 30.0) -> None:
        self.call_timeout = call_timeout
        self._drivers: dict[str, DriverEntry] = {}  # by address
        self._agents: dict[str, AgentEntry] = {}  # by address
        self._vm_agent: dict[str, str] = {}  # vm id → agent address (a cache)
        #: The last description of each RUNNING VM found (find_vm's), oldest first:
        #: admission plans a take on it while a fresh one is asked for beside the
        #: admission's commit (docs/design.md, "Admission on the last description").
        self._described: dict[str, VM] = {}
        self._pending: set[asyncio.Task[Any]] = set()

    def _table(self, kind: PeerKind[P, I]) -> dict[str, Peer[P, I]]:
        table: Any = self._drivers if kind is DRIVER else self._agents
        return cast(dict[str, Peer[P, I]], table)

    # --- registration -------------------------------------------------------------

    async def add_driver(
        self,
        address: str,
        *,
        order: int = 0,
        tls: ClientTLS | None = None,
        driver: StorageDriver | None = None,
        require_serving: bool = False,
    ) -> DriverEntry:
        """Register (or update) a driver and check it once; see :meth:`_add`.
        ``driver`` injects an in-process implementation (tests); otherwise a gRPC
        client is made."""
        return await self._add(DRIVER, address, order, tls, driver, require_serving)

    async def add_agent(
        self,
        address: str,
        *,
        tls: ClientTLS | None = None,
        agent: HypervisorAgent | None = None,
        require_serving: bool = False,
    ) -> AgentEntry:
        """Register (or update) an agent and check it once; see :meth:`_add`."""
        return await self._add(AGENT, address, 0, tls, agent, require_serving)

    async def _add(
        self,
        kind: PeerKind[P, I],
        address: str,
        order: int,
        tls: ClientTLS | None,
        impl: P | None,
        require_serving: bool,
    ) -> Peer[P, I]:
        """The new peer is checked before it replaces anything, then:

        - it announces the name of a peer at another address that is serving (checked
          again now): refused, FAILED_PRECONDITION ``<KIND>_NAME_IN_USE``; nothing
          changes;
        - ``require_serving`` (an API registration) and it fails its checks: refused,
          UNAVAILABLE ``<KIND>_NOT_SERVING``; nothing changes, the peer already at
          that address (if any) included;
        - it announces the name of a peer at another address that is down: that one
          moves here if the new one passes its checks (else refused as above);
        - otherwise it replaces whatever was at the same address (registering at
          startup keeps a peer that is down: the health loop brings it back).
        """
        table = self._table(kind)
        channel = None
        if impl is None:
            impl, channel = kind.connect(address, tls, self.call_timeout)
        entry: Peer[P, I] = Peer(kind, address, tls, impl, channel=channel, order=order)
        entry.on_trouble = lambda: self._recheck(entry)
        await self.check(entry)
        serving = entry.health is Health.SERVING

        rival = next(
            (p for a, p in table.items() if a != address and entry.name and p.name == entry.name),
            None,
        )
        if rival is not None:
            await self.check(rival)  # its last check may be stale: decide on fresh news
            if rival.health is Health.SERVING or not serving:
                await _close(entry)
                if rival.health is Health.SERVING:
                    raise FailedPrecondition(
                        f"{kind.word} at {address} announces the name {entry.name}, which the "
                        f"{kind.word} at {rival.address} has and which is serving; to move it "
                        f"here, remove it first ({kind.remove_command} {entry.name}) and "
                        "register again",
                        reason=kind.name_in_use,
                        metadata={"name": entry.name, "address": rival.address},
                    )
                raise Unavailable(
                    f"{kind.word} at {address} did not pass its checks: {entry.message}; "
                    f"{entry.name} stays registered at {rival.address}. Start it (or fix the "
                    "address or TLS settings) and register again",
                    reason=kind.not_serving,
                )
        if require_serving and not serving:
            await _close(entry)
            raise Unavailable(
                f"{kind.word} at {address} did not pass its checks: {entry.message}; start it "
                "(or fix the address or TLS settings) and register again",
                reason=kind.not_serving,
            )
        if rival is not None:
            log.info(
                "peer moved",
                extra={
                    "fields": {"peer": entry.name, "from": rival.address, "to": address},
                },
            )
            await self._remove(kind, rival.name, rival.address)
        old = table.get(address)
        table[address] = entry
        if old is not None:
            await _close(old)
        return entry

    async def remove_driver(self, name: str, *, address: str = "") -> DriverEntry | None:
        """Forget the driver of that name (or the one at ``address`` when given)."""
        return await self._remove(DRIVER, name, address)

    async def remove_agent(self, name: str, *, address: str = "") -> AgentEntry | None:
        """Forget the agent of that name (or the one at ``address`` when given)."""
        return await self._remove(AGENT, name, address)

    async def _remove(self, kind: PeerKind[P, I], name: str, address: str) -> Peer[P, I] | None:
        table = self._table(kind)
        for key, entry in list(table.items()):
            if (address and key == address) or (not address and entry.name == name):
                del table[key]
                if kind is AGENT:
                    self._vm_agent = {vm: a for vm, a in self._vm_agent.items() if a != key}
                    self._described = {
                        vm: d for vm, d in self._described.items() if vm in self._vm_agent
                    }
                await _close(entry)
                return entry
        return None

    # --- health -------------------------------------------------------------------

    def _recheck(self, entry: Peer[Any, Any]) -> None:
        task = asyncio.ensure_future(self.check(entry))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def check(self, entry: Peer[Any, Any]) -> None:
        """Check one peer now. Never raises (but for cancellation): whatever goes
        wrong marks this peer NOT_SERVING with a bounded message."""
        try:
            async with asyncio.timeout(_CHECK_TIMEOUT):
                info = await entry.kind.get_info(entry.impl)
                if isinstance(info, DriverInfo):
                    # Oversize names, labels or versions would be stored and served
                    # to every client: such a driver is not served.
                    checks.check_driver_info(entry.address, info)
                version = _negotiate(info.contract_versions)
                self._take_name(entry, info.name)
                if entry.info is not None and info != entry.info:
                    entry.generation = next(_GENERATIONS)  # upgraded or reconfigured
                entry.info, entry.contract_version = info, version
                await _grpc_health(entry.channel)
                problem = await check_pin(entry.address, entry.tls) if entry.channel else ""
                if problem:
                    raise FailedPrecondition(_cut(problem))
                problem = await entry.kind.not_ready(entry.impl)
                if problem:
                    raise Unavailable(_cut(problem))
        except Exception as exc:  # isolation: one peer's fault is its own
            if not isinstance(exc, VMSnapError | TimeoutError):
                log.warning(
                    "health check raised",
                    exc_info=True,
                    extra={"fields": {"peer": entry.label, "error": type(exc).__name__}},
                )
            self._mark(entry, Health.NOT_SERVING, _describe(exc))
            return
        self._mark(entry, Health.SERVING, "")

    def _take_name(self, entry: Peer[Any, Any], name: str) -> None:
        """A registered peer keeps the name it was registered with; an unnamed
        one (down since the host started) may not take a name another peer has."""
        if not name:
            raise FailedPrecondition("announces no name")
        if entry.name and name != entry.name:
            raise FailedPrecondition(
                f"now announces the name {_cut(name, 100)}, but was registered as "
                f"{entry.name}; register it again to accept the new name"
            )
        table = self._table(entry.kind)
        if not entry.name and table.get(entry.address) is entry:
            rival = next((p for p in table.values() if p is not entry and p.name == name), None)
            if rival is not None:
                raise FailedPrecondition(
                    f"announces the name {name}, which the {entry.kind.word} at "
                    f"{rival.address} has; remove one of them ({entry.kind.remove_command} "
                    f"{name} removes the one by name, then register the other again)"
                )
        entry.name = name

    @staticmethod
    def _mark(entry: Peer[Any, Any], health: Health, message: str) -> None:
        if entry.health is not health:
            entry.generation = next(_GENERATIONS)
            log.info(
                "health changed",
                extra={
                    "fields": {
                        "peer": entry.label,
                        "health": health.name,
                        "message": message,
                    }
                },
            )
        entry.health, entry.message = health, message
        entry.last_check = datetime.now(UTC)

    async def check_all(self) -> None:
        """Check every peer in parallel; each check is isolated (see :meth:`check`)."""
        peers: list[Peer[Any, Any]] = [*self._drivers.values(), *self._agents.values()]
        await asyncio.gather(*(self.check(p) for p in peers))

    async def run_health_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_all()
            except Exception:
                # check() isolates each peer; this only guards against a bug here
                # turning into a host whose peers are never checked again.
                log.exception("health round failed; the next round runs as planned")

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        peers: list[Peer[Any, Any]] = [*self._drivers.values(), *self._agents.values()]
        for entry in peers:
            await _close(entry)

    # --- lookups ------------------------------------------------------------------

    def drivers(self) -> list[DriverEntry]:
        """All drivers in tie-break order (configured order, then name)."""
        return sorted(self._drivers.values(), key=lambda e: (e.order, e.name, e.address))

    def healthy_drivers(self) -> list[DriverEntry]:
        return [e for e in self.drivers() if e.health is Health.SERVING]

    def driver(self, name: str) -> StorageDriver:
        """The driver of that name, guarded (fails fast when it is not serving)."""
        entry = self.driver_entry(name)
        if entry is None:
            raise Unavailable(
                f"driver {name} is not registered; register it again (RegisterDriver) to "
                "reach the snapshots it holds",
                reason=Reason.DRIVER_NOT_REGISTERED,
            )
        return guarded(entry)

    def driver_entry(self, name: str) -> DriverEntry | None:
        return next((e for e in self._drivers.values() if e.name == name), None)

    def capabilities(self, driver_name: str) -> frozenset[Capability]:
        """What the named driver advertised at its last check (none when unknown)."""
        entry = self.driver_entry(driver_name)
        return entry.info.capabilities if entry and entry.info else frozenset()

    def agents(self) -> list[AgentEntry]:
        return sorted(self._agents.values(), key=lambda e: (e.name, e.address))

    def agent(self, name: str) -> HypervisorAgent:
        """The agent of that name, guarded (fails fast when it is not serving)."""
        entry = self.agent_entry(name)
        if entry is None:
            raise Unavailable(
                f"agent {name} is not registered; register it again (RegisterAgent)",
                reason=Reason.AGENT_NOT_REGISTERED,
            )
        return guarded(entry)

    def agent_entry(self, name: str) -> AgentEntry | None:
        return next((e for e in self._agents.values() if e.name == name), None)

    def last_described(self, vm_id: str) -> tuple[AgentEntry, VM] | None:
        """The last description find_vm got of a VM that was RUNNING, with its agent,
        while that agent is serving; None otherwise. A guess: whoever plans on it
        must check it against a fresh description before touching the VM."""
        vm = self._described.get(vm_id)
        entry = self._agents.get(self._vm_agent.get(vm_id, ""))
        if vm is None or entry is None or entry.health is not Health.SERVING:
            return None
        return entry, vm

    def forget_description(self, vm_id: str) -> None:
        """Drop a VM's last description (it is known to be wrong, or gone)."""
        self._described.pop(vm_id, None)

    def _remember(self, vm: VM) -> None:
        self._described.pop(vm.id, None)
        if vm.state is not VMState.RUNNING:
            # Only a RUNNING VM passes every admission check: a guess of another
            # state could refuse a create that the VM as it is now allows.
            return
        self._described[vm.id] = vm
        if len(self._described) > DESCRIPTIONS_KEPT:
            del self._described[next(iter(self._described))]

    async def find_vm(self, vm_id: str) -> tuple[AgentEntry, VM]:
        """The agent that runs a VM, and the VM as it describes it now."""
        cached = self._vm_agent.get(vm_id)
        entries = sorted(self._agents.values(), key=lambda e: e.address != cached)
        if not entries:
            raise FailedPrecondition(
                "no hypervisor agent is registered; register one (RegisterAgent or the "
                "[[agents]] of the config file)",
                reason=Reason.NO_AGENT,
            )
        down: list[str] = []
        for entry in entries:
            if entry.health is not Health.SERVING:
                down.append(entry.label)
                continue
            try:
                vm = await guarded(entry).describe_vm(vm_id)
            except NotFound:
                continue
            self._vm_agent[vm_id] = entry.address
            self._remember(vm)
            return entry, vm
        if down:
            raise Unavailable(
                f"VM {vm_id} was not found on the serving agents, and these agents are not "
                f"serving: {', '.join(down)}; retry when they are back",
                reason=Reason.AGENT_NOT_SERVING,
            )
        raise vm_not_found(vm_id)


def vm_not_found(vm_id: str) -> NotFound:
    """The answer for a VM no agent has (or that the caller may not see)."""
    return NotFound(
        f"VM {vm_id} is not known to any registered agent; check the id (ListVMs) or "
        "define it (DefineVM)",
        reason=Reason.VM_NOT_FOUND,
    )
