"""Pure pieces of the QEMU backend (no VM needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmsnap_agent.qemu import Consistency, DiskFormat, DiskSpec, InvalidSpec, VmSpec
from vmsnap_agent.qemu.model import QuiesceMethod, QuiesceRecord, parse_nbd_url
from vmsnap_agent.qemu.native import holds_bytes
from vmsnap_agent.qemu.process import VmPaths, blockdev_options
from vmsnap_agent.qemu.quiesce import plan_overlays
from vmsnap_agent.qemu.statefile import read_json, write_json_atomic


def test_nbd_urls() -> None:
    tcp = parse_nbd_url("nbd://127.0.0.1:10810/vol42")
    assert (tcp.host, tcp.port, tcp.export) == ("127.0.0.1", 10810, "vol42")
    unix = parse_nbd_url("nbd+unix:///vol42?socket=/run/nbd.sock")
    assert (unix.socket, unix.export) == ("/run/nbd.sock", "vol42")
    with pytest.raises(InvalidSpec):
        parse_nbd_url("nbd+unix:///vol42")


def test_only_the_agents_own_qcow2_images_are_kept_by_a_native_snapshot() -> None:
    qcow2 = DiskFormat.QCOW2
    kept = [
        DiskSpec("a", "/d/a.qcow2", qcow2, locator="file:///d/a.qcow2"),
        DiskSpec("b", "/d/b.qcow2", qcow2),  # a bare path given to the library
    ]
    not_kept = [
        DiskSpec("c", "/d/c.img", DiskFormat.RAW, locator="file:///d/c.img"),  # no snapshots
        DiskSpec("d", "nbd://127.0.0.1:10809/v", qcow2, locator="element://c1/42"),
        # An array's file, mapped to its export: the array owns it, even as qcow2.
        DiskSpec("e", "/srv/ontap/svm0/vol1/e.qcow2", qcow2, locator="ontap://svm0/vol1/e.qcow2"),
        DiskSpec("f", "/d/f.qcow2", qcow2, locator="file:///d/f.qcow2", read_only=True),
    ]
    assert [holds_bytes(d) for d in kept] == [True, True]
    assert [holds_bytes(d) for d in not_kept] == [False] * 4


def test_blockdev_for_file_and_nbd() -> None:
    f = blockdev_options(DiskSpec("a", "/x/a.img"))
    assert f == {
        "driver": "raw",
        "node-name": "d-a",
        "read-only": False,
        "file": {"driver": "file", "filename": "/x/a.img", "node-name": "d-a-p"},
    }
    n = blockdev_options(DiskSpec("b", "nbd://10.0.0.1:10809/v", format=DiskFormat.QCOW2))
    assert n["driver"] == "qcow2"
    assert n["file"]["driver"] == "nbd"
    assert n["file"]["reconnect-delay"] == 30  # a restarting target pauses I/O, not fails it
    assert n["file"]["server"] == {"type": "inet", "host": "10.0.0.1", "port": "10809"}
    assert n["file"]["export"] == "v"


def test_disk_spec_validation() -> None:
    with pytest.raises(InvalidSpec):
        DiskSpec("a b", "/x").validate()
    with pytest.raises(InvalidSpec):
        DiskSpec("a", "relative.img").validate()
    DiskSpec("a", "nbd+unix:///e?socket=/s").validate()


def test_state_round_trips(tmp_path: Path) -> None:
    spec = VmSpec("vm", 128, (DiskSpec("a", "/a", locator="element://c/1", read_only=True),))
    write_json_atomic(tmp_path / "vm.json", spec.to_json())
    assert VmSpec.from_json(json.loads((tmp_path / "vm.json").read_text())) == spec
    assert read_json(tmp_path / "missing.json") is None
    assert not list(tmp_path.glob(".*.tmp"))

    spec2 = VmSpec("vm", 128, (DiskSpec("a", "/a"), DiskSpec("ro", "/ro", read_only=True)))
    overlays = plan_overlays(spec2, "q-1", VmPaths.for_vm(tmp_path, "vm"))
    assert [o.disk for o in overlays] == ["a"]  # read-only disks need no overlay
    rec = QuiesceRecord(
        token="q-1",
        vm_id="vm",
        method=QuiesceMethod.OVERLAY_GUEST,
        consistency=Consistency.CRASH,
        expires_at=1.0,
        stable_paths=["/a"],
        overlays=overlays,
    )
    assert QuiesceRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec


def test_long_names_fit_qemu_ids(tmp_path: Path) -> None:
    from vmsnap_agent.qemu.process import device_id, format_node, node_key, overlay_node

    long_a, long_b = "a" * 62 + "1", "a" * 62 + "2"
    for make in (format_node, overlay_node, device_id):
        assert len(make(long_a) + "-p") <= 31
        assert make(long_a) != make(long_b)
    assert node_key("short") == "short"
    paths = VmPaths.for_vm(tmp_path, "v" * 128)
    assert len(str(paths.qmp)) < len(str(tmp_path)) + 40


def test_locator_map() -> None:
    from vmsnap_agent.qemu.locators import LocatorMap

    # The ONTAP emulator keeps volume files in DATA/export/<svm>/<volume>/.
    m = LocatorMap.parse(["ontap://=/data/export/", "element://c1/=nbd://127.0.0.1:10809/"])
    assert m.resolve("ontap://svm1/vol1/vm-1.img") == "/data/export/svm1/vol1/vm-1.img"
    assert m.resolve("element://c1/42") == "nbd://127.0.0.1:10809/42"
    assert m.resolve("file:///srv/a%20b.img") == "/srv/a b.img"
    with pytest.raises(InvalidSpec):
        m.resolve("element://c2/42")
    with pytest.raises(InvalidSpec):
        LocatorMap.parse(["no-equals-sign"])
