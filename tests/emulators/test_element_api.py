"""Element emulator through the vendor's own SDK (solidfire-sdk-python)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from solidfire.common import ApiConnectionError, ApiServerError
from solidfire.factory import ElementFactory

from vmsnap_emulators.pytest_fixtures import element_client
from vmsnap_emulators.testing import EmulatorProcess, start_emulator

# verify=False, as drivers do against arrays with self-signed certificates.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

MiB = 1 << 20


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def account_id(element_sdk: Any) -> int:
    return int(element_sdk.add_account(_name("acct")).account_id)


def _error(exc_info: pytest.ExceptionInfo[ApiServerError]) -> str:
    return str(exc_info.value.error_name)


def _raw_rpc(
    emu: EmulatorProcess, method: str, params: dict[str, Any], version: str = "12.3"
) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"method": method, "params": params, "id": 7}).encode()
    status, data = emu.request("POST", f"/json-rpc/{version}", body)
    return status, json.loads(data)


def test_factory_connects_and_reports_cluster(element_sdk: Any) -> None:
    assert element_sdk.api_version == 12.3
    info = element_sdk.get_cluster_info().cluster_info
    assert info.name == "vmsnap-element"
    assert element_sdk.get_cluster_version_info().cluster_apiversion == "12.3"
    assert 12.3 in element_sdk.get_api().supported_versions


def test_factory_without_version_uses_the_current_one(element_emulator: EmulatorProcess) -> None:
    sdk = ElementFactory.create(
        element_emulator.host,
        element_emulator.user,
        element_emulator.password,
        verify_ssl=False,
        port=element_emulator.port,
        print_ascii_art=False,
    )
    assert sdk.api_version == 12.3
    old = ElementFactory.create(
        element_emulator.host,
        element_emulator.user,
        element_emulator.password,
        version="10.0",
        verify_ssl=False,
        port=element_emulator.port,
        print_ascii_art=False,
    )
    assert old.api_version == 10.0 and old.get_cluster_info().cluster_info.name


def test_bad_credentials_are_rejected(element_emulator: EmulatorProcess) -> None:
    with pytest.raises(ApiConnectionError, match="Bad Credentials"):
        ElementFactory.create(
            element_emulator.host,
            element_emulator.user,
            "wrong",
            verify_ssl=False,
            port=element_emulator.port,
            print_ascii_art=False,
        )
    status, body = element_emulator.request("POST", "/json-rpc/12.3", b"{}", password="nope")
    assert status == 401
    assert b"wrong" not in body and element_emulator.password.encode() not in body


def test_accounts(element_sdk: Any) -> None:
    name = _name("acct")
    created = element_sdk.add_account(name, attributes={"owner": "vmsnap"})
    acc = element_sdk.get_account_by_id(created.account_id).account
    assert (acc.username, acc.attributes, acc.status) == (name, {"owner": "vmsnap"}, "active")
    assert created.account_id in [a.account_id for a in element_sdk.list_accounts().accounts]
    with pytest.raises(ApiServerError) as dup:
        element_sdk.add_account(name)
    assert _error(dup) == "xDuplicateUsername"
    with pytest.raises(ApiServerError) as missing:
        element_sdk.get_account_by_id(987654)
    assert _error(missing) == "xAccountIDDoesNotExist"


def test_create_and_list_volumes(element_sdk: Any, account_id: int) -> None:
    created = element_sdk.create_volume(
        _name("vol"), account_id, 3 * MiB + 1, attributes={"vm": "vm-1"}
    )
    vol = created.volume
    assert vol.volume_id == created.volume_id
    assert vol.total_size == 4 * MiB  # rounded up to whole MiB
    assert (vol.attributes, vol.status, vol.account_id) == ({"vm": "vm-1"}, "active", account_id)
    listed = element_sdk.list_volumes(volume_ids=[created.volume_id]).volumes
    assert [v.volume_id for v in listed] == [created.volume_id]
    other = element_sdk.create_volume(_name("vol"), account_id, MiB).volume_id
    page = element_sdk.list_volumes(start_volume_id=created.volume_id, limit=1).volumes
    assert [v.volume_id for v in page] == [created.volume_id]
    later = element_sdk.list_volumes(start_volume_id=other).volumes
    assert other in [v.volume_id for v in later] and created.volume_id not in [
        v.volume_id for v in later
    ]
    stats = element_sdk.get_volume_stats(created.volume_id).volume_stats
    assert stats.volume_size == 4 * MiB


def test_create_volume_validation(
    element_emulator: EmulatorProcess, element_sdk: Any, account_id: int
) -> None:
    with pytest.raises(ApiServerError) as bad_name:
        element_sdk.create_volume("bad name!", account_id, MiB)
    assert _error(bad_name) == "xInvalidParameter"
    with pytest.raises(ApiServerError) as no_account:
        element_sdk.create_volume(_name("vol"), 424242, MiB)
    assert _error(no_account) == "xAccountIDDoesNotExist"
    _, missing = _raw_rpc(element_emulator, "CreateVolume", {"name": "x", "accountID": 1})
    assert missing["error"]["name"] == "xMissingParameter"
    assert missing["id"] == 7
    _, wrong = _raw_rpc(
        element_emulator, "CreateVolume", {"name": "x", "accountID": 1, "totalSize": "big"}
    )
    assert wrong["error"]["name"] == "xInvalidParameterType"


def test_unknown_method_and_version(element_emulator: EmulatorProcess, element_sdk: Any) -> None:
    with pytest.raises(ApiServerError) as unknown:
        element_sdk.send_request("NoSuchMethod", dict, {})
    assert _error(unknown) == "xUnknownAPIMethod"
    _, body = _raw_rpc(element_emulator, "GetAPI", {}, version="99.0")
    assert body["error"]["name"] == "xUnknownAPIVersion"
    status, body = _raw_rpc(element_emulator, "GetAPI", {}, version="10.0")
    assert status == 200 and body["result"]["currentVersion"] == 12.3


def test_oversized_body_is_rejected(element_emulator: EmulatorProcess) -> None:
    status, data = element_emulator.request("POST", "/json-rpc/12.3", b" " * (2 * MiB))
    assert status == 413
    assert json.loads(data)["error"]["code"] == 500


def test_snapshot_and_rollback_restore_bytes(
    element_emulator: EmulatorProcess, element_sdk: Any, account_id: int
) -> None:
    vid = element_sdk.create_volume(_name("vol"), account_id, 4 * MiB).volume_id
    element_emulator.write_volume(vid, 1000, b"A" * 100_000)
    snap = element_sdk.create_snapshot(vid, name="before", attributes={"vmsnap": "s-1"})
    assert snap.snapshot.attributes == {"vmsnap": "s-1"}
    assert snap.snapshot.status == "done" and snap.checksum == snap.snapshot.checksum
    element_emulator.write_volume(vid, 1000, b"B" * 100_000)
    assert element_emulator.read_volume(vid, 1000, 100_000) == b"B" * 100_000
    assert element_emulator.read_snapshot(snap.snapshot_id, 1000, 100_000) == b"A" * 100_000

    undo = element_sdk.rollback_to_snapshot(
        vid, snap.snapshot_id, True, name="undo", attributes={"vmsnap": "undo"}
    )
    assert element_emulator.read_volume(vid, 1000, 100_000) == b"A" * 100_000
    assert element_emulator.read_volume(vid, 0, 1000) == bytes(1000)
    assert undo.snapshot.name == "undo" and undo.snapshot.attributes == {"vmsnap": "undo"}
    assert element_emulator.read_snapshot(undo.snapshot_id, 1000, 100_000) == b"B" * 100_000

    plain = element_sdk.rollback_to_snapshot(vid, undo.snapshot_id, False)
    assert plain.snapshot_id is None
    assert element_emulator.read_volume(vid, 1000, 100_000) == b"B" * 100_000
    names = [s.name for s in element_sdk.list_snapshots(volume_id=vid).snapshots]
    assert names == ["before", "undo"]


def test_snapshot_errors(element_sdk: Any, account_id: int) -> None:
    vid = element_sdk.create_volume(_name("vol"), account_id, MiB).volume_id
    other = element_sdk.create_volume(_name("vol"), account_id, MiB).volume_id
    snap = element_sdk.create_snapshot(vid).snapshot
    assert snap.name == snap.create_time  # unnamed snapshots are named by their time
    for call, name in [
        (lambda: element_sdk.create_snapshot(999999), "xVolumeIDDoesNotExist"),
        (lambda: element_sdk.delete_snapshot(999999), "xSnapshotIDDoesNotExist"),
        (
            lambda: element_sdk.rollback_to_snapshot(other, snap.snapshot_id, False),
            "xInvalidParameter",
        ),
        (lambda: element_sdk.delete_group_snapshot(999999, False), "xGroupSnapshotIDDoesNotExist"),
    ]:
        with pytest.raises(ApiServerError) as err:
            call()
        assert _error(err) == name
    element_sdk.delete_snapshot(snap.snapshot_id)
    assert element_sdk.list_snapshots(volume_id=vid).snapshots == []


def test_modify_snapshot_reports_unused_parameters(
    element_emulator: EmulatorProcess, element_sdk: Any, account_id: int
) -> None:
    vid = element_sdk.create_volume(_name("vol"), account_id, MiB).volume_id
    sid = element_sdk.create_snapshot(vid, attributes={"a": 1}).snapshot_id
    modified = element_sdk.modify_snapshot(sid, snap_mirror_label="daily").snapshot
    assert modified.snap_mirror_label == "daily"
    # Like the real API, attributes are set at creation only; unknown params are echoed.
    _, body = _raw_rpc(
        element_emulator,
        "ModifySnapshot",
        {"snapshotID": sid, "name": "renamed", "attributes": {"b": 2}},
    )
    assert body["unusedParameters"] == {"attributes": {"b": 2}}
    assert body["result"]["snapshot"]["name"] == "renamed"
    assert body["result"]["snapshot"]["attributes"] == {"a": 1}


def test_group_snapshot_rollback_saves_current_state(
    element_emulator: EmulatorProcess, element_sdk: Any, account_id: int
) -> None:
    v1 = element_sdk.create_volume(_name("vol"), account_id, 2 * MiB).volume_id
    v2 = element_sdk.create_volume(_name("vol"), account_id, 2 * MiB).volume_id
    element_emulator.write_volume(v1, 0, b"1" * 70_000)
    element_emulator.write_volume(v2, 0, b"2" * 70_000)
    grp = element_sdk.create_group_snapshot([v1, v2], name="vm-snap", attributes={"vmsnap": "g-1"})
    assert sorted(m.volume_id for m in grp.members) == [v1, v2]
    assert grp.group_snapshot.attributes == {"vmsnap": "g-1"}
    assert {m.group_id for m in grp.group_snapshot.members} == {grp.group_snapshot_id}
    element_emulator.write_volume(v1, 0, b"x" * 70_000)
    element_emulator.write_volume(v2, 0, b"y" * 70_000)

    saved = element_sdk.rollback_to_group_snapshot(grp.group_snapshot_id, True, name="undo")
    assert saved.group_snapshot_id not in (None, grp.group_snapshot_id)
    assert element_emulator.read_volume(v1, 0, 70_000) == b"1" * 70_000
    assert element_emulator.read_volume(v2, 0, 70_000) == b"2" * 70_000
    by_volume = {m.volume_id: m.snapshot_id for m in saved.members}
    assert element_emulator.read_snapshot(by_volume[v1], 0, 70_000) == b"x" * 70_000
    assert element_emulator.read_snapshot(by_volume[v2], 0, 70_000) == b"y" * 70_000

    listed = element_sdk.list_group_snapshots(volumes=[v1]).group_snapshots
    assert {g.group_snapshot_id for g in listed} == {grp.group_snapshot_id, saved.group_snapshot_id}
    one = element_sdk.list_group_snapshots(group_snapshot_id=grp.group_snapshot_id)
    assert [g.name for g in one.group_snapshots] == ["vm-snap"]

    element_sdk.delete_group_snapshot(saved.group_snapshot_id, True)  # keep members
    kept = {s.snapshot_id: s for s in element_sdk.list_snapshots(volume_id=v1).snapshots}
    assert by_volume[v1] in kept and kept[by_volume[v1]].group_id == 0
    element_sdk.delete_group_snapshot(grp.group_snapshot_id, False)
    left = [s.snapshot_id for s in element_sdk.list_snapshots(volume_id=v1).snapshots]
    assert left == [by_volume[v1]]


def test_modify_group_snapshot(element_sdk: Any, account_id: int) -> None:
    vid = element_sdk.create_volume(_name("vol"), account_id, MiB).volume_id
    grp = element_sdk.create_group_snapshot([vid])
    out = element_sdk.modify_group_snapshot(grp.group_snapshot_id, snap_mirror_label="weekly")
    assert out.group_snapshot.members[0].snap_mirror_label == "weekly"


def test_group_snapshot_validation(element_sdk: Any, account_id: int) -> None:
    vid = element_sdk.create_volume(_name("vol"), account_id, MiB).volume_id
    for volumes, name in [
        ([], "xInvalidParameter"),
        ([vid, vid], "xInvalidParameter"),
        ([vid, 999999], "xVolumeIDDoesNotExist"),
    ]:
        with pytest.raises(ApiServerError) as err:
            element_sdk.create_group_snapshot(volumes)
        assert _error(err) == name
    assert element_sdk.list_snapshots(volume_id=vid).snapshots == []


def test_snapshot_limit(element_sdk: Any, account_id: int) -> None:
    vid = element_sdk.create_volume(_name("vol"), account_id, MiB).volume_id
    other = element_sdk.create_volume(_name("vol"), account_id, MiB).volume_id
    first = element_sdk.create_snapshot(vid).snapshot_id
    for _ in range(31):
        element_sdk.create_snapshot(vid)
    for call in [
        lambda: element_sdk.create_snapshot(vid),
        lambda: element_sdk.create_group_snapshot([other, vid]),
        lambda: element_sdk.rollback_to_snapshot(vid, first, True),
    ]:
        with pytest.raises(ApiServerError) as err:
            call()
        assert _error(err) == "xMaxSnapshotsPerVolumeExceeded"
    # Nothing partial was left behind: the other volume got no group member.
    assert element_sdk.list_snapshots(volume_id=other).snapshots == []
    assert len(element_sdk.list_snapshots(volume_id=vid).snapshots) == 32
    element_sdk.rollback_to_snapshot(vid, first, False)  # no new snapshot needed: allowed


def test_clone_volume_and_async_result(
    element_emulator: EmulatorProcess, element_sdk: Any, account_id: int
) -> None:
    vid = element_sdk.create_volume(_name("vol"), account_id, MiB).volume_id
    element_emulator.write_volume(vid, 0, b"base" * 1000)
    clone = element_sdk.clone_volume(vid, _name("clone"), attributes={"c": 1})
    res = element_sdk.get_async_result(clone.async_handle, keep_result=True)
    assert res["status"] == "complete" and res["resultType"] == "Clone"
    assert res["result"]["volumeID"] == clone.volume_id
    element_sdk.get_async_result(clone.async_handle)  # consumes it
    with pytest.raises(ApiServerError):
        element_sdk.get_async_result(clone.async_handle)
    assert element_emulator.read_volume(clone.volume_id, 0, 4000) == b"base" * 1000
    element_emulator.write_volume(clone.volume_id, 0, b"diff")
    assert element_emulator.read_volume(vid, 0, 4) == b"base"


def test_delete_restore_and_purge_volume(
    element_emulator: EmulatorProcess, element_sdk: Any, account_id: int
) -> None:
    vid = element_sdk.create_volume(_name("vol"), account_id, MiB).volume_id
    element_sdk.create_snapshot(vid)
    deleted = element_sdk.delete_volume(vid).volume
    assert deleted.status == "deleted"
    assert vid not in [v.volume_id for v in element_sdk.list_volumes().volumes]
    assert vid in [v.volume_id for v in element_sdk.list_deleted_volumes().volumes]
    with pytest.raises(ApiServerError) as err:
        element_sdk.create_snapshot(vid)
    assert _error(err) == "xVolumeIDDoesNotExist"
    element_sdk.restore_deleted_volume(vid)
    assert element_sdk.list_volumes(volume_ids=[vid]).volumes[0].status == "active"
    element_sdk.delete_volume(vid)
    element_sdk.purge_deleted_volume(vid)
    assert vid not in [v.volume_id for v in element_sdk.list_deleted_volumes().volumes]
    assert element_sdk.list_snapshots().snapshots == [] or all(
        s.volume_id != vid for s in element_sdk.list_snapshots().snapshots
    )


def test_data_endpoint_errors(
    element_emulator: EmulatorProcess, element_sdk: Any, account_id: int
) -> None:
    vid = element_sdk.create_volume(_name("vol"), account_id, MiB).volume_id
    status, _ = element_emulator.request(
        "GET", f"/emulator/volumes/{vid}/data?offset={MiB}&length=1"
    )
    assert status == 400
    status, body = element_emulator.request("GET", "/emulator/volumes/999999/data?length=1")
    assert status == 404 and json.loads(body)["error"]["name"] == "xVolumeIDDoesNotExist"
    status, _ = element_emulator.request("GET", f"/emulator/volumes/{vid}/data", password="x")
    assert status == 401


def test_async_result_reports_running_then_complete(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data = tmp_path_factory.mktemp("element") / "data"
    with start_emulator("element", data, extra_args=["--async-delay", "0.3"]) as emu:
        sdk = element_client(emu)
        acc = sdk.add_account("async").account_id
        vid = sdk.create_volume("src", acc, MiB).volume_id
        handle = sdk.clone_volume(vid, "dst").async_handle
        first = sdk.get_async_result(handle, keep_result=True)
        assert first["status"] == "running" and "result" not in first
        for _ in range(100):
            res = sdk.get_async_result(handle, keep_result=True)
            if res["status"] == "complete":
                break
            time.sleep(0.05)
        assert res["status"] == "complete" and res["result"]["cloneID"] > vid
        listed = sdk.list_async_results().async_handles
        assert [(h.async_result_id, h.completed) for h in listed] == [(handle, True)]


def test_reads_are_bounded(
    element_emulator: EmulatorProcess, element_sdk: Any, account_id: int
) -> None:
    vid = element_sdk.create_volume(_name("vol"), account_id, 100 * MiB).volume_id
    status, body = element_emulator.request("GET", f"/emulator/volumes/{vid}/data")
    assert status == 400 and b"limited" in body
    assert element_emulator.read_volume(vid, 99 * MiB, MiB) == bytes(MiB)


def test_modify_volume_and_account_views(
    element_emulator: EmulatorProcess, element_sdk: Any, account_id: int
) -> None:
    vid = element_sdk.create_volume(_name("vol"), account_id, 2 * MiB).volume_id
    element_emulator.write_volume(vid, 0, b"keep")
    out = element_sdk.modify_volume(vid, attributes={"vm": "b"}, total_size=8 * MiB).volume
    assert (out.attributes, out.total_size) == ({"vm": "b"}, 8 * MiB)
    assert element_emulator.read_volume(vid, 0, 4) == b"keep"
    assert element_emulator.read_volume(vid, 7 * MiB, 4) == bytes(4)
    with pytest.raises(ApiServerError) as err:
        element_sdk.modify_volume(vid, total_size=MiB)
    assert _error(err) == "xInvalidParameter"
    mine = element_sdk.list_volumes_for_account(account_id).volumes
    assert vid in [v.volume_id for v in mine]
    name = element_sdk.get_account_by_id(account_id).account.username
    assert vid in element_sdk.get_account_by_name(name).account.volumes


def test_clone_multiple_volumes_from_a_group_snapshot(
    element_emulator: EmulatorProcess, element_sdk: Any, account_id: int
) -> None:
    from solidfire.models import CloneMultipleVolumeParams

    vids = [element_sdk.create_volume(_name("vol"), account_id, MiB).volume_id for _ in range(2)]
    for i, vid in enumerate(vids):
        element_emulator.write_volume(vid, 0, f"A{i}".encode() * 100)
    group = element_sdk.create_group_snapshot(vids).group_snapshot_id
    for i, vid in enumerate(vids):
        element_emulator.write_volume(vid, 0, f"B{i}".encode() * 100)
    result = element_sdk.clone_multiple_volumes(
        [
            CloneMultipleVolumeParams(volume_id=vid, name=_name("c"), attributes={"k": i})
            for i, vid in enumerate(vids)
        ],
        group_snapshot_id=group,
    )
    pairs = {m.src_volume_id: m.volume_id for m in result.members}
    assert set(pairs) == set(vids) and result.group_clone_id >= 1
    done = element_sdk.get_async_result(result.async_handle)
    assert done["status"] == "complete" and done["resultType"] == "CloneMultiple"
    for i, vid in enumerate(vids):
        clone = pairs[vid]
        assert element_emulator.read_volume(clone, 0, 200) == f"A{i}".encode() * 100
        assert element_emulator.read_volume(vid, 0, 200) == f"B{i}".encode() * 100
        # Independent both ways: copy-on-write, not shared.
        element_emulator.write_volume(clone, 0, b"CC")
        assert element_emulator.read_volume(vid, 0, 2) == f"B{i}".encode()
    (listed,) = element_sdk.list_volumes(volume_ids=[pairs[vids[1]]]).volumes
    assert listed.attributes == {"k": 1}
    # The group's members only, as on the array.
    other = element_sdk.create_volume(_name("vol"), account_id, MiB).volume_id
    with pytest.raises(ApiServerError) as exc:
        element_sdk.clone_multiple_volumes(
            [CloneMultipleVolumeParams(volume_id=other)], group_snapshot_id=group
        )
    assert _error(exc) == "xInvalidParameter"
