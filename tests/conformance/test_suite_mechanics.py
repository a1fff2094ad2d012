"""The suite's own machinery: cleanup never cascades, results and exports are stable."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc

from tests.conformance.reference_driver import ReferenceDriver
from tests.support.certs import CA
from tests.support.procs import ROOT
from vmsnap_sdk import ServerTLS, conformance, start_driver_server
from vmsnap_sdk.conformance import (
    Check,
    CheckSkipped,
    Resources,
    Session,
    expect,
    run_suite,
)
from vmsnap_sdk.conformance._rpc import RpcFailure


def test_public_names_are_sorted() -> None:
    assert conformance.__all__ == sorted(conformance.__all__)


async def test_cleanup_runs_every_action_newest_first_and_reports_failures() -> None:
    done: list[str] = []
    resources = Resources()

    async def ok(name: str) -> None:
        done.append(name)

    async def broken() -> None:
        raise RpcFailure("DeleteVMSnapshot", grpc.StatusCode.UNAVAILABLE, "array down")

    resources.add("volume", lambda: ok("volume"))
    resources.add("snapshot a", broken)
    resources.add("snapshot b", lambda: ok("b"))
    resources.add("snapshot b", lambda: ok("b-again"))  # one key, undone once
    problems = await resources.cleanup(timeout=1)
    assert done == ["b", "volume"]
    assert problems == ["snapshot a: UNAVAILABLE ('array down')"]


async def test_a_failed_cleanup_stays_with_its_check(reference_driver: str) -> None:
    async def leaves_a_mess(s: Session) -> None:
        async def undo() -> None:
            raise RpcFailure("DeleteVMSnapshot", grpc.StatusCode.INTERNAL, "cannot delete")

        s.resources.add("snapshot that will not go", undo)

    async def clean(s: Session) -> None:
        await s.take(s.new_id(), await s.volumes(1))

    async def skips(s: Session) -> None:
        raise CheckSkipped("not today")

    async def fails(s: Session) -> None:
        expect(False, "this", "that")

    checks = [
        Check("take.mess", "leaves a mess", leaves_a_mess),
        Check("take.clean", "cleans up", clean),
        Check("take.skips", "skips", skips),
        Check("take.fails", "fails", fails),
    ]
    report = await run_suite(reference_driver, checks=checks)
    results = {r.id: r for r in report.checks}
    assert results["take.mess"].status == "passed"
    assert "cleanup failed: snapshot that will not go: INTERNAL" in results["take.mess"].detail
    assert (results["take.clean"].status, results["take.clean"].detail) == ("passed", "")
    assert (results["take.skips"].status, results["take.skips"].detail) == ("skipped", "not today")
    assert results["take.fails"].detail == "expected this; got that"
    assert report.summary == {"passed": 2, "failed": 1, "skipped": 1}
    # The clean check's snapshot was removed by the registry, not by the check.
    leftovers = await run_suite(
        reference_driver, checks=[Check("list.left", "nothing left", nothing_left)]
    )
    assert leftovers.checks[0].status == "passed", leftovers.checks[0].detail


async def nothing_left(s: Session) -> None:
    listed = await s.list_all()
    expect(listed == [], "no snapshots left", [r.vm_snapshot_id for r in listed])


async def test_cli_speaks_mutual_tls(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    server_pair, client_pair = ca.issue("driver", server=True), ca.issue("host", server=False)
    tls = ServerTLS(str(server_pair.cert), str(server_pair.key), str(ca.pair.cert))
    server = await start_driver_server(ReferenceDriver(), "127.0.0.1:0", tls=tls, grace_seconds=0)
    try:
        args = [sys.executable, "-m", "vmsnap_sdk.conformance.cli", server.addresses[0]]
        args += ["--tls-ca", str(ca.pair.cert), "--tls-cert", str(client_pair.cert)]
        args += ["--tls-key", str(client_pair.key), "--only", "identity,health", "--quiet"]
        proc = await asyncio.create_subprocess_exec(
            *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await server.stop(0)
    assert proc.returncode == 0, output.decode()
    assert "11 passed, 0 failed, 0 skipped" in output.decode()
