"""SyncHostClient (issue 13, deliverable 5): the typed client, blocking, over a real
host process: from plain code, from several threads at once, errors importable
from vmsnap_host.client, and every public method of both clients documented."""

from __future__ import annotations

import concurrent.futures
import inspect
from collections.abc import Iterator

import pytest

from tests.host.e2e import Cluster, module_cluster
from vmsnap_host import client
from vmsnap_host.client import HostClient, NotFound, SyncHostClient, VMSnapshotState


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from module_cluster(tmp_path_factory, "sync-client")


def test_the_blocking_client_from_plain_code_and_from_threads(running: Cluster) -> None:
    for vm in ("vm1", "t1", "t2", "t3"):
        running.define_vm(vm)
    # Made with no event loop anywhere (the async client failed here on its first
    # call: "attached to a different loop").
    with SyncHostClient.connect(f"unix://{running.sock}/host.sock", timeout=20) as host:
        assert host.serving()
        assert {d.name for d in host.list_drivers()} == {"io.vmsnap.test.a", "io.vmsnap.test.b"}
        seen: list[str] = []
        op = host.create_vm_snapshot("vm1", "first")
        done = host.wait(op.id, timeout=30, on_progress=lambda o: seen.append(o.id))
        assert done.succeeded, done
        snap = host.get_vm_snapshot(done.vm_snapshot_id)
        assert snap.state is VMSnapshotState.READY and snap.name == "first"

        # Three threads share the client; their calls run concurrently on its loop.
        def take(vm: str) -> str:
            started = host.create_vm_snapshot(vm, "threaded")
            return host.wait(started.id, timeout=60).vm_snapshot_id

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            ids = list(pool.map(take, ["t1", "t2", "t3"]))
        for vm, snapshot_id in zip(["t1", "t2", "t3"], ids, strict=True):
            assert [s.id for s in host.all_vm_snapshots(vm)] == [snapshot_id]

        # Errors are the classes exported by vmsnap_host.client.
        with pytest.raises(NotFound):
            host.get_vm_snapshot("no-such-snapshot")

        # A callback runs in the client's thread: calling the client from it is refused.
        again = host.create_vm_snapshot("vm1", "second")
        with pytest.raises(RuntimeError, match="its own callback"):
            host.wait(again.id, timeout=30, on_progress=lambda o: host.get_operation(o.id))
    with pytest.raises(RuntimeError, match="closed"):
        host.list_vms()


def test_the_blocking_client_from_inside_a_thread_of_an_async_program(running: Cluster) -> None:
    import asyncio

    async def program() -> int:
        def in_a_thread() -> int:
            with SyncHostClient.connect(f"unix://{running.sock}/host.sock") as host:
                return len(host.list_agents())

        return await asyncio.to_thread(in_a_thread)

    assert asyncio.run(program()) == 1


def test_both_clients_have_the_same_documented_methods() -> None:
    def public(cls: type) -> dict[str, object]:
        return {
            n: m
            for n, m in inspect.getmembers(cls)
            if not n.startswith("_") and (inspect.isfunction(m) or inspect.ismethod(m))
        }

    asynchronous, blocking = public(HostClient), public(SyncHostClient)
    assert set(asynchronous) == set(blocking)
    for cls, methods in ((HostClient, asynchronous), (SyncHostClient, blocking)):
        undocumented = [n for n, m in methods.items() if not inspect.getdoc(m)]
        assert not undocumented, f"{cls.__name__}: {undocumented}"
    # The blocking twin keeps the signature users read in help().
    assert inspect.signature(SyncHostClient.wait).parameters.keys() == (
        inspect.signature(HostClient.wait).parameters.keys()
    )
    for name in ("VMSnapError", "NotFound", "Unavailable", "AlreadyExists", "Aborted"):
        assert issubclass(getattr(client, name), Exception)
