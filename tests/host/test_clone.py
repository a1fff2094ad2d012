"""CreateVMFromSnapshot on a real host, sim agent and fake drivers (unix sockets):
what the host refuses up front, a failed clone leaves nothing behind, a host
killed mid-clone is rolled back at its next start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.host.e2e import Cluster, cluster, eventually
from vmsnap_agent.sim._disks import disk_path
from vmsnap_host.client import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    OperationType,
    SyncHostClient,
)
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb

CLONING = "--capabilities=CONSISTENT_GROUP,REVERT,LIST,CLONE_VOLUMES"


def _define(c: Cluster, vm_id: str, *, hypervisor_disk: bool = False) -> None:
    volumes = [
        common_pb2.Volume(disk="vda", locator="a://pool/1"),
        common_pb2.Volume(disk="vdb", locator="b://pool/2"),
    ]
    if hypervisor_disk:
        volumes.append(common_pb2.Volume(disk="vdc", locator="file:///var/lib/vms/3.img"))
    vm = common_pb2.VM(id=vm_id, name=vm_id, memory_mib=64, volumes=volumes)
    c.host.DefineVM(pb.DefineVMRequest(vm=vm), timeout=10)


def _snapshot(c: Cluster, host: SyncHostClient, vm_id: str) -> str:
    _define(c, vm_id)
    done = host.wait(host.create_vm_snapshot(vm_id, "s1").id, timeout=30)
    assert done.succeeded, done
    return done.vm_snapshot_id


def _client(c: Cluster) -> SyncHostClient:
    return SyncHostClient.connect(f"unix://{c.sock}/host.sock", timeout=20)


@pytest.fixture
def second_fails(sockdir: Path, tmp_path: Path) -> Iterator[Cluster]:
    yield from cluster(
        sockdir,
        tmp_path,
        {"a": [CLONING], "b": [CLONING, "--behaviour", "fail-final", "--fail-on", "clone"]},
    )


def test_a_failed_second_clone_deletes_the_first_and_defines_no_vm(second_fails: Cluster) -> None:
    c = second_fails
    with _client(c) as host:
        snapshot_id = _snapshot(c, host, "src")
        # Refused up front, naming what to fix (one cluster serves both parts).
        with pytest.raises(AlreadyExists) as taken:
            host.create_vm_from_snapshot(snapshot_id, "src")
        assert taken.value.reason == "VM_ID_IN_USE"
        with pytest.raises(NotFound):
            host.create_vm_from_snapshot("no-such-snapshot", "copy")
        _define(c, "mixed", hypervisor_disk=True)
        native = host.wait(host.create_vm_snapshot("mixed", "s1").id, timeout=30)
        # A hypervisor-native disk is copied by its own agent: the new VM goes there.
        with pytest.raises(FailedPrecondition) as unsupported:
            host.create_vm_from_snapshot(native.vm_snapshot_id, "copy", agent="elsewhere")
        assert unsupported.value.reason == "CLONE_UNSUPPORTED"
        assert "vdc" in unsupported.value.message
        assert c.driver_state("a")["clones"] == {}
        op = host.create_vm_from_snapshot(snapshot_id, "copy")
        assert op.type is OperationType.CLONE and op.new_vm_id == "copy"
        done = host.wait(op.id, timeout=30)
        assert done.done and done.error is not None, done
        assert done.error.code.name == "RESOURCE_EXHAUSTED", done.error
        assert "no space" in done.error.message
        # Driver a cloned its volume, then was told to delete it: nothing is left.
        a = c.driver_state("a")
        assert [m for m, _ in a["calls"] if "clone" in m] == ["clone", "delete_clones"]
        assert a["clones"] == {}
        assert c.driver_state("b")["clones"] == {}
        with pytest.raises(NotFound):
            host.get_vm("copy")
        # The source VM and its snapshot are untouched.
        assert host.get_vm("src").volumes[0].locator == "a://pool/1"
        assert host.get_vm_snapshot(snapshot_id).state.name == "READY"


@pytest.fixture
def second_hangs(sockdir: Path, tmp_path: Path) -> Iterator[Cluster]:
    yield from cluster(
        sockdir,
        tmp_path,
        {"a": [CLONING], "b": [CLONING, "--behaviour", "hang", "--fail-on", "clone"]},
    )


def test_a_host_killed_mid_clone_rolls_it_back_on_start(second_hangs: Cluster) -> None:
    c = second_hangs
    with _client(c) as host:
        snapshot_id = _snapshot(c, host, "src")
        op = host.create_vm_from_snapshot(snapshot_id, "copy")
    # Both drivers made their clone (b never answers); the host dies there.
    eventually(lambda: c.driver_state("b")["clones"], what="b's clone made")
    assert c.driver_state("a")["clones"]
    c.procs["host"].kill()
    c.start_host()
    with _client(c) as host:
        done = host.wait(op.id, timeout=30)
        assert done.error is not None and done.error.reason == "HOST_RESTARTED", done
        for letter in ("a", "b"):
            assert c.driver_state(letter)["clones"] == {}, letter
        with pytest.raises(NotFound):
            host.get_vm("copy")


@pytest.fixture
def both_clone(sockdir: Path, tmp_path: Path) -> Iterator[Cluster]:
    yield from cluster(sockdir, tmp_path, {"a": [CLONING], "b": [CLONING]})


def test_a_hypervisor_native_disk_is_copied_by_the_agent(both_clone: Cluster) -> None:
    c = both_clone
    state = c.work / "agent"
    with _client(c) as host:
        _define(c, "mixed", hypervisor_disk=True)
        source = disk_path(state, "file:///var/lib/vms/3.img")
        assert source is not None
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(b"A" * 4096)
        taken = host.wait(host.create_vm_snapshot("mixed", "s1").id, timeout=30)
        assert taken.succeeded, taken
        source.write_bytes(b"B" * 4096)
        op = host.create_vm_from_snapshot(taken.vm_snapshot_id, "copy", request_id="clone-1")
        done = host.wait(op.id, timeout=30)
        assert done.succeeded, done
        # A retry is the same operation; the request id for another clone is refused.
        again = host.create_vm_from_snapshot(taken.vm_snapshot_id, "copy", request_id="clone-1")
        assert again.id == op.id and again.done
        with pytest.raises(AlreadyExists) as reused:
            host.create_vm_from_snapshot(taken.vm_snapshot_id, "copy-2", request_id="clone-1")
        assert reused.value.reason == "REQUEST_ID_REUSED"
        copy = {v.disk: v.locator for v in host.get_vm("copy").volumes}
        assert copy["vda"].startswith("a://clones/") and copy["vdb"].startswith("b://clones/")
        copied = disk_path(state, copy["vdc"])
        assert copied is not None and copied != source
        assert copied.read_bytes() == b"A" * 4096
        assert source.read_bytes() == b"B" * 4096
