"""Client certificates as identities, and the rule for listening off loopback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.security.harness import Stack, code_and_reason, stack
from tests.support.certs import CA
from vmsnap_host.app import HostApp
from vmsnap_host.config import Config
from vmsnap_host.main import parse_args
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_sdk._proto.host.v1 import host_pb2_grpc

MTLS_AUTH = """
[auth]
required = true

[[auth.principals]]
name = "ops"
role = "operator"
projects = ["proj-a"]
certificates = ["CN=ops-cert"]
"""


@pytest.fixture
def mtls_host(sockdir: Path, tmp_path: Path) -> Iterator[tuple[Stack, CA]]:
    ca = CA(tmp_path)
    server = ca.issue("host", server=True)
    for s in stack(sockdir, tmp_path, peers=False):
        s.channel = grpc.insecure_channel("unix:///nonexistent")  # unused: TLS below
        s.start_host(
            MTLS_AUTH,
            "--tls-cert",
            str(server.cert),
            "--tls-key",
            str(server.key),
            "--tls-client-ca",
            str(ca.pair.cert),
        )
        yield s, ca


def _channel(address: str, ca: CA, name: str) -> grpc.Channel:
    pair = ca.issue(name, server=False)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.pair.cert.read_bytes(),
        private_key=pair.key.read_bytes(),
        certificate_chain=pair.cert.read_bytes(),
    )
    return grpc.secure_channel(
        address, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def test_a_client_certificate_names_its_principal(mtls_host: tuple[Stack, CA]) -> None:
    s, ca = mtls_host
    with _channel(s.address, ca, "ops-cert") as channel:
        host = host_pb2_grpc.VMSnapshotServiceStub(channel)
        assert host.ListVMs(pb.ListVMsRequest(), timeout=10).vms == []
        with pytest.raises(grpc.RpcError) as caught:
            host.ListDrivers(pb.ListDriversRequest(), timeout=10)
        assert code_and_reason(caught.value)[0] == grpc.StatusCode.PERMISSION_DENIED
    with _channel(s.address, ca, "stranger") as channel:
        host = host_pb2_grpc.VMSnapshotServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            host.ListVMs(pb.ListVMsRequest(), timeout=10)
        assert code_and_reason(caught.value)[0] == grpc.StatusCode.UNAUTHENTICATED
        assert "CN=stranger" in caught.value.details()  # type: ignore[attr-defined]


def test_off_loopback_the_host_needs_tls_and_authentication(tmp_path: Path) -> None:
    def host(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vmsnap_host", "--db", str(tmp_path / "h.db"), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    plain = host("--listen", "0.0.0.0:0")
    assert plain.returncode != 0 and "only with TLS" in plain.stderr
    ca = CA(tmp_path)
    server = ca.issue("host", server=True)
    tls = ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
    no_auth = host("--listen", "0.0.0.0:0", *tls)
    assert no_auth.returncode != 0 and "requires authentication" in no_auth.stderr
    assert parse_args(["--listen", "[::]:5000", "--db", "x", *tls]).remote == ["[::]:5000"]
    assert parse_args(["--listen", "127.0.0.1:0", "--db", "x"]).remote == []


async def test_authentication_is_forced_on_when_required(sockdir: Path, tmp_path: Path) -> None:
    """What the host does off loopback, on a unix socket: the config says nothing
    of [auth] required, yet a call without credentials is refused."""
    app = HostApp(
        Config(),
        tmp_path / "h.db",
        [f"unix://{sockdir}/h.sock"],
        owner="t",
        grace_seconds=0,
        require_auth=True,
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"unix://{sockdir}/h.sock") as channel:
            host = host_pb2_grpc.VMSnapshotServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await host.ListVMs(pb.ListVMsRequest(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await app.stop(0)
