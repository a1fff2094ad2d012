"""The host assembled: catalog, registry, manager, recovery, API server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from pathlib import Path

from vmsnap_host.api.servicer import HostServicer
from vmsnap_host.auth.authenticate import Authenticator
from vmsnap_host.auth.interceptor import AuthInterceptor, Gate
from vmsnap_host.config import Config
from vmsnap_host.manager import Manager
from vmsnap_host.reconcile import Reconciler
from vmsnap_host.recovery import Recovery
from vmsnap_host.registry import Registry
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
        self.store = Store.open_sqlite(db)
        settings = config.settings
        self.registry = Registry(call_timeout=settings.call_timeout_seconds)
        self.manager = Manager(self.store, self.registry, settings, owner)
        # Two-way reconciliation, on demand through the Reconcile RPC.
        self.reconciler = Reconciler(self.store, self.registry, settings, owner)
        # Every reconcile tick: open operations, owed deletes, then the two-way sweep.
        self.recovery = Recovery(self.manager, sweep=self.reconciler.run_once)
        auth = config.auth
        authenticator = Authenticator(auth) if auth.required or require_auth else None
        self.gate = Gate(self.store, authenticator)
        self.server = Server(
            listen,
            tls=tls,
            grace_seconds=grace_seconds,
            interceptors=[AuthInterceptor(self.gate)],
        )
        self.server.add_service(
            HOST_SERVICE,
            HostServicer(
                self.manager, self.registry, self.store, self.reconciler, peers=config.peers
            ),
            host_pb2_grpc.add_VMSnapshotServiceServicer_to_server,
        )
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> list[str]:
        await self._register_all()
        await self.recovery.resolve_on_start()
        await self.recovery.reconcile_once(sweep=False)
        settings = self.config.settings
        self._loops = [
            asyncio.create_task(self.registry.run_health_loop(settings.health_interval_seconds)),
            asyncio.create_task(self.recovery.run(settings.reconcile_interval_seconds)),
        ]
        return await self.server.start()

    async def _register_all(self) -> None:
        configured = set()
        for endpoint in self.config.drivers:
            configured.add(endpoint.address)
            await self._register(
                self.registry.add_driver(endpoint.address, order=endpoint.order, tls=endpoint.tls)
            )
        for address, _name, order, tls in self.store.registrations("driver"):
            if address not in configured:
                await self._register(
                    self.registry.add_driver(address, order=order, tls=_client_tls(tls))
                )
        configured = set()
        for endpoint in self.config.agents:
            configured.add(endpoint.address)
            await self._register(self.registry.add_agent(endpoint.address, tls=endpoint.tls))
        for address, _name, _order, tls in self.store.registrations("agent"):
            if address not in configured:
                await self._register(self.registry.add_agent(address, tls=_client_tls(tls)))

    @staticmethod
    async def _register(registration: Awaitable[object]) -> None:
        """One refused registration (e.g. a name another peer has) must not stop the
        host: it is logged, the others go on."""
        try:
            await registration
        except VMSnapError as exc:
            log.error("registration refused", extra={"fields": {"error": str(exc)}})

    async def stop(self, grace_seconds: float | None = None) -> None:
        await self.server.stop(grace_seconds)
        for task in self._loops:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Cancelling an operation thaws its VM first (the executor's finally).
        await self.manager.close()
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
