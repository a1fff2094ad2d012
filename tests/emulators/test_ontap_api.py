"""ONTAP emulator through the vendor's own SDK (netapp-ontap)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from netapp_ontap.error import NetAppRestError
from netapp_ontap.host_connection import HostConnection
from netapp_ontap.resources import Cluster, FileClone, FileInfo, Snapshot, Svm, Volume

from vmsnap_emulators.testing import EmulatorProcess

# verify=False, as drivers do against arrays with self-signed certificates.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

MiB = 1 << 20


def _name(prefix: str = "vol") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _error(exc: NetAppRestError) -> tuple[int | None, dict[str, Any]]:
    body = exc.response_body or {}
    return exc.status_code, body.get("error", {})


@pytest.fixture
def volume(ontap_connection: HostConnection) -> Volume:
    vol = Volume(name=_name(), svm={"name": "svm0"}, size=64 * MiB)
    vol.post()
    return vol


def _path(emu: EmulatorProcess, vol: Volume, rel: str = "") -> Path:
    return emu.export_dir() / vol.name / rel


def test_cluster_and_svm(ontap_connection: HostConnection) -> None:
    cluster = Cluster()
    cluster.get()
    assert cluster.name == "vmsnap-ontap" and cluster.version.generation == 9
    svms = list(Svm.get_collection(fields="name,state"))
    assert [(s.name, s.state) for s in svms] == [("svm0", "running")]


def test_bad_credentials(ontap_emulator: EmulatorProcess) -> None:
    conn = HostConnection(
        ontap_emulator.host,
        port=ontap_emulator.port,
        username="admin",
        password="wrong",
        verify=False,
    )
    with pytest.raises(NetAppRestError) as err, conn:
        Cluster().get()
    status, body = _error(err.value)
    assert status == 401 and body["code"] == "6"


def test_volume_lifecycle(
    ontap_emulator: EmulatorProcess, ontap_connection: HostConnection
) -> None:
    name = _name()
    vol = Volume(name=name, svm={"name": "svm0"}, size=64 * MiB, comment="vm disks")
    vol.post(hydrate=True)
    assert (vol.state, vol.svm.name, vol.size, vol.comment) == (
        "online",
        "svm0",
        64 * MiB,
        "vm disks",
    )
    assert _path(ontap_emulator, vol).is_dir()
    status, body = ontap_emulator.request("GET", f"/emulator/volumes/{vol.uuid}")
    assert status == 200 and json.loads(body)["export_path"] == str(_path(ontap_emulator, vol))

    found = Volume.find(name=name)
    assert found is not None and found.uuid == vol.uuid
    listed = list(
        Volume.get_collection(**{"svm.name": "svm0", "name": name, "fields": "size,space.used"})
    )
    assert [v.size for v in listed] == [64 * MiB]
    assert list(Volume.get_collection(name=f"{name}|nomatch")) != []
    assert list(Volume.get_collection(name=f"!{name}", uuid=vol.uuid)) == []

    vol.size = 128 * MiB
    vol.comment = "bigger"
    vol.patch()
    again = Volume(uuid=vol.uuid)
    again.get(fields="size,comment")
    assert (again.size, again.comment) == (128 * MiB, "bigger")

    vol.delete()
    assert not _path(ontap_emulator, vol).exists()
    with pytest.raises(NetAppRestError) as err:
        Volume(uuid=vol.uuid).get()
    status, body = _error(err.value)
    assert status == 404 and body["code"] == "4"


def test_volume_validation(ontap_connection: HostConnection, volume: Volume) -> None:
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"name": _name(), "svm": {"name": "other"}, "size": 64 * MiB}, 404, "2621462"),
        ({"name": volume.name, "svm": {"name": "svm0"}, "size": 64 * MiB}, 409, "917835"),
        ({"name": _name(), "svm": {"name": "svm0"}, "size": 1 * MiB}, 400, "262185"),
        ({"name": "bad-name", "svm": {"name": "svm0"}, "size": 64 * MiB}, 400, "262185"),
    ]
    for fields, status, code in cases:
        with pytest.raises(NetAppRestError) as err:
            Volume(**fields).post()
        assert _error(err.value)[0] == status, fields
        assert _error(err.value)[1]["code"] == code, fields
    with pytest.raises(NetAppRestError) as err:
        list(Volume.get_collection(fields="no_such_field"))
    assert _error(err.value)[1]["code"] == "262197"
    with pytest.raises(NetAppRestError) as err:
        list(Volume.get_collection(bogus="1"))
    assert _error(err.value)[1]["code"] == "262179"


def test_raw_errors(ontap_emulator: EmulatorProcess) -> None:
    status, body = ontap_emulator.request("POST", "/api/storage/volumes", b"{not json")
    assert status == 400 and "error" in json.loads(body)
    status, body = ontap_emulator.request(
        "POST",
        "/api/storage/volumes",
        json.dumps({"name": "x", "svm": {"name": "svm0"}, "colour": "red"}).encode(),
    )
    assert status == 400 and json.loads(body)["error"]["code"] == "262179"
    status, body = ontap_emulator.request("GET", "/api/no/such/api")
    assert status == 404 and json.loads(body)["error"]["message"] == "API not found"
    status, body = ontap_emulator.request("POST", "/api/storage/volumes", b" " * (2 * MiB))
    assert status == 413 and "error" in json.loads(body)


def test_snapshots_and_volume_restore(
    ontap_emulator: EmulatorProcess, ontap_connection: HostConnection, volume: Volume
) -> None:
    disk = _path(ontap_emulator, volume, "vm1/disk.raw")
    disk.parent.mkdir()
    disk.write_bytes(b"A" * 50_000)
    s1 = Snapshot(volume.uuid, name="s1", comment="vmsnap:vm-1/1")
    s1.post()
    disk.write_bytes(b"B" * 50_000)
    _path(ontap_emulator, volume, "vm1/new.txt").write_text("new")
    s2 = Snapshot(volume.uuid, name="s2", snapmirror_label="daily")
    s2.post()

    got = Snapshot(volume.uuid, uuid=s1.uuid)
    got.get()
    assert (got.name, got.comment, got.volume.uuid) == ("s1", "vmsnap:vm-1/1", volume.uuid)
    by_comment = list(Snapshot.get_collection(volume.uuid, comment="vmsnap:*", fields="comment"))
    assert [s.name for s in by_comment] == ["s1"]

    Volume(uuid=volume.uuid).patch(**{"restore_to.snapshot.name": "s1"})
    assert disk.read_bytes() == b"A" * 50_000
    assert not _path(ontap_emulator, volume, "vm1/new.txt").exists()
    # As on ONTAP, a volume SnapRestore drops the snapshots newer than its target.
    assert [s.name for s in Snapshot.get_collection(volume.uuid)] == ["s1"]

    disk.write_bytes(b"C")
    status, _ = ontap_emulator.request(  # the body form, with return_timeout
        "PATCH",
        f"/api/storage/volumes/{volume.uuid}?return_timeout=30",
        json.dumps({"restore_to": {"snapshot": {"uuid": s1.uuid}}}).encode(),
    )
    assert status == 200 and disk.read_bytes() == b"A" * 50_000

    with pytest.raises(NetAppRestError) as err:
        Volume(uuid=volume.uuid).patch(**{"restore_to.snapshot.name": "nope"})
    assert _error(err.value)[0] == 404


def test_snapshot_patch_delete_and_errors(ontap_connection: HostConnection, volume: Volume) -> None:
    snap = Snapshot(volume.uuid, name="s1")
    snap.post()
    snap.comment = "tagged"
    snap.patch()
    again = Snapshot(volume.uuid, uuid=snap.uuid)
    again.get()
    assert again.comment == "tagged"
    with pytest.raises(NetAppRestError) as err:
        Snapshot(volume.uuid, name="s1").post()
    assert _error(err.value)[0] == 409
    with pytest.raises(NetAppRestError) as err:
        Snapshot(volume.uuid).post()
    assert _error(err.value)[0] == 400
    snap.delete()
    assert Snapshot.count_collection(volume.uuid) == 0
    with pytest.raises(NetAppRestError) as err:
        Snapshot(volume.uuid, uuid=snap.uuid).delete()
    assert _error(err.value) == (
        404,
        {"message": f"entry doesn't exist (snapshot {snap.uuid})", "code": "4", "target": "uuid"},
    )


def test_paging_and_counting(
    ontap_emulator: EmulatorProcess, ontap_connection: HostConnection, volume: Volume
) -> None:
    for i in range(5):
        Snapshot(volume.uuid, name=f"p{i}").post()
    assert sorted(s.name for s in Snapshot.get_collection(volume.uuid, max_records=2)) == [
        f"p{i}" for i in range(5)
    ]
    assert Snapshot.count_collection(volume.uuid) == 5
    status, body = ontap_emulator.request(
        "GET", f"/api/storage/volumes/{volume.uuid}/snapshots?max_records=2&fields=name"
    )
    page = json.loads(body)
    assert status == 200 and page["num_records"] == 2 and "next" in page["_links"]
    assert set(page["records"][0]) == {"uuid", "name", "_links"}
    ordered = list(Snapshot.get_collection(volume.uuid, order_by="name desc"))
    assert [s.name for s in ordered] == [f"p{i}" for i in reversed(range(5))]


def test_file_clone_restore_and_files(
    ontap_emulator: EmulatorProcess, ontap_connection: HostConnection, volume: Volume
) -> None:
    disk = _path(ontap_emulator, volume, "disk.raw")
    disk.write_bytes(b"original" * 1000)
    FileInfo(volume.uuid, "backups", type="directory", unix_permissions="755").post()
    FileInfo(volume.uuid, path="backups/inner", type="directory").post()
    FileClone(
        volume={"name": volume.name},
        source_path="disk.raw",
        destination_path="backups/disk.raw.snap1",
        is_backup=True,
    ).post()
    disk.write_bytes(b"changed!" * 1000)

    info = FileInfo(volume.uuid, path="backups/disk.raw.snap1")
    info.get()
    assert (info.type, info.size) == ("file", 8000)
    names = [f.name for f in FileInfo.get_collection(volume.uuid)]
    assert {".", "..", "disk.raw", "backups"} <= set(names)
    inside = FileInfo.get_collection(volume.uuid, "backups", type="file", fields="size")
    assert [(f.path, f.size) for f in inside] == [("backups/disk.raw.snap1", 8000)]

    # Revert = clone the backup back over the disk.
    with pytest.raises(NetAppRestError) as err:
        FileClone(
            volume={"uuid": volume.uuid},
            source_path="backups/disk.raw.snap1",
            destination_path="disk.raw",
        ).post()
    assert _error(err.value)[0] == 409
    FileClone(
        volume={"uuid": volume.uuid},
        source_path="backups/disk.raw.snap1",
        destination_path="disk.raw",
        overwrite_destination=True,
    ).post()
    assert disk.read_bytes() == b"original" * 1000

    with pytest.raises(NetAppRestError) as err:
        FileClone(volume={"uuid": volume.uuid}, source_path="missing", destination_path="x").post()
    assert _error(err.value)[0] == 404
    with pytest.raises(NetAppRestError) as err:
        FileClone(
            volume={"uuid": volume.uuid}, source_path="../../etc/passwd", destination_path="x"
        ).post()
    assert _error(err.value)[0] == 400

    os.symlink("/etc", _path(ontap_emulator, volume, "escape"))
    with pytest.raises(NetAppRestError) as err:
        FileClone(
            volume={"uuid": volume.uuid}, source_path="escape/hostname", destination_path="stolen"
        ).post()
    assert _error(err.value)[0] == 400

    with pytest.raises(NetAppRestError) as err:
        FileInfo(volume.uuid, path="backups").delete()
    assert _error(err.value)[0] == 400  # not empty
    info.delete()
    assert not _path(ontap_emulator, volume, "backups/disk.raw.snap1").exists()
    FileInfo(volume.uuid, path="backups").delete(recurse=True)
    assert not _path(ontap_emulator, volume, "backups").exists()


def test_sparse_images_stay_cheap(
    ontap_emulator: EmulatorProcess, ontap_connection: HostConnection, volume: Volume
) -> None:
    disk = _path(ontap_emulator, volume, "sparse.raw")
    with disk.open("wb") as f:
        f.truncate(256 * MiB)
        f.seek(100 * MiB)
        f.write(b"x" * 4096)
    before = ontap_emulator.emulator_info()["stats"]
    FileClone(
        volume={"uuid": volume.uuid}, source_path="sparse.raw", destination_path="sparse.clone"
    ).post()
    Snapshot(volume.uuid, name="sparse").post()
    after = ontap_emulator.emulator_info()["stats"]
    copied = sum(after[k] - before[k] for k in ("clone_bytes_copied", "snapshot_bytes_copied"))
    assert copied < 4 * MiB  # only data extents (or nothing, with reflinks) were copied
    clone = _path(ontap_emulator, volume, "sparse.clone")
    assert clone.stat().st_size == 256 * MiB
    with clone.open("rb") as f:
        f.seek(100 * MiB)
        assert f.read(4096) == b"x" * 4096
    assert os.stat(clone).st_blocks * 512 < 16 * MiB


def test_empty_collections_accept_fields_and_filters(
    fresh_ontap_emulator: EmulatorProcess,
) -> None:
    emu = fresh_ontap_emulator
    for path in (
        "/api/storage/volumes?fields=space.used,svm.name&name=x*",
        "/api/cluster/jobs?fields=state,message&state=failure",
        "/api/storage/volumes?return_records=false",
    ):
        status, body = emu.request("GET", path)
        assert status == 200, body
        assert json.loads(body)["num_records"] == 0


def test_file_contents_over_rest(ontap_emulator: EmulatorProcess, volume: Volume) -> None:
    conn = HostConnection(
        ontap_emulator.host,
        port=ontap_emulator.port,
        username=ontap_emulator.user,
        password=ontap_emulator.password,
        verify=False,
        headers={"Accept": "multipart/form-data"},
    )
    with conn:
        FileInfo(volume.uuid, "note.txt").post(data="hello world")
        FileInfo(volume.uuid, "note.txt").patch(data="HELLO", byte_offset=0)
        FileInfo(volume.uuid, "note.txt").patch(data="!", byte_offset=-1)
        reader = FileInfo(volume.uuid, "note.txt")
        reader.get(byte_offset=6, length=100)
    parts = {p["name"]: p["content"] for p in reader.response_parts}
    assert parts == {"bytes_read": b"6", "data": b"world!"}
    assert _path(ontap_emulator, volume, "note.txt").read_bytes() == b"HELLO world!"
    with conn, pytest.raises(NetAppRestError) as err:
        FileInfo(volume.uuid, "note.txt").post(data="again")
    assert _error(err.value)[0] == 409
    with conn:
        FileInfo(volume.uuid, "note.txt").post(data="again", overwrite=True)
    assert _path(ontap_emulator, volume, "note.txt").read_bytes() == b"again"
    status, body = ontap_emulator.request(
        "GET",
        f"/api/storage/volumes/{volume.uuid}/files/note.txt?length={2 << 20}",
        headers={"Accept": "multipart/form-data"},
    )
    assert status == 400 and b"At most" in body  # 1 MiB per call, as on ONTAP
