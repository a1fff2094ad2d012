"""The host assembled: catalog, registry, manager, recovery, API server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from pathlib import Path

from vmsnap_host.api.servicer import HostServicer
from vmsnap_host.auth.authenticate import Authenticator
from vmsnap_host.auth.interceptor import AuthInterceptor, Gate
from vmsnap_host.config import Config
from vmsnap_host.manager import Manager
from vmsnap_host.metrics import Sample
from vmsnap_host.policies.catalog import PolicyCatalog
from vmsnap_host.policies.scheduler import Scheduler
from vmsnap_host.reconcile import Reconciler
from vmsnap_host.recovery import Recovery
from vmsnap_host.registry import Health, Registry
from vmsnap_host.replicas import Replicas
from vmsnap_host.store import Store
from vmsnap_sdk import ClientTLS, Server, ServerTLS
from vmsnap_sdk._proto.host.v1 import host_pb2, host_pb2_grpc
from vmsnap_sdk.errors import VMSnapError

log = logging.getLogger("vmsnap.host")

HOST_SERVICE = host_pb2.DESCRIPTOR.services_by_name["VMSnapshotService"].full_name


class HostApp:
    """One host process. ``start()`` binds and resolves leftovers; ``stop()`` drains."""

    def __init__(
        self,
        config: Config,
        db: str | Path,
        listen: list[str],
        *,
        owner: str,
        tls: ServerTLS | None = None,
        grace_seconds: float = 10.0,
        require_auth: bool = False,
    ) -> None:
        """``require_auth`` turns authentication on whatever the configuration says
        (the host listens off loopback)."""
        self.config = config
        self.store = Store.open(db)
        settings = config.settings
        self.registry = Registry(call_timeout=settings.call_timeout_seconds)
        self.manager = Manager(self.store, self.registry, settings, owner)
        # Two-way reconciliation, on demand through the Reconcile RPC.
        self.reconciler = Reconciler(self.store, self.registry, settings, owner)
        # Heartbeat, who is alive, who leads (one host on SQLite: alive and leading).
        self.replicas = Replicas(self.store, owner, settings.lease_seconds)
        # Every reconcile tick: open operations (own, or of replicas that stopped);
        # on the leader, owed deletes, then the two-way sweep.
        self.recovery = Recovery(
            self.manager, sweep=self.reconciler.run_once, replicas=self.replicas
        )
        # Snapshot policies: claimed and run on the leading replica only. The scheduler
        # reads the lock's state that each reconcile tick refreshes (Replicas.lead):
        # the lock's connection is used from one thread at a time.
        self.policies = PolicyCatalog(self.store)
        self.scheduler = Scheduler(self.policies, self.manager, leader=self._leading)
        auth = config.auth
        authenticator = Authenticator(auth) if auth.required or require_auth else None
        self.gate = Gate(self.store, authenticator)
        self.server = Server(
            listen,
            tls=tls,
            grace_seconds=grace_seconds,
            max_concurrent_rpcs=config.settings.max_concurrent_rpcs,
            interceptors=[AuthInterceptor(self.gate)],
        )
        self.server.add_service(
            HOST_SERVICE,
            HostServicer(
                self.manager,
                self.registry,
                self.store,
                self.reconciler,
                peers=config.peers,
                policies=self.policies,
            ),
            host_pb2_grpc.add_VMSnapshotServiceServicer_to_server,
        )
        # Streams and waits end as the stop begins, not after the grace period.
        self.server.on_stopping(self.manager.begin_stop)
        self._loops: list[asyncio.Task[None]] = []
        #: Addresses from the configuration file (never removed by the sync below).
        self._configured: dict[str, set[str]] = {"driver": set(), "agent": set()}
        #: Peers known here, not configured, with no stored registration at the last
        #: sync: still so at the next, they were removed through another replica (one
        #: registered here is stored right after it is added: not two syncs later).
        self._absent: dict[str, set[str]] = {"driver": set(), "agent": set()}
        self._tried: dict[str, set[str]] = {"driver": set(), "agent": set()}

    async def start(self) -> list[str]:
        await self._register_all()
        # Alive before anything else: the others must not take over what this
        # replica is about to resume.
        await self.replicas.beat()
        heartbeat = asyncio.create_task(self.replicas.run())
        try:
            await self.recovery.resolve_on_start()
            await self.recovery.reconcile_once(sweep=False)
        except BaseException:
            heartbeat.cancel()
            raise
        settings = self.config.settings
        self._loops = [
            heartbeat,
            asyncio.create_task(self.registry.run_health_loop(settings.health_interval_seconds)),
            asyncio.create_task(self.recovery.run(settings.reconcile_interval_seconds)),
            asyncio.create_task(self._follow_registrations(settings.reconcile_interval_seconds)),
            asyncio.create_task(self.scheduler.run()),
        ]
        return await self.server.start()

    async def _leading(self) -> bool:
        return self.replicas.leading

    async def _register_all(self) -> None:
        for endpoint in self.config.drivers:
            self._configured["driver"].add(endpoint.address)
            await self._register(
                self.registry.add_driver(endpoint.address, order=endpoint.order, tls=endpoint.tls)
            )
        for endpoint in self.config.agents:
            self._configured["agent"].add(endpoint.address)
            await self._register(self.registry.add_agent(endpoint.address, tls=endpoint.tls))
        await self._sync_registrations()

    async def _sync_registrations(self) -> None:
        """Registrations made or removed through any replica (stored in the shared
        catalog) reach this one: stored ones it lacks are added, ones it has that are
        neither configured nor stored (two syncs in a row) are removed."""
        for kind in ("driver", "agent"):
            stored = {
                a: (order, tls)
                for a, _n, order, tls in await self.store.read(self.store.registrations, kind)
            }
            peers = self.registry.drivers() if kind == "driver" else self.registry.agents()
            known = {e.address for e in peers}
            for address, (order, tls) in stored.items():
                if address in known or address in self._configured[kind] | self._tried[kind]:
                    continue
                # Once: a refused one (its name taken here) is not retried every tick.
                self._tried[kind].add(address)
                await self._register(
                    self.registry.add_driver(address, order=order, tls=_client_tls(tls))
                    if kind == "driver"
                    else self.registry.add_agent(address, tls=_client_tls(tls))
                )
            absent = known - set(stored) - self._configured[kind]
            gone, self._absent[kind] = absent & self._absent[kind], absent - self._absent[kind]
            for address in gone:
                log.info(
                    "registration removed through another replica",
                    extra={"fields": {"address": address}},
                )
                if kind == "driver":
                    await self.registry.remove_driver("", address=address)
                else:
                    await self.registry.remove_agent("", address=address)
            # A removal may free a name a refused registration wanted: try those again.
            self._tried[kind] = set() if gone else self._tried[kind] & set(stored)

    async def _follow_registrations(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self._sync_registrations()
            except Exception:
                log.exception("registration sync failed")

    @staticmethod
    async def _register(registration: Awaitable[object]) -> None:
        """One refused registration (e.g. a name another peer has) must not stop the
        host: it is logged, the others go on."""
        try:
            await registration
        except VMSnapError as exc:
            log.error("registration refused", extra={"fields": {"error": str(exc)}})

    async def metrics_sample(self) -> Sample:
        """The gauges of ``/metrics`` (called on the event loop at each scrape)."""
        peers = [
            ("driver", d.name or d.address, d.health is Health.SERVING)
            for d in self.registry.drivers()
        ]
        peers += [
            ("agent", a.name or a.address, a.health is Health.SERVING)
            for a in self.registry.agents()
        ]
        return Sample(
            peers,
            self.manager.queue_depths(),
            await self.store.read(self.store.count_by_state),
            (await self.policies.store.read(self.policies.newest_ages, time.time())),
        )

    async def stop(self, grace_seconds: float | None = None) -> None:
        await self.server.stop(grace_seconds)
        for task in self._loops:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Cancelling an operation thaws its VM first (the executor's finally).
        await self.manager.close()
        # What is left open here is anyone's now: the others need not wait out the
        # heartbeat.
        await self.replicas.leave()
        await self.registry.close()
        self.store.close()


def _client_tls(data: dict[str, str]) -> ClientTLS | None:
    if not data:
        return None
    return ClientTLS(
        ca_file=data.get("ca_file"),
        cert_file=data.get("cert_file"),
        key_file=data.get("key_file"),
        server_name=data.get("server_name"),
        pin_sha256=data.get("pin_sha256"),
    )
