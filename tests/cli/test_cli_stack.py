"""The CLI against a running ``vmsnap up``: snapshot references, exit codes by kind,
global options anywhere, whole ids in pipes, volumes, /metrics of every process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from tests.cli.stack_support import Up, vmsnap
from vmsnap_host.client import QuiescePolicy, SyncHostClient
from vmsnap_sdk import VM, Volume

# Each test runs a few CLI processes (about a second each, many on a machine
# shared with parallel workers).
pytestmark = pytest.mark.timeout(300)


def _vm(up: Up, name: str = "", disks: int = 1) -> str:
    """A new VM with file disks (the sim hypervisor takes them), defined through the client."""
    vm_id = f"cli-{uuid.uuid4().hex[:8]}"
    volumes = tuple(
        Volume(f"vd{'abcd'[i]}", f"file:///var/lib/{vm_id}-{i}.qcow2", 1 << 20, "qcow2")
        for i in range(disks)
    )
    with SyncHostClient.connect(up.stack["host"]) as host:
        host.define_vm(VM(id=vm_id, name=name or vm_id, memory_mib=64, volumes=volumes))
    return vm_id


def _take(up: Up, vm_id: str, *names: str) -> list[str]:
    ids = []
    with SyncHostClient.connect(up.stack["host"]) as host:
        for name in names:
            op = host.create_vm_snapshot(vm_id, name, quiesce=QuiescePolicy.OFF)
            op = host.wait(op.id, timeout=60)
            assert op.succeeded, op
            ids.append(op.vm_snapshot_id)
    return ids


def test_snapshots_by_id_prefix_or_vm_slash_name(shared_up: Up) -> None:
    home = shared_up.home
    vm_id = _vm(shared_up)
    # 17 ids: two of them share a first hex digit (pigeonhole), an ambiguous prefix.
    ids = _take(shared_up, vm_id, *(f"s{i}" for i in range(17)))
    by_name = json.loads(vmsnap(home, "snapshot", "show", f"{vm_id}/s3", "--json").stdout)
    assert by_name["id"] == ids[3]
    by_prefix = json.loads(vmsnap(home, "snapshot", "show", ids[5][:12], "--json").stdout)
    assert by_prefix["id"] == ids[5]

    first = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in ids) > 1)
    ambiguous = vmsnap(home, "snapshot", "show", first, check=False)
    assert ambiguous.returncode == 2, ambiguous.stderr
    for candidate in (i for i in ids if i.startswith(first)):
        assert candidate in ambiguous.stderr  # the candidates are listed
    assert "VM/NAME" in ambiguous.stderr

    missing = vmsnap(home, "snapshot", "show", f"{vm_id}/nope", check=False)
    assert missing.returncode == 3
    assert f"vmsnap snapshot list {vm_id}" in missing.stderr

    # The VM positional (and --vm), whole ids in a pipe even at 40 columns.
    listed = json.loads(vmsnap(home, "snapshot", "list", vm_id, "--json").stdout)
    assert [s["id"] for s in listed] == ids
    env_narrow = {**os.environ, "COLUMNS": "40", "VMSNAP_HOME": str(home)}
    table = subprocess.run(
        [sys.executable, "-m", "vmsnap_host.cli", "snapshot", "list", "--vm", vm_id],
        capture_output=True,
        text=True,
        env=env_narrow,
        timeout=120,
        check=True,
    ).stdout
    assert all(i in table for i in ids), table

    deleted = vmsnap(home, "snapshot", "delete", f"{vm_id}/s0", "--json")
    assert json.loads(deleted.stdout)["vm_snapshot_id"] == ids[0]


def test_exit_codes_by_kind(shared_up: Up, sockdir: Path) -> None:
    home = shared_up.home
    assert vmsnap(home, "vm", "list").returncode == 0
    usage = vmsnap(home, "snapshot", "list", "--no-such-flag", check=False)
    assert usage.returncode == 2
    not_found = vmsnap(home, "vm", "show", "no-such-vm", check=False)
    assert not_found.returncode == 3, not_found.stderr
    assert "`vmsnap vm list`" in not_found.stderr and "ListVMs" not in not_found.stderr

    vm_id = _vm(shared_up)
    _take(shared_up, vm_id, "once")
    refused = vmsnap(home, "snapshot", "create", vm_id, "once", check=False)
    assert refused.returncode == 4, refused.stderr
    vmsnap(home, "vm", "start", vm_id)
    running = vmsnap(home, "snapshot", "revert", f"{vm_id}/once", check=False)
    assert running.returncode == 4, running.stderr
    assert "--stop-vm" in running.stderr and "stop_vm" not in running.stderr
    assert "StopVM" not in running.stderr

    no_host = vmsnap(home, "--host", f"unix://{sockdir}/none.sock", "vm", "list", check=False)
    assert no_host.returncode == 5
    assert "no vmsnap host answers" in no_host.stderr

    # A guest agent that never answers: a required freeze fails the take itself.
    frozen = _vm(shared_up, name="no-freeze sim.guest_agent=false")
    vmsnap(home, "vm", "start", frozen)
    failed = vmsnap(home, "snapshot", "create", frozen, "s", "--quiesce", "required", check=False)
    assert failed.returncode == 1, failed.stderr
    assert "operation" in failed.stderr


def test_registering_an_unreachable_driver_is_the_hosts_answer(
    shared_up: Up, sockdir: Path
) -> None:
    result = vmsnap(
        shared_up.home, "drivers", "register", f"unix://{sockdir}/no-driver.sock", check=False
    )
    assert result.returncode == 5, result.stderr
    assert "no vmsnap host answers" not in result.stderr
    assert f"{sockdir}/no-driver.sock" in result.stderr


def test_global_options_anywhere(shared_up: Up, sockdir: Path) -> None:
    # An empty VMSNAP_HOME: only --host, given after the subcommand, finds the stack.
    result = vmsnap(sockdir, "drivers", "list", "--host", shared_up.stack["host"], "--json")
    assert {d["name"] for d in json.loads(result.stdout)} >= {"com.netapp.ontap"}
    wide = vmsnap(sockdir, "operations", "list", "-o", "wide", "--host", shared_up.stack["host"])
    assert wide.returncode == 0
    as_json = vmsnap(sockdir, "vm", "list", "-o", "json", "--host", shared_up.stack["host"])
    assert isinstance(json.loads(as_json.stdout), list)


class _Silent(grpc.GenericRpcHandler):
    """A host that takes every call and never answers."""

    def __init__(self) -> None:
        self.called = threading.Event()
        self.release = threading.Event()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        def hang(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.called.set()
            self.release.wait(60)
            return b""

        return grpc.unary_unary_rpc_method_handler(hang)


def test_ctrl_c_exits_130(sockdir: Path) -> None:
    silent = _Silent()
    server = grpc.server(ThreadPoolExecutor(4), handlers=[silent])
    server.add_insecure_port(f"unix://{sockdir}/silent.sock")
    server.start()
    env = {**os.environ, "VMSNAP_HOME": str(sockdir)}
    cli = subprocess.Popen(
        [sys.executable, "-m", "vmsnap_host.cli", "vm", "list", "--host",
         f"unix://{sockdir}/silent.sock"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert silent.called.wait(100), "the CLI never called"
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=60)
        assert cli.returncode == 130, err
        assert "Traceback" not in err and "interrupted" in err
    finally:
        cli.kill()
        silent.release.set()
        server.stop(None)


def test_volumes_through_the_test_fixture(shared_up: Up) -> None:
    home = shared_up.home
    name = f"v-{uuid.uuid4().hex[:6]}"
    locator = vmsnap(home, "volume", "create", name, "--driver", "ontap", "--size", "1MiB")
    made = locator.stdout.strip()
    assert made.startswith("ontap://svm0/")
    listed = json.loads(vmsnap(home, "volume", "list", "--json").stdout)
    assert {"locator": made, "name": name, "driver": "com.netapp.ontap"}.items() <= next(
        v for v in listed if v["locator"] == made
    ).items()
    several = vmsnap(home, "volume", "create", "x", check=False)  # two drivers serve it
    assert several.returncode == 2 and "--driver" in several.stderr
    vmsnap(home, "volume", "delete", made)
    assert made not in vmsnap(home, "volume", "list").stdout


def test_up_serves_metrics_on_every_grpc_process(shared_up: Up) -> None:
    output = shared_up.proc.output()
    components = shared_up.components()
    for name in ("driver-element", "driver-ontap", "agent", "host"):
        url = components[name]["metrics"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics"), url
        assert url in output  # in the table `vmsnap up` prints
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert b"vmsnap_rpc_server_handled_total" in reply.read()
    assert not components["emulator-element"]["metrics"]
