"""revert: a revert really restores the bytes, verified through the ConformanceFixture."""

from __future__ import annotations

import os

from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._types import Capability
from vmsnap_sdk.conformance._expect import expect, expect_code, expect_ok
from vmsnap_sdk.conformance._registry import check
from vmsnap_sdk.conformance._rpc import call
from vmsnap_sdk.conformance._session import Session
from vmsnap_sdk.conformance.checks._common import INVALID, NOT_FOUND

#: Bytes written per state: random, so no state can match another by chance.
SIZE = 64 * 1024

REVERT = (Capability.REVERT,)
UNDO = (Capability.REVERT, Capability.REVERT_UNDO)


def same(expected: bytes, got: bytes, label: str) -> None:
    if got == expected:
        return
    first = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), None)
    where = f"first difference at byte {first}" if first is not None else f"{len(got)} bytes"
    expect(False, f"{label} ({len(expected)} bytes) read back byte for byte", where)


@check(
    "revert.restores_data",
    "Write A, take, write B, revert: the volume reads A again",
    requires=REVERT,
)
async def restores_data(s: Session) -> None:
    s.require_data()
    (volume,) = await s.volumes(1)
    a, b = os.urandom(SIZE), os.urandom(SIZE)
    await s.write(volume.locator, a)
    snap = await s.wait_ready(await s.take(s.new_id(), [volume]))
    await s.write(volume.locator, b)
    await s.revert(snap, volumes=[volume])
    same(a, await s.read(volume.locator, SIZE), "state A")


@check(
    "revert.restores_every_volume",
    "Reverting a group snapshot restores every one of its volumes",
    requires=REVERT,
)
async def restores_every_volume(s: Session) -> None:
    s.require_data()
    volumes = await s.volumes(3)
    before = [os.urandom(SIZE) for _ in volumes]
    for volume, data in zip(volumes, before, strict=True):
        await s.write(volume.locator, data)
    snap = await s.wait_ready(await s.take(s.new_id(), volumes))
    for volume in volumes:
        await s.write(volume.locator, os.urandom(SIZE))
    await s.revert(snap, volumes=volumes)
    for volume, data in zip(volumes, before, strict=True):
        same(data, await s.read(volume.locator, SIZE), f"{volume.disk}'s state A")


@check(
    "revert.repeatable",
    "A snapshot survives a revert: reverting to it again restores it again",
    requires=REVERT,
)
async def repeatable(s: Session) -> None:
    s.require_data()
    (volume,) = await s.volumes(1)
    a = os.urandom(SIZE)
    await s.write(volume.locator, a)
    snap = await s.wait_ready(await s.take(s.new_id(), [volume]))
    for _ in range(2):
        await s.write(volume.locator, os.urandom(SIZE))
        await s.revert(snap, volumes=[volume])
        same(a, await s.read(volume.locator, SIZE), "state A")


@check(
    "revert.undo_restores_current",
    "save_current_state keeps an undo snapshot that brings B back",
    requires=UNDO,
)
async def undo_restores(s: Session) -> None:
    s.require_data()
    (volume,) = await s.volumes(1)
    a, b = os.urandom(SIZE), os.urandom(SIZE)
    await s.write(volume.locator, a)
    snap = await s.wait_ready(await s.take(s.new_id(), [volume]))
    await s.write(volume.locator, b)
    reply = await s.revert(snap, undo_id=s.new_id("undo"), volumes=[volume])
    expect(reply.HasField("undo"), "an undo snapshot", "none")
    same(a, await s.read(volume.locator, SIZE), "state A after the revert")
    undo = await s.wait_ready(reply.undo)
    await s.revert(undo, volumes=[volume])
    same(b, await s.read(volume.locator, SIZE), "state B after reverting to the undo snapshot")


@check(
    "revert.undo_deletable",
    "The undo snapshot is a snapshot like any other: listed and deleted",
    requires=UNDO,
)
async def undo_deletable(s: Session) -> None:
    volumes = await s.volumes(1)
    snap = await s.wait_ready(await s.take(s.new_id(), volumes))
    undo_id = s.new_id("undo")
    reply = await s.revert(snap, undo_id=undo_id, volumes=volumes)
    if s.has(Capability.LIST):
        listed = await s.listed_ids()
        expect(undo_id in listed, f"{undo_id} listed after the revert", listed)
    await expect_ok(s.delete(undo_id, reply.undo), "DeleteVMSnapshot of the undo snapshot")
    if s.has(Capability.LIST):
        listed = await s.listed_ids()
        expect(undo_id not in listed, f"{undo_id} gone after its delete", listed)


@check(
    "revert.deleted_not_found",
    "Reverting to a deleted snapshot is NOT_FOUND, never a silent success",
    requires=REVERT,
)
async def deleted_not_found(s: Session) -> None:
    volumes = await s.volumes(1)
    snap = await s.wait_ready(await s.take(s.new_id(), volumes))
    await s.delete(snap.vm_snapshot_id, snap)
    await expect_code(
        s.revert(snap, volumes=volumes), NOT_FOUND, what="revert to a deleted snapshot"
    )


@check(
    "revert.missing_id_invalid",
    "A revert without vm_snapshot_id is INVALID_ARGUMENT",
    requires=REVERT,
)
async def missing_id(s: Session) -> None:
    request = driver_pb2.RevertVMSnapshotRequest(vm=s.vm())
    await expect_code(
        call("RevertVMSnapshot", s.driver.RevertVMSnapshot, request, s.rpc_timeout),
        INVALID,
        what="revert without an id",
    )


@check(
    "revert.undo_needs_id",
    "save_current_state without undo_vm_snapshot_id is INVALID_ARGUMENT",
    requires=UNDO,
)
async def undo_needs_id(s: Session) -> None:
    volumes = await s.volumes(1)
    snap = await s.wait_ready(await s.take(s.new_id(), volumes))
    request = driver_pb2.RevertVMSnapshotRequest(
        vm_snapshot_id=snap.vm_snapshot_id, snapshot=snap, vm=s.vm(volumes), save_current_state=True
    )
    await expect_code(
        call("RevertVMSnapshot", s.driver.RevertVMSnapshot, request, s.rpc_timeout),
        INVALID,
        what="save_current_state without an undo id",
    )
