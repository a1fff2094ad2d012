"""Every error crosses the wire as its code, with details, and comes back as its class."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2

from tests.sdk.drivers import ScriptedDriver
from vmsnap_sdk import VM, DriverClient, Server, TakeRequest, Volume, start_driver_server
from vmsnap_sdk import errors as e
from vmsnap_sdk._errors import CODE_NUMBERS, INTERNAL_MESSAGE


@pytest.fixture
async def served(sockdir: Path) -> AsyncIterator[tuple[ScriptedDriver, DriverClient, Server]]:
    driver = ScriptedDriver()
    server = await start_driver_server(driver, f"unix://{sockdir}/d.sock", grace_seconds=1)
    client = DriverClient.connect(f"unix://{sockdir}/d.sock", timeout=5)
    yield driver, client, server
    await client.close()
    await server.stop(0)


VM1 = VM(id="vm-1", volumes=(Volume("vda", "x://1"),))
TAKE = TakeRequest("snap-1", VM1, VM1.volumes)


CASES: list[tuple[e.VMSnapError, grpc.StatusCode]] = [
    (e.InvalidArgument.for_field("volumes[0].locator", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (e.NotFound("volume 42 is unknown", reason="VOLUME_NOT_FOUND"), grpc.StatusCode.NOT_FOUND),
    (e.AlreadyExists("other volumes"), grpc.StatusCode.ALREADY_EXISTS),
    (e.FailedPrecondition("volume in use"), grpc.StatusCode.FAILED_PRECONDITION),
    (e.ResourceExhausted("32 snapshots per volume"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.Unimplemented("no revert"), grpc.StatusCode.UNIMPLEMENTED),
    (e.Aborted("busy", retry_delay=1.5), grpc.StatusCode.ABORTED),
    (e.Unavailable("array down", retry_delay=2.0), grpc.StatusCode.UNAVAILABLE),
    (e.DeadlineExceeded("array slow"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (e.Cancelled("cancelled"), grpc.StatusCode.CANCELLED),
    (e.Unknown("who knows"), grpc.StatusCode.UNKNOWN),
    (e.Internal("bug"), grpc.StatusCode.INTERNAL),
]


@pytest.mark.parametrize(("error", "code"), CASES, ids=[c.name for _, c in CASES])
async def test_each_error_arrives_as_its_code_with_details(
    served: tuple[ScriptedDriver, DriverClient, Server], error: e.VMSnapError, code: grpc.StatusCode
) -> None:
    driver, client, _ = served
    error.metadata["volume"] = "42"
    driver.raise_on_take = error
    with pytest.raises(e.VMSnapError) as caught:
        await client.take_snapshot(TAKE)
    got = caught.value
    assert type(got) is type(error)
    assert got.code == code
    assert got.message == error.message
    assert got.reason == error.reason
    assert got.metadata == {"volume": "42"}
    assert got.final == (
        code
        not in {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.UNKNOWN,
        }
    )
    if isinstance(error, e.InvalidArgument):
        assert isinstance(got, e.InvalidArgument)
        assert got.field_violations == [("volumes[0].locator", "bad")]
    if code in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE):
        assert getattr(got, "retry_delay", None) == getattr(error, "retry_delay", None)
    assert isinstance(got.__cause__, grpc.aio.AioRpcError)


async def test_unexpected_exception_is_internal_without_its_text(
    served: tuple[ScriptedDriver, DriverClient, Server],
) -> None:
    driver, client, _ = served
    driver.raise_on_take = RuntimeError("login failed for admin:s3cret@array")
    with pytest.raises(e.Internal) as caught:
        await client.take_snapshot(TAKE)
    assert caught.value.message == INTERNAL_MESSAGE
    assert "s3cret" not in str(caught.value)
    rpc_error = caught.value.__cause__
    assert isinstance(rpc_error, grpc.aio.AioRpcError)
    assert "s3cret" not in (rpc_error.details() or "")
    assert all("s3cret" not in repr(v) for _, v in rpc_error.trailing_metadata() or ())


async def test_malformed_input_names_the_field(
    served: tuple[ScriptedDriver, DriverClient, Server],
) -> None:
    driver, client, _ = served
    bad = [
        (TakeRequest("", VM1, VM1.volumes), "vm_snapshot_id"),
        (TakeRequest("bad id!", VM1, VM1.volumes), "vm_snapshot_id"),
        (TakeRequest("s1", VM1, ()), "volumes"),
        (TakeRequest("s1", VM1, (Volume("vda", "no-scheme"),)), "volumes[0].locator"),
        (
            TakeRequest("s1", VM1, (Volume("vda", "x://1"), Volume("vda", "x://2"))),
            "volumes[1].disk",
        ),
        (TakeRequest("s1", VM(id=""), VM1.volumes), "vm.id"),
        (TakeRequest("s1", VM1, VM1.volumes, parameters={"k": "v" * 5000}), "parameters['k']"),
    ]
    for request, field in bad:
        with pytest.raises(e.InvalidArgument) as caught:
            await client.take_snapshot(request)
        assert caught.value.field_violations[0][0] == field, request
        assert field in caught.value.message
    assert driver.calls == 0, "the driver never sees malformed input"


def test_status_codes_are_the_canonical_numbers() -> None:
    for error, code in CASES:
        assert CODE_NUMBERS[code.name] == code.value[0] == getattr(code_pb2, code.name)
        assert error.code is code
