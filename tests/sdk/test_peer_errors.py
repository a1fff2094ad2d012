"""What a peer says in an error cannot hurt the caller.

Raw servicers on the generated stubs (bypassing the SDK's server side, which
would never send these) answer with garbage ``grpc-status-details-bin``
trailers and oversized messages and details. The SDK's clients — the host's
only way to reach drivers and agents — must turn each into a VMSnapError with
a code the caller can act on and everything in it bounded
(:mod:`vmsnap_sdk.limits`), never into an exception that escapes: one such
answer used to kill the host's health loop for every driver and agent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsnap_sdk import VM, AgentClient, DriverClient, TakeRequest, Volume, limits
from vmsnap_sdk import errors as e
from vmsnap_sdk._errors import DOMAIN, from_status
from vmsnap_sdk._proto.driver.v1 import driver_pb2, driver_pb2_grpc
from vmsnap_sdk._proto.hypervisor.v1 import hypervisor_pb2_grpc

DETAILS = "grpc-status-details-bin"
VM1 = VM(id="vm-1", volumes=(Volume("vda", "x://1"),))
TAKE = TakeRequest("snap-1", VM1, VM1.volumes)

Answer = tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]


@dataclass
class Script:
    """What the raw servicers answer: ``take`` for TakeVMSnapshot and GetAgentInfo."""

    take: Answer = (grpc.StatusCode.UNAVAILABLE, "array down", ())
    calls: list[str] = field(default_factory=list)


class RawDriver(driver_pb2_grpc.StorageDriverServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    async def GetDriverInfo(self, request: Any, context: Any) -> Any:
        self.script.calls.append("GetDriverInfo")
        return driver_pb2.GetDriverInfoResponse(
            name="io.vmsnap.test.raw", vendor_version="0.0.1", contract_versions=["v1"]
        )

    async def TakeVMSnapshot(self, request: Any, context: Any) -> Any:
        self.script.calls.append("TakeVMSnapshot")
        await context.abort(*self.script.take)


class RawAgent(hypervisor_pb2_grpc.HypervisorAgentServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    async def GetAgentInfo(self, request: Any, context: Any) -> Any:
        await context.abort(*self.script.take)


@dataclass
class Peer:
    script: Script
    driver: DriverClient
    agent: AgentClient


@pytest.fixture
async def peer(sockdir: Path) -> AsyncIterator[Peer]:
    script = Script()
    server = grpc.aio.server()
    driver_pb2_grpc.add_StorageDriverServicer_to_server(RawDriver(script), server)
    hypervisor_pb2_grpc.add_HypervisorAgentServicer_to_server(RawAgent(script), server)
    address = f"unix://{sockdir}/raw.sock"
    server.add_insecure_port(address)
    await server.start()
    driver = DriverClient.connect(address, timeout=5)
    agent = AgentClient.connect(address, timeout=5)
    yield Peer(script, driver, agent)
    await driver.close()
    await agent.close()
    await server.stop(0)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _status(code: grpc.StatusCode, message: str, *details: Any) -> bytes:
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.extend(_pack(d) for d in details)
    return status.SerializeToString()


def _bad_any() -> bytes:
    # Says it is an ErrorInfo; its bytes are not one.
    garbage = any_pb2.Any(
        type_url="type.googleapis.com/google.rpc.ErrorInfo", value=b"\xff\xff\xff\xff"
    )
    status = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message="down")
    status.details.append(garbage)
    return status.SerializeToString()


GARBAGE = {
    "not-protobuf": b"\xff\x00garbage\x99",
    "code-contradicts-call": _status(grpc.StatusCode.NOT_FOUND, "gone"),
    "detail-does-not-decode": _bad_any(),
}


@pytest.mark.parametrize("trailer", sorted(GARBAGE))
async def test_garbage_details_are_unknown_for_that_call_only(peer: Peer, trailer: str) -> None:
    peer.script.take = (grpc.StatusCode.UNAVAILABLE, "array down", ((DETAILS, GARBAGE[trailer]),))
    with pytest.raises(e.VMSnapError) as caught:
        await peer.driver.take_snapshot(TAKE)
    error = caught.value
    assert type(error) is e.Unknown and not error.final, error
    assert "malformed error details" in error.message and "UNAVAILABLE" in error.message
    assert error.reason == "MALFORMED_ERROR_DETAILS"
    assert len(error.message) <= limits.MAX_MESSAGE
    # The client stays usable: the next call on it works.
    info = await peer.driver.get_info()
    assert info.name == "io.vmsnap.test.raw"


async def test_garbage_details_from_an_agent_are_unknown(peer: Peer) -> None:
    peer.script.take = (grpc.StatusCode.UNAVAILABLE, "down", ((DETAILS, GARBAGE["not-protobuf"]),))
    with pytest.raises(e.Unknown, match="malformed error details"):
        await peer.agent.get_info()


async def test_a_megabyte_message_is_unknown_and_bounded(peer: Peer) -> None:
    """gRPC drops a status whose metadata is over its limit: the peer's code is lost,
    so the outcome is unknown — never a final code (RESOURCE_EXHAUSTED) that would
    let the host forget a call that may have happened."""
    peer.script.take = (grpc.StatusCode.UNAVAILABLE, "x" * (1 << 20), ())
    with pytest.raises(e.VMSnapError) as caught:
        await peer.driver.take_snapshot(TAKE)
    error = caught.value
    assert type(error) is e.Unknown and not error.final, error
    assert error.reason == "ANSWER_TOO_LARGE"
    assert len(error.message) <= limits.MAX_MESSAGE
    assert "x" * 100 not in error.message


async def test_a_long_message_keeps_its_code_and_is_cut_to_the_documented_size(
    peer: Peer,
) -> None:
    text = "array says: " + "y" * 6000
    peer.script.take = (grpc.StatusCode.UNAVAILABLE, text, ())
    with pytest.raises(e.Unavailable) as caught:
        await peer.driver.take_snapshot(TAKE)
    message = caught.value.message
    assert len(message) == limits.MAX_MESSAGE
    assert message.startswith("array says: yyy")
    assert message.endswith(f"[cut: {len(text)} chars in all]")


async def test_error_details_from_a_peer_are_bounded(peer: Peer) -> None:
    info = error_details_pb2.ErrorInfo(reason="R" * 500, domain=DOMAIN)
    info.metadata.update({f"k{i:03}": "v" for i in range(100)})
    info.metadata["a-long-value"] = "w" * 1500
    info.metadata["z" * 200] = "a key too long to keep"
    bad = error_details_pb2.BadRequest()
    for i in range(60):
        bad.field_violations.add(field=f"volumes[{i}].disk", description="bad")
    bad.field_violations[0].description = "d" * 1500
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=10**9))
    peer.script.take = (
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad",
        ((DETAILS, _status(grpc.StatusCode.INVALID_ARGUMENT, "bad", info, bad, retry)),),
    )
    with pytest.raises(e.InvalidArgument) as caught:
        await peer.driver.take_snapshot(TAKE)
    error = caught.value
    assert error.reason == "R" * limits.MAX_ERROR_REASON
    assert len(error.metadata) == limits.MAX_ERROR_METADATA_ENTRIES
    assert error.metadata["a-long-value"].endswith("[cut: 1500 chars in all]")
    assert all(len(k) <= limits.MAX_ERROR_METADATA_KEY for k in error.metadata)
    assert all(len(v) <= limits.MAX_ERROR_METADATA_VALUE for v in error.metadata.values())
    assert len(error.field_violations) == limits.MAX_FIELD_VIOLATIONS
    assert len(error.field_violations[0][1]) == limits.MAX_MESSAGE


async def test_a_retry_delay_from_a_peer_is_clamped(peer: Peer) -> None:
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=10**9))
    peer.script.take = (
        grpc.StatusCode.UNAVAILABLE,
        "later",
        ((DETAILS, _status(grpc.StatusCode.UNAVAILABLE, "later", retry)),),
    )
    with pytest.raises(e.Unavailable) as caught:
        await peer.driver.take_snapshot(TAKE)
    assert caught.value.retry_delay == limits.MAX_RETRY_DELAY_SECONDS


CODES = [c for c in grpc.StatusCode if c != grpc.StatusCode.OK]


@settings(max_examples=300, deadline=None)
@given(code=st.sampled_from(CODES), message=st.text(max_size=3000), details=st.binary())
def test_any_status_from_a_peer_becomes_a_bounded_error(
    code: grpc.StatusCode, message: str, details: bytes
) -> None:
    error = from_status(code, message, details or None)
    assert isinstance(error, e.VMSnapError)
    assert len(error.message) <= limits.MAX_MESSAGE
    assert len(error.reason) <= limits.MAX_ERROR_REASON
    assert len(error.metadata) <= limits.MAX_ERROR_METADATA_ENTRIES


@settings(max_examples=200, deadline=None)
@given(
    code=st.sampled_from(CODES),
    message=st.text(max_size=3000),
    reason=st.text(max_size=300),
    metadata=st.dictionaries(st.text(max_size=100), st.text(max_size=400), max_size=40),
    violations=st.lists(st.tuples(st.text(max_size=400), st.text(max_size=2000)), max_size=30),
)
def test_well_formed_details_of_any_size_are_bounded(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str],
    violations: list[tuple[str, str]],
) -> None:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)
    bad = error_details_pb2.BadRequest()
    for name, description in violations:
        bad.field_violations.add(field=name, description=description)
    error = from_status(code, "", _status(code, message, info, bad))
    assert error.code == (code if code in {c.code for c in _CLASSES} else grpc.StatusCode.UNKNOWN)
    assert error.message == limits.cut(message)
    assert len(error.reason) <= limits.MAX_ERROR_REASON
    assert len(error.metadata) <= limits.MAX_ERROR_METADATA_ENTRIES
    assert all(len(v) <= limits.MAX_ERROR_METADATA_VALUE for v in error.metadata.values())
    if isinstance(error, e.InvalidArgument):
        assert len(error.field_violations) == min(len(violations), limits.MAX_FIELD_VIOLATIONS)
        for name, description in error.field_violations:
            assert len(name) <= limits.MAX_FIELD_PATH
            assert len(description) <= limits.MAX_MESSAGE


_CLASSES = [
    e.InvalidArgument,
    e.Unauthenticated,
    e.PermissionDenied,
    e.NotFound,
    e.AlreadyExists,
    e.FailedPrecondition,
    e.ResourceExhausted,
    e.Unimplemented,
    e.Aborted,
    e.Internal,
    e.Unavailable,
    e.DeadlineExceeded,
    e.Cancelled,
    e.Unknown,
]
