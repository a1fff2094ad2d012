"""Transport guarantees of serve(): TLS and mutual TLS, graceful shutdown, deadlines."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from tests.sdk.drivers import ScriptedDriver
from tests.support.certs import CA
from tests.support.procs import ROOT, Proc, wait_serving
from vmsnap_sdk import VM, ClientTLS, DriverClient, ServerTLS, TakeRequest, Volume
from vmsnap_sdk import errors as e
from vmsnap_sdk.serve import start_driver_server

VM1 = VM(id="vm-1", volumes=(Volume("vda", "x://1"),))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _info_over(address: str, tls: ClientTLS | None) -> str:
    client = DriverClient.connect(address, tls=tls, timeout=3)
    try:
        return (await client.get_info()).name
    finally:
        await client.close()


async def test_tls_server_is_reached_only_by_clients_trusting_its_ca(tmp_path: Path) -> None:
    ca, other = CA(tmp_path, "ca"), CA(tmp_path, "other-ca")
    server_pair = ca.issue("server", server=True)
    server = await start_driver_server(
        ScriptedDriver(), "127.0.0.1:0", tls=ServerTLS(str(server_pair.cert), str(server_pair.key))
    )
    address = server.addresses[0]
    try:
        trusted = ClientTLS(ca_file=str(ca.pair.cert), server_name="localhost")
        assert await _info_over(address, trusted) == "io.vmsnap.test.scripted"
        with pytest.raises(e.Unavailable):
            await _info_over(address, ClientTLS(ca_file=str(other.pair.cert)))
        with pytest.raises(e.Unavailable):
            await _info_over(address, None)  # plaintext to a TLS port
    finally:
        await server.stop(0)


async def test_mutual_tls_refuses_clients_without_a_certificate_from_the_ca(
    tmp_path: Path,
) -> None:
    ca, rogue = CA(tmp_path, "ca"), CA(tmp_path, "rogue")
    server_pair = ca.issue("server", server=True)
    good_client = ca.issue("host", server=False)
    rogue_client = rogue.issue("intruder", server=False)
    tls = ServerTLS(str(server_pair.cert), str(server_pair.key), client_ca_file=str(ca.pair.cert))
    server = await start_driver_server(ScriptedDriver(), "127.0.0.1:0", tls=tls)
    address = server.addresses[0]
    base = {"ca_file": str(ca.pair.cert), "server_name": "localhost"}
    try:
        ok = ClientTLS(**base, cert_file=str(good_client.cert), key_file=str(good_client.key))
        assert await _info_over(address, ok) == "io.vmsnap.test.scripted"
        with pytest.raises(e.Unavailable):
            await _info_over(address, ClientTLS(**base))
        bad = ClientTLS(**base, cert_file=str(rogue_client.cert), key_file=str(rogue_client.key))
        with pytest.raises(e.Unavailable):
            await _info_over(address, bad)
    finally:
        await server.stop(0)


async def test_graceful_shutdown_finishes_calls_in_flight_and_refuses_new_ones(
    sockdir: Path,
) -> None:
    driver = ScriptedDriver()
    driver.release.clear()
    address = f"unix://{sockdir}/g.sock"
    server = await start_driver_server(driver, address, grace_seconds=10)
    client = DriverClient.connect(address, timeout=10)
    try:
        in_flight = asyncio.create_task(client.take_snapshot(TakeRequest("s1", VM1, VM1.volumes)))
        await asyncio.wait_for(driver.entered.wait(), 5)
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.2)
        late = DriverClient.connect(address, timeout=3)
        with pytest.raises(e.Unavailable):
            await late.get_info()
        await late.close()
        assert not in_flight.done()
        driver.release.set()
        result = await asyncio.wait_for(in_flight, 5)
        assert result.vm_snapshot_id == "s1"
        await asyncio.wait_for(stopping, 10)
    finally:
        await client.close()


def test_sigterm_stops_the_process_gracefully(sockdir: Path, tmp_path: Path) -> None:
    address = f"unix://{sockdir}/p.sock"
    proc = Proc(
        [sys.executable, str(ROOT / "sdk/examples/minimal_driver.py"), "--listen", address],
        tmp_path / "p.log",
    )
    try:
        wait_serving(address)
        proc.signal(signal.SIGTERM)
        assert proc.popen.wait(10) == 0
        assert '"shutting down"' in proc.output()
    finally:
        proc.stop()


async def test_the_callers_deadline_is_visible_to_the_driver(sockdir: Path) -> None:
    driver = ScriptedDriver()
    address = f"unix://{sockdir}/d.sock"
    server = await start_driver_server(driver, address)
    client = DriverClient.connect(address, timeout=None)  # no default deadline
    try:
        await client.take_snapshot(TakeRequest("s1", VM1, VM1.volumes), timeout=7.0)
        await client.take_snapshot(TakeRequest("s2", VM1, VM1.volumes), timeout=None)
    finally:
        await client.close()
        await server.stop(0)
    with_deadline, without = driver.seen_remaining
    # gRPC rounds the deadline it sends to the wire (and the two ends read their
    # clocks at different moments), so allow a few milliseconds over the 7 s asked.
    assert with_deadline is not None and 5.0 < with_deadline <= 7.05
    assert without is None


async def test_a_call_past_its_deadline_is_deadline_exceeded(sockdir: Path) -> None:
    driver = ScriptedDriver()
    driver.release.clear()
    address = f"unix://{sockdir}/d.sock"
    server = await start_driver_server(driver, address)
    client = DriverClient.connect(address)
    try:
        with pytest.raises(e.DeadlineExceeded) as caught:
            await client.take_snapshot(TakeRequest("s1", VM1, VM1.volumes), timeout=0.3)
        assert caught.value.final is False
    finally:
        driver.release.set()
        await client.close()
        await server.stop(0)


def test_a_call_stuck_in_a_worker_thread_does_not_hold_the_exit(
    sockdir: Path, tmp_path: Path
) -> None:
    """After the grace period the process ends, even with a vendor call still blocked."""
    import subprocess
    import time

    address = f"unix://{sockdir}/stuck.sock"
    entered = tmp_path / "entered"
    proc = Proc(
        [sys.executable, "-m", "tests.sdk.stuck_driver", "--listen", address, "--grace", "1"],
        tmp_path / "stuck.log",
        env={"STUCK_DRIVER_MARKER": str(entered)},
    )
    probe = (
        "import asyncio\n"
        "from vmsnap_sdk import DriverClient, TakeRequest, VM, Volume\n"
        "async def main():\n"
        "    vm = VM(id='vm-1', volumes=(Volume('vda', 'x://1'),))\n"
        f"    c = DriverClient.connect({address!r}, timeout=None)\n"
        "    await c.take_snapshot(TakeRequest('s1', vm, vm.volumes))\n"
        "asyncio.run(main())\n"
    )
    caller: subprocess.Popen[bytes] | None = None
    try:
        wait_serving(address)
        caller = subprocess.Popen([sys.executable, "-c", probe], stderr=subprocess.DEVNULL)
        for _ in range(300):
            if entered.exists():
                break
            time.sleep(0.05)
        assert entered.exists(), "the take never reached the driver"
        proc.signal(signal.SIGTERM)
        # The worker thread sleeps 300 s; the process must end after its 1 s grace.
        assert proc.popen.wait(30) == 0
    finally:
        if caller is not None:
            caller.kill()
            caller.wait()
        proc.stop()
