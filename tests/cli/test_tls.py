"""The client and the CLI reach a host that serves mutual TLS."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.certs import CA
from tests.support.procs import Proc
from vmsnap_host.client import ClientTLS, HostClient
from vmsnap_sdk.errors import Unavailable


@pytest.fixture
def tls_host(sockdir: Path, tmp_path: Path) -> Iterator[tuple[str, CA, Path]]:
    ca = CA(tmp_path)
    server = ca.issue("host", server=True)
    config = tmp_path / "host.toml"
    config.write_text("[host]\n")
    address = f"unix://{sockdir}/host.sock"
    proc = Proc(
        [
            sys.executable,
            "-m",
            "vmsnap_host",
            "--listen",
            address,
            "--db",
            str(tmp_path / "host.sqlite"),
            "--config",
            str(config),
            "--tls-cert",
            str(server.cert),
            "--tls-key",
            str(server.key),
            "--tls-client-ca",
            str(ca.pair.cert),
        ],
        tmp_path / "host.log",
    )
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{sockdir}/host.sock").exists():
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.05)
        yield address, ca, tmp_path
    finally:
        proc.stop()


async def test_client_with_mutual_tls(tls_host: tuple[str, CA, Path]) -> None:
    address, ca, _ = tls_host
    client_pair = ca.issue("operator", server=False)
    tls = ClientTLS(
        ca_file=str(ca.pair.cert),
        cert_file=str(client_pair.cert),
        key_file=str(client_pair.key),
        server_name="localhost",
    )
    async with HostClient.connect(address, tls, timeout=10) as host:
        deadline = time.monotonic() + 30
        while not await host.serving(timeout=2.0):
            assert time.monotonic() < deadline, "the TLS host never answered"
            await asyncio.sleep(0.1)
        assert await host.list_drivers() == []
    async with HostClient.connect(address, timeout=2) as plain:
        with pytest.raises(Unavailable):
            await plain.list_drivers()


def test_cli_with_mutual_tls(tls_host: tuple[str, CA, Path]) -> None:
    address, ca, _ = tls_host
    client_pair = ca.issue("cli", server=False)
    args = [
        sys.executable,
        "-m",
        "vmsnap_host.cli",
        "--host",
        address,
        "--tls-ca",
        str(ca.pair.cert),
        "--tls-cert",
        str(client_pair.cert),
        "--tls-key",
        str(client_pair.key),
        "--tls-server-name",
        "localhost",
        "agents",
        "list",
        "--json",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMSNAP_")}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
