"""``SyncHostClient``: the typed client for code without an event loop.

A grpc.aio channel belongs to the loop it was made on: an async HostClient
made outside a loop failed on its first call ("attached to a different
loop"). The blocking facade owns one loop in one daemon thread; the async
client is made *on* that loop and every call is sent there and waited for.
So it works from a plain script, from several threads at once (calls run
concurrently on the loop), and from a thread of a program that runs its own
event loop elsewhere. Calling it from inside a running event loop works too,
but blocks that loop: there, use :class:`HostClient`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import queue
import threading
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from vmsnap_host.client._client import HostClient
from vmsnap_host.client._types import Operation

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _blocking(
    method: Callable[Concatenate[HostClient, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[SyncHostClient, _P], _R]:
    """The blocking twin of a HostClient method: same name, signature and docstring."""

    def call(self: SyncHostClient, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return self._run(lambda client: method(client, *args, **kwargs))

    functools.update_wrapper(call, method)  # name, docstring, signature (__wrapped__)
    return call


class SyncHostClient:
    """A blocking connection to a vmsnap host, with the methods of :class:`HostClient`.

        with SyncHostClient.connect() as host:
            op = host.create_vm_snapshot("vm-1", "before-upgrade")
            op = host.wait(op.id, timeout=300, on_progress=print)

    ``connect`` takes the arguments of :meth:`HostClient.connect`. Errors are the
    exceptions of :mod:`vmsnap_host.client` (those of :mod:`vmsnap_sdk.errors`).
    Callbacks such as ``wait``'s ``on_progress`` run in the client's own thread:
    they must not call this client (that would wait on itself; it raises).
    """

    def __init__(self, make: Callable[[], HostClient]) -> None:
        """Start the client's thread and loop, and make the async client there with
        ``make`` (prefer :meth:`connect`)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="vmsnap-host-client", daemon=True
        )
        self._thread.start()
        self._closed = False

        async def build() -> HostClient:
            return make()

        try:
            self._client: HostClient = self._submit(build())
        except BaseException:
            self._stop_loop()
            raise

    @classmethod
    def connect(cls, *args: Any, **kwargs: Any) -> SyncHostClient:
        """A client for an address (default: ``$VMSNAP_HOST`` or the local stack's
        socket); the arguments are those of :meth:`HostClient.connect`."""
        return cls(lambda: HostClient.connect(*args, **kwargs))

    @property
    def address(self) -> str:
        """The address the client talks to."""
        return self._client.address

    @property
    def timeout(self) -> float | None:
        """The default per-call deadline in seconds (None: none)."""
        return self._client.timeout

    def close(self) -> None:
        """Close the channel and end the client's thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._submit(self._client.close())
        finally:
            self._stop_loop()

    def __enter__(self) -> SyncHostClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- running on the client's loop ---------------------------------------------

    def _run(self, work: Callable[[HostClient], Coroutine[Any, Any, _R]]) -> _R:
        if self._closed:
            raise RuntimeError("this SyncHostClient is closed")
        return self._submit(work(self._client))

    def _submit(self, coro: Coroutine[Any, Any, _R]) -> _R:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                "a SyncHostClient was called from its own callback; use the async "
                "HostClient inside callbacks, or call after the method returned"
            )
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except (KeyboardInterrupt, concurrent.futures.CancelledError):
            # Ctrl-C in the caller's thread: the call on the loop is cancelled too.
            future.cancel()
            raise

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    # --- the methods of HostClient, blocking ---------------------------------------

    serving = _blocking(HostClient.serving)
    create_vm_snapshot = _blocking(HostClient.create_vm_snapshot)
    get_vm_snapshot = _blocking(HostClient.get_vm_snapshot)
    list_vm_snapshots = _blocking(HostClient.list_vm_snapshots)
    all_vm_snapshots = _blocking(HostClient.all_vm_snapshots)
    revert_vm_snapshot = _blocking(HostClient.revert_vm_snapshot)
    delete_vm_snapshot = _blocking(HostClient.delete_vm_snapshot)
    get_operation = _blocking(HostClient.get_operation)
    wait_operation = _blocking(HostClient.wait_operation)
    wait = _blocking(HostClient.wait)
    list_operations = _blocking(HostClient.list_operations)
    register_driver = _blocking(HostClient.register_driver)
    list_drivers = _blocking(HostClient.list_drivers)
    remove_driver = _blocking(HostClient.remove_driver)
    register_agent = _blocking(HostClient.register_agent)
    list_agents = _blocking(HostClient.list_agents)
    remove_agent = _blocking(HostClient.remove_agent)
    reconcile = _blocking(HostClient.reconcile)
    list_findings = _blocking(HostClient.list_findings)
    list_audit_records = _blocking(HostClient.list_audit_records)
    define_vm = _blocking(HostClient.define_vm)
    get_vm = _blocking(HostClient.get_vm)
    list_vms = _blocking(HostClient.list_vms)
    start_vm = _blocking(HostClient.start_vm)
    stop_vm = _blocking(HostClient.stop_vm)
    undefine_vm = _blocking(HostClient.undefine_vm)
    disk_ranges = _blocking(HostClient.disk_ranges)
    read_snapshot_disk = _blocking(HostClient.read_snapshot_disk)
    cancel_operation = _blocking(HostClient.cancel_operation)
    follow = _blocking(HostClient.follow)

    def watch_operations(
        self,
        vm_id: str = "",
        *,
        operation_id: str = "",
        since: datetime | None = None,
    ) -> Iterator[Operation]:
        """Blocking twin of :meth:`HostClient.watch_operations`: a generator of
        operations as they change; stop iterating (or close it) to end the stream."""
        if self._closed:
            raise RuntimeError("this SyncHostClient is closed")
        items: queue.Queue[tuple[str, Any]] = queue.Queue()

        async def pump() -> None:
            try:
                async for op in self._client.watch_operations(
                    vm_id, operation_id=operation_id, since=since
                ):
                    items.put(("op", op))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                items.put(("error", exc))
                return
            items.put(("end", None))

        future = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while True:
                kind, value = items.get()
                if kind == "op":
                    yield value
                elif kind == "error":
                    if isinstance(value, asyncio.CancelledError):
                        return
                    raise value
                else:
                    return
        finally:
            # The caller stopped (or Ctrl-C): the stream on the loop ends too.
            future.cancel()

    create_vm_from_snapshot = _blocking(HostClient.create_vm_from_snapshot)
    freeze_vm = _blocking(HostClient.freeze_vm)
    renew_freeze = _blocking(HostClient.renew_freeze)
    thaw_vm = _blocking(HostClient.thaw_vm)
    discover_snapshots = _blocking(HostClient.discover_snapshots)
    adopt_snapshot = _blocking(HostClient.adopt_snapshot)
    get_labeled_vm = _blocking(HostClient.get_labeled_vm)
    list_labeled_vms = _blocking(HostClient.list_labeled_vms)
    set_vm_labels = _blocking(HostClient.set_vm_labels)
    create_policy = _blocking(HostClient.create_policy)
    get_policy = _blocking(HostClient.get_policy)
    list_policies = _blocking(HostClient.list_policies)
    all_policies = _blocking(HostClient.all_policies)
    pause_policy = _blocking(HostClient.pause_policy)
    resume_policy = _blocking(HostClient.resume_policy)
    delete_policy = _blocking(HostClient.delete_policy)
