"""concurrency: the host calls in parallel; a driver serializes or answers ABORTED, never corrupts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._types import Capability
from vmsnap_sdk.conformance._expect import expect, fail
from vmsnap_sdk.conformance._registry import check
from vmsnap_sdk.conformance._rpc import RpcFailure
from vmsnap_sdk.conformance._session import Session, handles
from vmsnap_sdk.conformance.checks._common import ABORTED, describe_result

_T = TypeVar("_T")

PARALLEL = 6
SIZE = 64 * 1024
REVERT = (Capability.REVERT,)


async def retry_aborted(make: Callable[[], Awaitable[_T]], attempts: int = 10) -> _T:
    """Run a call, retrying ABORTED with a growing backoff as the host does."""
    delay = 0.02
    for attempt in range(attempts):
        try:
            return await make()
        except RpcFailure as exc:
            if exc.code != ABORTED or attempt == attempts - 1:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise AssertionError("unreachable")  # pragma: no cover


async def gather_ok(calls: list[Awaitable[_T]], what: str) -> list[_T]:
    """All calls' results; fails with the first call's error otherwise."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    for error in errors:
        if isinstance(error, RpcFailure):
            fail(f"every {what} to succeed (ABORTED retried)", error.summary())
        raise error
    return [r for r in results if not isinstance(r, BaseException)]


async def first_of_outcomes(calls: list[Awaitable[object]], what: str) -> None:
    """Each call either succeeds or is ABORTED."""
    for result in await asyncio.gather(*calls, return_exceptions=True):
        if isinstance(result, RpcFailure) and result.code != ABORTED:
            fail(f"each concurrent {what} OK or ABORTED", result.summary())
        if isinstance(result, BaseException) and not isinstance(result, RpcFailure):
            raise result


@check(
    "concurrency.parallel_takes",
    "Parallel takes with distinct ids on one volume all succeed, distinct",
)
async def parallel_takes(s: Session) -> None:
    volumes = await s.volumes(1)
    ids = [s.new_id() for _ in range(PARALLEL)]

    def take(snapshot_id: str) -> Callable[[], Awaitable[driver_pb2.VMSnapshotResult]]:
        return lambda: s.take(snapshot_id, volumes)

    results = await gather_ok([retry_aborted(take(i)) for i in ids], "parallel take")
    all_handles = [h for r in results for h in handles(r).values()]
    expect(len(set(all_handles)) == PARALLEL, f"{PARALLEL} distinct handles", all_handles)
    if s.has(Capability.LIST):
        listed = await s.listed_ids()
        expect(sorted(listed) == sorted(ids), f"each of {PARALLEL} snapshots listed once", listed)


@check("concurrency.same_id_converges", "Concurrent retries of one id converge to one snapshot")
async def same_id(s: Session) -> None:
    volumes = await s.volumes(2)
    snapshot_id = s.new_id()
    results = await gather_ok(
        [retry_aborted(lambda: s.take(snapshot_id, volumes)) for _ in range(PARALLEL)],
        "concurrent retry",
    )
    answers = {describe_result(r) for r in results}
    expect(len(answers) == 1, "the same handles for every retry", sorted(answers))
    if s.has(Capability.LIST):
        listed = await s.listed_ids()
        expect(listed == [snapshot_id], f"{snapshot_id} listed once", listed)


@check("concurrency.parallel_deletes", "Concurrent deletes of one id all succeed and remove it")
async def parallel_deletes(s: Session) -> None:
    snap = await s.take(s.new_id(), await s.volumes(1))
    await gather_ok(
        [retry_aborted(lambda: s.delete(snap.vm_snapshot_id)) for _ in range(PARALLEL)],
        "concurrent delete",
    )
    if s.has(Capability.LIST):
        listed = await s.listed_ids()
        expect(snap.vm_snapshot_id not in listed, f"{snap.vm_snapshot_id} gone", listed)


@check(
    "concurrency.reverts_never_corrupt",
    "Concurrent reverts of one volume leave one whole state, never a mix",
    requires=REVERT,
)
async def reverts_never_corrupt(s: Session) -> None:
    s.require_data()
    (volume,) = await s.volumes(1)
    states = [os.urandom(SIZE), os.urandom(SIZE)]
    snaps: list[driver_pb2.VMSnapshotResult] = []
    for data in states:
        await s.write(volume.locator, data)
        snaps.append(await s.wait_ready(await s.take(s.new_id(), [volume])))
    for round_ in range(3):
        await first_of_outcomes(
            [s.revert(snap, volumes=[volume]) for snap in (snaps if round_ % 2 else snaps[::-1])],
            "revert",
        )
        got = await s.read(volume.locator, SIZE)
        expect(got in states, "the volume wholly in one snapshot's state", "a mix of both")


@check(
    "concurrency.take_during_revert",
    "A take racing a revert captures one whole state",
    requires=REVERT,
)
async def take_during_revert(s: Session) -> None:
    s.require_data()
    (volume,) = await s.volumes(1)
    a, b = os.urandom(SIZE), os.urandom(SIZE)
    await s.write(volume.locator, a)
    snap_a = await s.wait_ready(await s.take(s.new_id(), [volume]))
    await s.write(volume.locator, b)
    racing_id = s.new_id("race")
    await first_of_outcomes(
        [s.revert(snap_a, volumes=[volume]), s.take(racing_id, [volume])], "revert and take"
    )
    racing = await s.wait_ready(await retry_aborted(lambda: s.take(racing_id, [volume])))
    await s.write(volume.locator, os.urandom(SIZE))
    await retry_aborted(lambda: s.revert(racing, volumes=[volume]))
    got = await s.read(volume.locator, SIZE)
    expect(got in (a, b), "the racing snapshot wholly before or after the revert", "a mix")
