"""A create that waits is answered with what its last write committed.

The READY write of a take reads the operation and its snapshot back inside its
own transaction (Store.w_read_finished); the waiter is answered with them and
reads nothing after it (docs/design.md, "A create's answer from its last
write"). Before, every waiting create read the operation and then the snapshot
again once its take had ended: two catalog reads on the path of every answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.host.conftest import Rig
from tests.support.servicer_context import ServicerContext
from vmsnap_host.api.servicer import HostServicer
from vmsnap_host.store import Store
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb


def _counting(store: Store, names: tuple[str, ...]) -> dict[str, int]:
    """Count calls of the store's read methods ``names`` from now on."""
    counts = dict.fromkeys(names, 0)
    for name in names:
        real: Callable[..., Any] = getattr(store, name)

        def counted(*args: Any, _real: Callable[..., Any] = real, _name: str = name) -> Any:
            counts[_name] += 1
            return _real(*args)

        setattr(store, name, counted)
    return counts


async def _create(servicer: HostServicer, name: str) -> pb.Operation:
    request = pb.CreateVMSnapshotRequest(request_id=f"r-{name}", vm_id="vm1", name=name)
    request.wait.seconds = 20
    reply = await servicer.CreateVMSnapshot(request, ServicerContext())  # type: ignore[arg-type]
    return reply.operation


async def test_a_waiting_create_is_answered_from_its_ready_write(rig: Rig) -> None:
    """Fails on main: the answer reads the operation and the snapshot after READY."""
    await rig.define("vm1")
    servicer = HostServicer(rig.manager, rig.registry, rig.store)
    await _create(servicer, "s0")  # the VM described and planned once
    counts = _counting(rig.store, ("get_operation", "get_snapshot"))
    answer = await _create(servicer, "s1")
    assert answer.done and answer.vm_snapshot.state == pb.VM_SNAPSHOT_STATE_READY
    assert counts == {"get_operation": 0, "get_snapshot": 0}
    # What it was answered is what the catalog holds: a GetOperation after it
    # answers the same, field for field (times, parent, current, groups).
    got = await servicer.GetOperation(pb.GetOperationRequest(id=answer.id), ServicerContext())  # type: ignore[arg-type]
    assert got.operation == answer
    assert answer.vm_snapshot.parent_id == (await _create_parent(servicer, answer))


async def _create_parent(servicer: HostServicer, answer: pb.Operation) -> str:
    """The parent the catalog records for the answered snapshot."""
    reply = await servicer.GetVMSnapshot(
        pb.GetVMSnapshotRequest(id=answer.vm_snapshot_id),
        ServicerContext(),  # type: ignore[arg-type]
    )
    assert reply.vm_snapshot.parent_id, "the second snapshot has the first as parent"
    return reply.vm_snapshot.parent_id


async def test_a_create_that_fails_is_answered_from_the_catalog(rig: Rig) -> None:
    """An ERROR take returns nothing from its last write: its waiter reads the
    operation and snapshot as before, and is answered the failure."""
    await rig.define("vm1")
    servicer = HostServicer(rig.manager, rig.registry, rig.store)
    driver = rig.drivers["io.vmsnap.test.a"]

    async def failing(request: Any) -> Any:
        from vmsnap_sdk.errors import FailedPrecondition

        raise FailedPrecondition("array full (test)")

    driver.take_snapshot = failing  # type: ignore[method-assign]
    answer = await _create(servicer, "s1")
    assert answer.done and answer.HasField("error")
    assert "array full (test)" in answer.error.message
    assert answer.vm_snapshot.state == pb.VM_SNAPSHOT_STATE_ERROR
    got = await servicer.GetOperation(pb.GetOperationRequest(id=answer.id), ServicerContext())  # type: ignore[arg-type]
    assert got.operation == answer


async def test_two_waiters_of_one_create_get_the_same_answer(rig: Rig) -> None:
    """WaitOperation beside the waiting create: both answered what committed."""
    await rig.define("vm1")
    servicer = HostServicer(rig.manager, rig.registry, rig.store)
    request = pb.CreateVMSnapshotRequest(request_id="r-s1", vm_id="vm1", name="s1")
    first = await servicer.CreateVMSnapshot(request, ServicerContext())  # type: ignore[arg-type]
    wait = pb.WaitOperationRequest(id=first.operation.id)
    wait.timeout.seconds = 20
    waited, again = await asyncio.gather(
        servicer.WaitOperation(wait, ServicerContext()),  # type: ignore[arg-type]
        servicer.WaitOperation(wait, ServicerContext()),  # type: ignore[arg-type]
    )
    assert waited.operation.done and waited.operation == again.operation
    got = await servicer.GetOperation(
        pb.GetOperationRequest(id=first.operation.id),
        ServicerContext(),  # type: ignore[arg-type]
    )
    assert got.operation == waited.operation


async def test_the_answer_is_the_catalogs_row_field_for_field(rig: Rig) -> None:
    """What the READY write reads back (its own copy, with what only the catalog
    knows: parent, times, project) equals the rows read after it, as records."""
    await rig.define("vm1")
    await rig.wait(await rig.create("s0"))
    op = await rig.create("s1")
    finished = await rig.manager.wait_finished(op.id, 20.0)
    assert finished.snapshot is not None, "a READY take answers from its last write"
    assert finished.snapshot.freeze_start is not None and finished.snapshot.parent_id
    assert finished.snapshot == rig.store.get_snapshot(op.vm_snapshot_id)
    assert finished.operation == rig.store.get_operation(op.id)


async def test_a_project_given_during_the_take_is_in_its_answer(rig: Rig) -> None:
    """The project is the catalog's (given while the take ran), not the take's copy."""
    await rig.define("vm1")
    driver = rig.drivers["io.vmsnap.test.a"]
    take = driver.take_snapshot

    async def taking(request: Any) -> Any:
        await rig.store.write(rig.store.w_set_vm_project("vm1", "team-a"))
        return await take(request)

    driver.take_snapshot = taking  # type: ignore[method-assign]
    op = await rig.create("s1")
    finished = await rig.manager.wait_finished(op.id, 20.0)
    assert finished.snapshot is not None and finished.snapshot.project == "team-a"
    assert finished.snapshot == rig.store.get_snapshot(op.vm_snapshot_id)
    assert finished.operation == rig.store.get_operation(op.id)
