"""clone: CloneVolumes makes independent volumes holding the snapshot's bytes.

What the host relies on when it makes a new VM from a snapshot: the new
volumes read as the snapshot, writes to them never reach the source (nor the
other way round), a retry of the same clone_id makes nothing twice, the
driver claims the new volumes, and DeleteClonedVolumes by the id alone leaves
nothing behind (how the host compensates a failed clone).
"""

from __future__ import annotations

import os

from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._types import Capability
from vmsnap_sdk.conformance._expect import expect, expect_code, expect_ok
from vmsnap_sdk.conformance._registry import check
from vmsnap_sdk.conformance._rpc import call
from vmsnap_sdk.conformance._session import Session
from vmsnap_sdk.conformance.checks._common import ALREADY_EXISTS, INVALID, NOT_FOUND
from vmsnap_sdk.conformance.checks.revert import SIZE, same

CLONE = (Capability.CLONE_VOLUMES,)
PLUGIN = driver_pb2.PRIORITY_PLUGIN


@check(
    "clone.reads_snapshot",
    "Write A, take, write B, clone: the clone reads A, the source still reads B",
    requires=CLONE,
)
async def reads_snapshot(s: Session) -> None:
    s.require_data()
    volumes = await s.volumes(2)
    a = [os.urandom(SIZE) for _ in volumes]
    b = [os.urandom(SIZE) for _ in volumes]
    for volume, data in zip(volumes, a, strict=True):
        await s.write(volume.locator, data)
    snap = await s.wait_ready(await s.take(s.new_id(), volumes))
    for volume, data in zip(volumes, b, strict=True):
        await s.write(volume.locator, data)
    clones = await s.clone(snap, s.new_id("clone"))
    expect(
        [c.disk for c in clones] == [v.disk for v in snap.volume_snapshots],
        "one new volume per target, in target order",
        [c.disk for c in clones],
    )
    sources = {v.locator for v in volumes}
    expect(
        not sources & {c.locator for c in clones},
        "new locators, none of them a source volume's",
        [c.locator for c in clones],
    )
    by_disk = {v.disk: (v, i) for i, v in enumerate(volumes)}
    for clone in clones:
        source, i = by_disk[clone.disk]
        same(a[i], await s.read(clone.locator, SIZE), f"clone of {clone.disk} (state A)")
        same(b[i], await s.read(source.locator, SIZE), f"source {clone.disk} (state B)")


@check(
    "clone.independent",
    "Writes to a clone never reach its source, nor the other way; the clone outlives its snapshot",
    requires=CLONE,
)
async def independent(s: Session) -> None:
    s.require_data()
    (volume,) = await s.volumes(1)
    a, c, d = os.urandom(SIZE), os.urandom(SIZE), os.urandom(SIZE)
    await s.write(volume.locator, a)
    snap = await s.wait_ready(await s.take(s.new_id(), [volume]))
    (clone,) = await s.clone(snap, s.new_id("clone"))
    await s.write(clone.locator, c)
    same(a, await s.read(volume.locator, SIZE), "the source after a write to its clone")
    await s.write(volume.locator, d)
    same(c, await s.read(clone.locator, SIZE), "the clone after a write to its source")
    await s.delete(snap.vm_snapshot_id, snap)
    same(c, await s.read(clone.locator, SIZE), "the clone after its snapshot was deleted")


@check(
    "clone.retry_same_volumes",
    "CloneVolumes again with the same clone_id returns the same volumes, makes no more",
    requires=CLONE,
)
async def retry_same(s: Session) -> None:
    volumes = await s.volumes(1)
    snap = await s.wait_ready(await s.take(s.new_id(), volumes))
    clone_id = s.new_id("clone")
    first = await s.clone(snap, clone_id)
    again = await expect_ok(s.clone(snap, clone_id), "a retried CloneVolumes")
    expect(
        [v.locator for v in again] == [v.locator for v in first],
        f"the same volumes {[v.locator for v in first]}",
        [v.locator for v in again],
    )


@check(
    "clone.same_id_other_targets",
    "The same clone_id with other target names is ALREADY_EXISTS",
    requires=CLONE,
)
async def same_id_other_targets(s: Session) -> None:
    volumes = await s.volumes(1)
    snap = await s.wait_ready(await s.take(s.new_id(), volumes))
    clone_id = s.new_id("clone")
    await s.clone(snap, clone_id, targets=[(volumes[0].disk, "first-name")])
    await expect_code(
        s.clone(snap, clone_id, targets=[(volumes[0].disk, "other-name")]),
        ALREADY_EXISTS,
        what="the same clone_id with another target name",
    )


@check(
    "clone.claimed",
    "The driver claims the volumes it cloned (CanHandle PLUGIN or above): the new VM "
    "can be snapshotted",
    requires=CLONE,
)
async def claimed(s: Session) -> None:
    volumes = await s.volumes(1)
    snap = await s.wait_ready(await s.take(s.new_id(), volumes))
    clones = await s.clone(snap, s.new_id("clone"))
    response = await call(
        "CanHandle",
        s.driver.CanHandle,
        driver_pb2.CanHandleRequest(
            vm=s.vm(clones), volumes=clones, operation=driver_pb2.OPERATION_TAKE
        ),
        s.rpc_timeout,
    )
    priorities = {d.disk: d.priority for d in response.decisions}
    expect(
        all(priorities.get(c.disk, 0) >= PLUGIN for c in clones),
        "PRIORITY_PLUGIN or above for every cloned volume",
        {d: driver_pb2.Priority.Name(p) for d, p in priorities.items()},
    )


@check(
    "clone.delete_removes",
    "DeleteClonedVolumes by the id alone removes the new volumes; again, or for an "
    "unknown id, it succeeds",
    requires=CLONE,
)
async def delete_removes(s: Session) -> None:
    s.require_data()
    volumes = await s.volumes(1)
    snap = await s.wait_ready(await s.take(s.new_id(), volumes))
    clone_id = s.new_id("clone")
    clones = await s.clone(snap, clone_id)
    await expect_ok(s.delete_clone(clone_id), "DeleteClonedVolumes")
    for clone in clones:
        await expect_code(
            s.read(clone.locator, 1), NOT_FOUND, what=f"a read of deleted clone {clone.locator}"
        )
    await expect_ok(s.delete_clone(clone_id), "DeleteClonedVolumes again (idempotent)")
    await expect_ok(s.delete_clone(s.new_id("never")), "DeleteClonedVolumes of an unknown id")


@check(
    "clone.missing_id_invalid",
    "CloneVolumes without clone_id is INVALID_ARGUMENT",
    requires=CLONE,
)
async def missing_id(s: Session) -> None:
    volumes = await s.volumes(1)
    snap = await s.wait_ready(await s.take(s.new_id(), volumes))
    request = driver_pb2.CloneVolumesRequest(
        vm_snapshot_id=snap.vm_snapshot_id,
        snapshot=snap,
        new_vm_id=f"{s.vm_id}-clone",
        targets=[driver_pb2.CloneTarget(disk=volumes[0].disk, name="no-id")],
    )
    await expect_code(
        call("CloneVolumes", s.driver.CloneVolumes, request, s.rpc_timeout),
        INVALID,
        what="a clone without an id",
    )
