"""take: TakeVMSnapshot returns a result object covering exactly the volumes, idempotently."""

from __future__ import annotations

from vmsnap_sdk import _convert as cv
from vmsnap_sdk import limits
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk.conformance._expect import expect, expect_code
from vmsnap_sdk.conformance._registry import check
from vmsnap_sdk.conformance._session import Session, handles
from vmsnap_sdk.conformance.checks._common import (
    ALREADY_EXISTS,
    INVALID,
    NOT_FOUND,
    describe_result,
    foreign_volume,
    missing_volume,
    own_or_foreign,
)


@check(
    "take.covers_requested_volumes",
    "The result has exactly one entry per requested volume, with its locator",
)
async def covers_requested(s: Session) -> None:
    volumes = await s.volumes(2)
    result = await s.take(s.new_id(), volumes)
    got = sorted((v.disk, v.locator) for v in result.volume_snapshots)
    expect(
        got == sorted((v.disk, v.locator) for v in volumes),
        sorted((v.disk, v.locator) for v in volumes),
        got,
    )


@check("take.echoes_id", "The result carries the host's vm_snapshot_id")
async def echoes_id(s: Session) -> None:
    snapshot_id = s.new_id()
    result = await s.take(snapshot_id, await s.volumes(1))
    expect(result.vm_snapshot_id == snapshot_id, repr(snapshot_id), repr(result.vm_snapshot_id))


@check("take.handles_present", "Every volume snapshot has a handle the host can hand back")
async def handles_present(s: Session) -> None:
    result = await s.take(s.new_id(), await s.volumes(2))
    empty = [v.disk for v in result.volume_snapshots if not v.handle]
    expect(
        len(result.volume_snapshots) > 0 and not empty,
        "a handle for every volume",
        describe_result(result),
    )


@check("take.distinct_handles", "Two snapshots of one volume have different handles")
async def distinct_handles(s: Session) -> None:
    volumes = await s.volumes(1)
    first = await s.take(s.new_id(), volumes)
    second = await s.take(s.new_id(), volumes)
    expect(
        set(handles(first).values()).isdisjoint(handles(second).values()),
        "different handles for different snapshots",
        f"{describe_result(first)} and {describe_result(second)}",
    )


@check(
    "take.retry_same_result",
    "A retry with the same id returns the same handles (no second snapshot)",
)
async def retry_same(s: Session) -> None:
    volumes = await s.volumes(2)
    snapshot_id = s.new_id()
    first = await s.take(snapshot_id, volumes)
    again = await s.take(snapshot_id, volumes)
    expect(
        handles(first) == handles(again) and first.group_handle == again.group_handle,
        describe_result(first),
        describe_result(again),
    )


@check("take.same_id_other_volumes", "The same id with other volumes is ALREADY_EXISTS")
async def same_id_other_volumes(s: Session) -> None:
    volumes = await s.volumes(2)
    snapshot_id = s.new_id()
    await s.take(snapshot_id, volumes[:1])
    await expect_code(
        s.take(snapshot_id, volumes), ALREADY_EXISTS, what="the same id with another volume set"
    )


@check("take.missing_id_invalid", "A take without vm_snapshot_id is INVALID_ARGUMENT")
async def missing_id(s: Session) -> None:
    await expect_code(s.take("", await own_or_foreign(s)), INVALID, what="take without an id")


@check("take.bad_id_invalid", "A vm_snapshot_id outside [A-Za-z0-9._-] is INVALID_ARGUMENT")
async def bad_id(s: Session) -> None:
    volumes = await own_or_foreign(s)
    for bad in ("../etc/passwd", "snap id", "snap:1"):
        await expect_code(s.take(bad, volumes), INVALID, what=f"take with id {bad!r}")


@check("take.missing_volumes_invalid", "A take without volumes is INVALID_ARGUMENT")
async def missing_volumes(s: Session) -> None:
    await expect_code(s.take(s.new_id(), []), INVALID, what="take without volumes")


@check("take.missing_vm_invalid", "A take without a VM id is INVALID_ARGUMENT")
async def missing_vm(s: Session) -> None:
    request = s.take_request(s.new_id(), await own_or_foreign(s))
    request.vm.id = ""
    await expect_code(s.take_raw(request), INVALID, what="take without vm.id")


@check("take.unknown_volume_not_found", "A take of a volume the driver does not have is NOT_FOUND")
async def unknown_volume(s: Session) -> None:
    # Another storage's locator may also be malformed to this driver.
    await expect_code(
        s.take(s.new_id(), [foreign_volume("vda")]),
        NOT_FOUND,
        INVALID,
        what="take of another storage's volume",
    )
    volume, codes, what = await missing_volume(s)
    await expect_code(s.take(s.new_id(), [volume]), *codes, what=what)


@check("take.group_snapshot", "Several volumes in one call give one snapshot covering them all")
async def group_snapshot(s: Session) -> None:
    volumes = await s.volumes(3)
    result = await s.take(s.new_id(), volumes)
    got = handles(result)
    expect(
        set(got) == {v.disk for v in volumes} and len(set(got.values())) == len(volumes),
        f"distinct handles for {[v.disk for v in volumes]}",
        describe_result(result),
    )


@check(
    "take.consistency_reported",
    "The result says which consistency the driver achieved (never UNSPECIFIED)",
)
async def consistency(s: Session) -> None:
    volumes = await s.volumes(1)
    request = s.take_request(s.new_id(), volumes)
    request.quiesced = True
    request.consistency = common_pb2.CONSISTENCY_FILESYSTEM
    result = await s.take_raw(request)
    expect(
        result.consistency != common_pb2.CONSISTENCY_UNSPECIFIED,
        "a consistency level",
        common_pb2.Consistency.Name(result.consistency),
    )


@check("take.tagged_with_vm", "The result carries the VM id the driver tagged the snapshot with")
async def tagged(s: Session) -> None:
    result = await s.take(s.new_id(), await s.volumes(1))
    expect(result.vm_id == s.vm_id, repr(s.vm_id), repr(result.vm_id))


@check(
    "take.metadata_bounded",
    "Driver metadata, handles and group handle keep the contract's size limits: the host "
    "stores them",
)
async def metadata_bounded(s: Session) -> None:
    result = await s.take(s.new_id(), await s.volumes(2))
    problem = limits.result_problem(cv.result_from_pb(result))
    expect(
        problem is None,
        f"at most {limits.MAX_METADATA_ENTRIES} metadata entries and "
        f"{limits.MAX_METADATA_BYTES} bytes, handles of at most {limits.MAX_HANDLE_BYTES} "
        "bytes (vmsnap_sdk.limits)",
        problem,
    )


@check("take.sizes_valid", "Sizes are 0 (unknown) or positive")
async def sizes(s: Session) -> None:
    result = await s.take(s.new_id(), await s.volumes(1))
    bad = [(v.disk, v.size_bytes) for v in result.volume_snapshots if v.size_bytes < 0]
    expect(not bad, "size_bytes ≥ 0", bad)
