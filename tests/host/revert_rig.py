"""What the tests of reverts that must end share (test_revert_lost.py,
test_revert_vm_gone.py): a rig with short retries and reconcile ticks, so that a
revert that does not end fails the test within seconds instead of hanging it; a
READY snapshot to revert; and the one-disk snapshot of the process tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc

from tests.fakes.driver import Options
from tests.host.conftest import FAST, Rig, make_rig
from tests.host.e2e import Cluster
from vmsnap_host.model import ErrorInfo, OperationRecord
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb

A, B = "io.vmsnap.test.a", "io.vmsnap.test.b"
QUICK = replace(FAST, take_timeout_seconds=0.5, call_timeout_seconds=1.0)
TICK = 0.1
BOUND = 5.0


@asynccontextmanager
async def revert_rig(tmp_path: Path, db_url: str) -> AsyncIterator[Rig]:
    rig = await make_rig(
        tmp_path,
        Options(name=A, scheme="a"),
        Options(name=B, scheme="b"),
        settings=QUICK,
        db=db_url,
    )
    ticks = asyncio.create_task(rig.recovery.run(TICK))
    try:
        yield rig
    finally:
        ticks.cancel()
        await asyncio.gather(ticks, return_exceptions=True)
        await rig.close()


async def ready(rig: Rig, vm_id: str, name: str = "s1", *, memory: bool = False) -> str:
    op = await rig.wait(await rig.create(name, vm_id, memory=memory))
    assert op.error is None, op.error
    return op.vm_snapshot_id


async def bounded(rig: Rig, op: OperationRecord) -> OperationRecord:
    done = await rig.manager.wait_operation(op.id, BOUND)
    assert done.done, f"the revert did not end within {BOUND} s: step {done.step!r}"
    return done


def failed_with(done: OperationRecord, code: grpc.StatusCode, reason: str) -> ErrorInfo:
    """The error an ended operation failed with, checked to be ``code`` / ``reason``."""
    error = done.error
    assert error is not None, done
    assert error.code == code.value[0], error
    assert error.reason == reason, error
    return error


def one_disk_snapshot(c: Cluster) -> str:
    """VM vm1 with one disk on driver a, and its READY snapshot s1 (its id)."""
    vm = common_pb2.VM(
        id="vm1",
        name="vm1",
        memory_mib=64,
        volumes=[common_pb2.Volume(disk="vda", locator="a://pool/1")],
    )
    c.host.DefineVM(pb.DefineVMRequest(vm=vm), timeout=10)
    op = c.wait(c.create("vm1", "s1"))
    assert not op.HasField("error"), op.error
    return op.vm_snapshot_id
