"""Drivers and agents, found by address: identity, contract version, health.

Each registration is checked at once (GetDriverInfo / GetAgentInfo, the
contract version negotiated, gRPC health, Probe) and again every
``health_interval``. The rest of the host reaches a driver only through a
:class:`GuardedDriver`, which fails fast with UNAVAILABLE naming the driver
while its last check failed: a dead array must not eat a take's freeze window
in connect timeouts. gRPC channels reconnect by themselves; the next passing
check lets calls through again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vmsnap_sdk import (
    VM,
    AgentClient,
    AgentInfo,
    ClientTLS,
    DriverClient,
    DriverInfo,
    HypervisorAgent,
    NativeSnapshot,
    Operation,
    Page,
    ProbeResult,
    QuiesceInfo,
    QuiesceMethod,
    QuiesceResult,
    RevertRequest,
    RevertResult,
    SnapshotPage,
    SnapshotResult,
    StorageDriver,
    TakeRequest,
    UnquiesceResult,
    VMPage,
    Volume,
    VolumeDecision,
)
from vmsnap_sdk.errors import (
    FailedPrecondition,
    NotFound,
    TransientError,
    Unavailable,
    VMSnapError,
)

log = logging.getLogger("vmsnap.host.registry")

CONTRACT_VERSION = "v1"
_CHECK_TIMEOUT = 5.0

_T = TypeVar("_T")


class Health(enum.Enum):
    UNSPECIFIED = 0
    SERVING = 1
    NOT_SERVING = 2


@dataclass
class _Entry:
    address: str
    tls: ClientTLS | None
    order: int = 0
    name: str = ""
    health: Health = Health.UNSPECIFIED
    message: str = "not checked yet"
    last_check: datetime | None = None
    contract_version: str = ""
    channel: grpc.aio.Channel | None = None

    @property
    def label(self) -> str:
        return f"{self.name or '(unnamed)'} at {self.address}"

    def require_serving(self, kind: str) -> None:
        if self.health is not Health.SERVING:
            raise Unavailable(
                f"{kind} {self.label} is not serving ({self.message}); "
                "calls resume when its health check passes",
                reason=f"{kind.upper()}_NOT_SERVING",
            )


@dataclass
class DriverEntry(_Entry):
    driver: StorageDriver | None = None
    info: DriverInfo | None = None
    on_trouble: Callable[[], None] = field(default=lambda: None)


@dataclass
class AgentEntry(_Entry):
    agent: HypervisorAgent | None = None
    info: AgentInfo | None = None
    on_trouble: Callable[[], None] = field(default=lambda: None)


async def _guard(entry: _Entry, kind: str, call: Awaitable[_T], trouble: Callable[[], None]) -> _T:
    entry.require_serving(kind)
    try:
        return await call
    except TransientError:
        # The link may be gone: check now rather than at the next tick, so later
        # calls fail fast (or pass again) on fresh information.
        trouble()
        raise


class GuardedDriver(StorageDriver):
    """A driver that fails fast with UNAVAILABLE while its health check fails."""

    def __init__(self, entry: DriverEntry) -> None:
        self.entry = entry

    def _run(self, make: Callable[[StorageDriver], Awaitable[_T]]) -> Awaitable[_T]:
        entry = self.entry
        entry.require_serving("driver")
        assert entry.driver is not None
        return _guard(entry, "driver", make(entry.driver), entry.on_trouble)

    async def get_info(self) -> DriverInfo:
        return await self._run(lambda d: d.get_info())

    async def probe(self) -> ProbeResult:
        return await self._run(lambda d: d.probe())

    async def can_handle(
        self, vm: VM, volumes: Sequence[Volume], operation: Operation, options: Mapping[str, str]
    ) -> Sequence[VolumeDecision]:
        return await self._run(lambda d: d.can_handle(vm, volumes, operation, options))

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        return await self._run(lambda d: d.take_snapshot(request))

    async def get_snapshot(self, vm_snapshot_id: str) -> SnapshotResult:
        return await self._run(lambda d: d.get_snapshot(vm_snapshot_id))

    async def revert_snapshot(self, request: RevertRequest) -> RevertResult:
        return await self._run(lambda d: d.revert_snapshot(request))

    async def delete_snapshot(self, vm_snapshot_id: str, snapshot: SnapshotResult | None) -> None:
        await self._run(lambda d: d.delete_snapshot(vm_snapshot_id, snapshot))

    async def list_snapshots(self, page: Page, vm_id: str = "") -> SnapshotPage:
        return await self._run(lambda d: d.list_snapshots(page, vm_id))


class GuardedAgent(HypervisorAgent):
    """An agent that fails fast with UNAVAILABLE while its health check fails."""

    def __init__(self, entry: AgentEntry) -> None:
        self.entry = entry

    def _run(self, make: Callable[[HypervisorAgent], Awaitable[_T]]) -> Awaitable[_T]:
        entry = self.entry
        entry.require_serving("agent")
        assert entry.agent is not None
        return _guard(entry, "agent", make(entry.agent), entry.on_trouble)

    async def get_info(self) -> AgentInfo:
        return await self._run(lambda a: a.get_info())

    async def describe_vm(self, vm_id: str) -> VM:
        return await self._run(lambda a: a.describe_vm(vm_id))

    async def list_vms(self, page: Page) -> VMPage:
        return await self._run(lambda a: a.list_vms(page))

    async def define_vm(self, vm: VM) -> VM:
        return await self._run(lambda a: a.define_vm(vm))

    async def undefine_vm(self, vm_id: str) -> None:
        await self._run(lambda a: a.undefine_vm(vm_id))

    async def start_vm(self, vm_id: str) -> VM:
        return await self._run(lambda a: a.start_vm(vm_id))

    async def stop_vm(self, vm_id: str, force: bool) -> VM:
        return await self._run(lambda a: a.stop_vm(vm_id, force))

    async def quiesce(
        self,
        vm_id: str,
        method: QuiesceMethod,
        lease_seconds: float,
        best_effort: bool,
        operation_id: str,
    ) -> QuiesceResult:
        return await self._run(
            lambda a: a.quiesce(vm_id, method, lease_seconds, best_effort, operation_id)
        )

    async def renew_quiesce(self, token: str, lease_seconds: float) -> datetime:
        return await self._run(lambda a: a.renew_quiesce(token, lease_seconds))

    async def unquiesce(self, token: str, operation_id: str = "") -> UnquiesceResult:
        return await self._run(lambda a: a.unquiesce(token, operation_id))

    async def list_quiesces(self, vm_id: str = "") -> Sequence[QuiesceInfo]:
        return await self._run(lambda a: a.list_quiesces(vm_id))

    async def take_native_snapshot(
        self, vm_id: str, snapshot_id: str, disks: Sequence[str], include_memory: bool
    ) -> NativeSnapshot:
        return await self._run(
            lambda a: a.take_native_snapshot(vm_id, snapshot_id, disks, include_memory)
        )

    async def revert_native_snapshot(self, vm_id: str, snapshot_id: str) -> VM:
        return await self._run(lambda a: a.revert_native_snapshot(vm_id, snapshot_id))

    async def delete_native_snapshot(self, vm_id: str, snapshot_id: str) -> None:
        await self._run(lambda a: a.delete_native_snapshot(vm_id, snapshot_id))

    async def list_native_snapshots(self, vm_id: str) -> Sequence[NativeSnapshot]:
        return await self._run(lambda a: a.list_native_snapshots(vm_id))


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
            f"speaks contract versions {list(versions)}; this host needs {CONTRACT_VERSION}",
            reason="CONTRACT_VERSION_MISMATCH",
        )
    return CONTRACT_VERSION


class Registry:
    """Every driver and agent the host knows, with their last health check."""

    def __init__(self, call_timeout: float = 30.0) -> None:
        self.call_timeout = call_timeout
        self._drivers: dict[str, DriverEntry] = {}  # by address
        self._agents: dict[str, AgentEntry] = {}  # by address
        self._vm_agent: dict[str, str] = {}  # vm id → agent address (a cache)
        self._pending: set[asyncio.Task[Any]] = set()

    # --- registration -------------------------------------------------------------

    async def add_driver(
        self,
        address: str,
        *,
        order: int = 0,
        tls: ClientTLS | None = None,
        driver: StorageDriver | None = None,
    ) -> DriverEntry:
        """Register (or update) a driver and check it once. ``driver`` injects an
        in-process implementation (tests); otherwise a gRPC client is made."""
        old = self._drivers.pop(address, None)
        if old is not None and old.channel is not None:
            await old.channel.close(None)
        entry = DriverEntry(address=address, tls=tls, order=order)
        if driver is None:
            client = DriverClient.connect(address, tls=tls, timeout=self.call_timeout)
            entry.driver, entry.channel = client, client.channel
        else:
            entry.driver = driver
        entry.on_trouble = lambda: self._recheck(self.check_driver(entry))
        self._drivers[address] = entry
        await self.check_driver(entry)
        # A name lives at one address: re-registering it elsewhere moves it.
        for other in list(self._drivers.values()):
            if other is not entry and entry.name and other.name == entry.name:
                await self.remove_driver(other.name, address=other.address)
        return entry

    async def add_agent(
        self, address: str, *, tls: ClientTLS | None = None, agent: HypervisorAgent | None = None
    ) -> AgentEntry:
        old = self._agents.pop(address, None)
        if old is not None and old.channel is not None:
            await old.channel.close(None)
        entry = AgentEntry(address=address, tls=tls)
        if agent is None:
            client = AgentClient.connect(address, tls=tls, timeout=self.call_timeout)
            entry.agent, entry.channel = client, client.channel
        else:
            entry.agent = agent
        entry.on_trouble = lambda: self._recheck(self.check_agent(entry))
        self._agents[address] = entry
        await self.check_agent(entry)
        for other in list(self._agents.values()):
            if other is not entry and entry.name and other.name == entry.name:
                await self.remove_agent(other.name, address=other.address)
        return entry

    async def remove_driver(self, name: str, *, address: str = "") -> DriverEntry | None:
        for key, entry in list(self._drivers.items()):
            if (address and key == address) or (not address and entry.name == name):
                del self._drivers[key]
                if entry.channel is not None:
                    await entry.channel.close(None)
                return entry
        return None

    async def remove_agent(self, name: str, *, address: str = "") -> AgentEntry | None:
        for key, entry in list(self._agents.items()):
            if (address and key == address) or (not address and entry.name == name):
                del self._agents[key]
                self._vm_agent = {vm: a for vm, a in self._vm_agent.items() if a != key}
                if entry.channel is not None:
                    await entry.channel.close(None)
                return entry
        return None

    # --- health -------------------------------------------------------------------

    def _recheck(self, check: Awaitable[None]) -> None:
        task = asyncio.ensure_future(check)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def check_driver(self, entry: DriverEntry) -> None:
        assert entry.driver is not None
        try:
            info = await asyncio.wait_for(entry.driver.get_info(), _CHECK_TIMEOUT)
            entry.contract_version = _negotiate(info.contract_versions)
            entry.info, entry.name = info, info.name
            await _grpc_health(entry.channel)
            probe = await asyncio.wait_for(entry.driver.probe(), _CHECK_TIMEOUT)
            if not probe.ready:
                raise Unavailable(f"probe: {probe.message or 'the array is not ready'}")
        except (VMSnapError, TimeoutError) as exc:
            self._mark(entry, Health.NOT_SERVING, _describe(exc))
            return
        self._mark(entry, Health.SERVING, "")

    async def check_agent(self, entry: AgentEntry) -> None:
        assert entry.agent is not None
        try:
            info = await asyncio.wait_for(entry.agent.get_info(), _CHECK_TIMEOUT)
            entry.contract_version = _negotiate(info.contract_versions)
            entry.info, entry.name = info, info.name
            await _grpc_health(entry.channel)
        except (VMSnapError, TimeoutError) as exc:
            self._mark(entry, Health.NOT_SERVING, _describe(exc))
            return
        self._mark(entry, Health.SERVING, "")

    @staticmethod
    def _mark(entry: _Entry, health: Health, message: str) -> None:
        if entry.health is not health:
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
        checks: list[Awaitable[None]] = [self.check_driver(e) for e in self._drivers.values()]
        checks += [self.check_agent(e) for e in self._agents.values()]
        await asyncio.gather(*checks)

    async def run_health_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.check_all()

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for entry in [*self._drivers.values(), *self._agents.values()]:
            if entry.channel is not None:
                await entry.channel.close(None)

    # --- lookups ------------------------------------------------------------------

    def drivers(self) -> list[DriverEntry]:
        """All drivers in tie-break order (configured order, then name)."""
        return sorted(self._drivers.values(), key=lambda e: (e.order, e.name, e.address))

    def healthy_drivers(self) -> list[DriverEntry]:
        return [e for e in self.drivers() if e.health is Health.SERVING]

    def driver(self, name: str) -> GuardedDriver:
        """The driver of that name (fails fast when it is not serving)."""
        for entry in self._drivers.values():
            if entry.name == name:
                return GuardedDriver(entry)
        raise Unavailable(
            f"driver {name} is not registered; register it again (RegisterDriver) to reach "
            "the snapshots it holds",
            reason="DRIVER_NOT_REGISTERED",
        )

    def driver_entry(self, name: str) -> DriverEntry | None:
        return next((e for e in self._drivers.values() if e.name == name), None)

    def agents(self) -> list[AgentEntry]:
        return sorted(self._agents.values(), key=lambda e: (e.name, e.address))

    def agent(self, name: str) -> GuardedAgent:
        for entry in self._agents.values():
            if entry.name == name:
                return GuardedAgent(entry)
        raise Unavailable(
            f"agent {name} is not registered; register it again (RegisterAgent)",
            reason="AGENT_NOT_REGISTERED",
        )

    def agent_entry(self, name: str) -> AgentEntry | None:
        return next((e for e in self._agents.values() if e.name == name), None)

    async def find_vm(self, vm_id: str) -> tuple[AgentEntry, VM]:
        """The agent that runs a VM, and the VM as it describes it now."""
        cached = self._vm_agent.get(vm_id)
        entries = sorted(self._agents.values(), key=lambda e: e.address != cached)
        if not entries:
            raise FailedPrecondition(
                "no hypervisor agent is registered; register one (RegisterAgent or the "
                "[[agents]] of the config file)",
                reason="NO_AGENT",
            )
        down: list[str] = []
        for entry in entries:
            if entry.health is not Health.SERVING:
                down.append(entry.label)
                continue
            try:
                vm = await GuardedAgent(entry).describe_vm(vm_id)
            except NotFound:
                continue
            self._vm_agent[vm_id] = entry.address
            return entry, vm
        if down:
            raise Unavailable(
                f"VM {vm_id} was not found on the serving agents, and these agents are not "
                f"serving: {', '.join(down)}; retry when they are back",
                reason="AGENT_NOT_SERVING",
            )
        raise NotFound(
            f"VM {vm_id} is not known to any registered agent; check the id (ListVMs) or "
            "define it (DefineVM)",
            reason="VM_NOT_FOUND",
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, VMSnapError):
        return exc.message
    return "no answer within the check timeout"
