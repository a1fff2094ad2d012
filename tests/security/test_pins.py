"""A driver is who its registration pins: its certificate's fingerprint and name."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.security.harness import Stack, code_and_reason, stack
from tests.support.certs import CA
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_stack import certs

#: One stack for the module: its tests run on one xdist worker, after each other.
pytestmark = pytest.mark.xdist_group("security-pins")


@pytest.fixture(scope="module")
def tls_driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, CA, Path]]:
    sockdir = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    tmp_path = tmp_path_factory.mktemp("pins")
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = CA(pki)
    server = ca.issue("driver-t", server=True)
    for s in stack(sockdir, tmp_path, peers=False):
        s.start_peer(
            "t",
            [
                "-m",
                "tests.fakes.driver",
                "--name",
                "io.vmsnap.test.t",
                "--scheme",
                "t",
                "--state",
                str(tmp_path / "t.json"),
                "--tls-cert",
                str(server.cert),
                "--tls-key",
                str(server.key),
            ],
        )
        s.start_host(f'[peers]\ntls_dirs = ["{pki}"]\n')
        yield s, ca, server.cert
    shutil.rmtree(sockdir, ignore_errors=True)


def _register(s: Stack, ca: CA, **tls: str) -> pb.Driver:
    request = pb.RegisterDriverRequest(
        address=f"unix://{s.sock}/t.sock",
        tls=pb.TlsConfig(**{"ca_file": str(ca.pair.cert), "server_name": "localhost", **tls}),
    )
    return s.as_(None).RegisterDriver(request, timeout=30).driver


def test_a_driver_whose_certificate_does_not_match_its_pin_is_refused(
    tls_driver: tuple[Stack, CA, Path],
) -> None:
    s, ca, cert = tls_driver
    with pytest.raises(grpc.RpcError) as caught:
        _register(s, ca, pin_sha256="ab" * 32)
    assert code_and_reason(caught.value) == (grpc.StatusCode.UNAVAILABLE, "DRIVER_NOT_SERVING")
    assert "does not match the pin" in caught.value.details()  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as caught:  # the name is pinned too
        _register(s, ca, server_name="driver-other")
    assert code_and_reason(caught.value)[0] == grpc.StatusCode.UNAVAILABLE

    pin = certs.fingerprint(cert)
    driver = _register(s, ca, pin_sha256=":".join(pin[i : i + 2] for i in range(0, 64, 2)).upper())
    assert driver.name == "io.vmsnap.test.t" and driver.health == pb.HEALTH_SERVING
    listed = s.as_(None).ListDrivers(pb.ListDriversRequest()).drivers
    assert "io.vmsnap.test.t" in {d.name for d in listed}


def test_a_bad_pin_is_invalid_argument(tls_driver: tuple[Stack, CA, Path]) -> None:
    s, ca, _ = tls_driver
    with pytest.raises(grpc.RpcError) as caught:
        _register(s, ca, pin_sha256="not-a-hash")
    assert code_and_reason(caught.value)[0] == grpc.StatusCode.INVALID_ARGUMENT
