"""The bounded fuzz run of the test suite (the full one: ``python -m tests.fuzz``),
and message size limits on every server and client."""

from __future__ import annotations

import ast

import grpc
import pytest

from tests.fuzz.runner import run, targets
from tests.support.procs import ROOT
from vmsnap_sdk._tls import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES

#: 2,200 requests in all: about 30 s on the CI machine (process start included).
COUNTS = {"host": 1200, "driver": 500, "agent": 500}


@pytest.mark.timeout(300)
def test_no_request_gets_internal_unknown_or_a_hang() -> None:
    report = run(COUNTS)
    assert sum(report.sent.values()) >= 2000
    print("\n".join(report.lines()))


def test_every_server_refuses_a_message_over_its_limit() -> None:
    big = b"\n" + b"\xff\xff\xff\x08" + b"x" * (MAX_MESSAGE_BYTES + 1024)  # field 1, > 16 MiB
    with targets() as all_targets:
        for target in all_targets:
            method = target.methods[0]
            rpc = target.channel.unary_unary(
                f"/{method.containing_service.full_name}/{method.name}",
                request_serializer=None,
                response_deserializer=None,
            )
            with pytest.raises(grpc.RpcError) as caught:
                rpc(big, timeout=30)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, target.name  # type: ignore[attr-defined]
            assert target.serving()


def test_every_server_and_client_is_made_with_the_sdks_limits() -> None:
    """gRPC servers and channels are made in one place each (vmsnap_sdk._server,
    vmsnap_sdk._tls.open_channel), both with the message size limits."""
    assert ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES) in CHANNEL_OPTIONS
    assert ("grpc.max_send_message_length", MAX_MESSAGE_BYTES) in CHANNEL_OPTIONS
    makers = {"insecure_channel", "secure_channel", "server"}
    found = []
    for root in ("sdk/src", "host/src", "agent/src", "drivers", "emulators/src"):
        for path in sorted((ROOT / root).rglob("*.py")):
            if "_proto" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in makers
                    and ast.unparse(node.func.value) in ("grpc", "grpc.aio")
                ):
                    found.append(f"{path.relative_to(ROOT)}:{node.func.attr}")
    assert sorted(found) == [
        "sdk/src/vmsnap_sdk/_server.py:server",
        "sdk/src/vmsnap_sdk/_tls.py:insecure_channel",
        "sdk/src/vmsnap_sdk/_tls.py:secure_channel",
    ]


def test_a_timestamp_no_datetime_can_hold_is_unknown_not_internal() -> None:
    """Found by this suite: a driver's RevertVMSnapshot with snapshot.create_time
    nanos = -1 answered INTERNAL (ToDatetime raised in the SDK's conversion)."""
    from google.protobuf import timestamp_pb2

    from vmsnap_sdk._convert import ts_from_pb

    for bad in (
        timestamp_pb2.Timestamp(seconds=1, nanos=-1),
        timestamp_pb2.Timestamp(seconds=1, nanos=1_000_000_000),
        timestamp_pb2.Timestamp(seconds=2**62),
        timestamp_pb2.Timestamp(seconds=-(2**62)),
    ):
        assert ts_from_pb(bad) is None
    assert ts_from_pb(timestamp_pb2.Timestamp(seconds=86400)) is not None
