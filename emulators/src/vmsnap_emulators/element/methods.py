"""The Element JSON-RPC methods the emulator implements.

Each method takes the cluster state and validated :class:`~.params.Params` and returns the
``result`` object. Result shapes follow ``solidfire.models`` (``CreateSnapshotResult`` ...).
Methods the emulator does not know answer ``xUnknownAPIMethod``, as the real API does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import errors
from .errors import ElementError
from .model import AsyncResult, GroupSnapshot, Snapshot, now_iso
from .params import Params
from .state import ElementState

API_VERSION = "12.3"
SUPPORTED_VERSIONS = [
    "1.0",
    "2.0",
    "3.0",
    "4.0",
    "5.0",
    "6.0",
    "7.0",
    "7.1",
    "7.2",
    "7.3",
    "7.4",
    "8.0",
    "8.1",
    "8.2",
    "8.3",
    "8.4",
    "8.5",
    "8.6",
    "8.7",
    "9.0",
    "9.1",
    "9.2",
    "9.3",
    "9.4",
    "9.5",
    "9.6",
    "10.0",
    "10.1",
    "10.2",
    "10.3",
    "10.4",
    "10.5",
    "10.6",
    "10.7",
    "11.0",
    "11.1",
    "11.3",
    "11.5",
    "11.7",
    "11.8",
    "12.0",
    "12.2",
    "12.3",
]
ELEMENT_VERSION = "12.3.0.958"

Method = Callable[[ElementState, Params], dict[str, Any]]
METHODS: dict[str, Method] = {}


def rpc(name: str) -> Callable[[Method], Method]:
    def register(fn: Method) -> Method:
        METHODS[name] = fn
        return fn

    return register


def _snap(state: ElementState, snap: Snapshot) -> dict[str, Any]:
    vol = state.volumes.get(snap.volumeID)
    return snap.wire(vol.name if vol else "")


def _group(state: ElementState, grp: GroupSnapshot) -> dict[str, Any]:
    members = [_snap(state, state.snapshots[sid]) for sid in grp.members]
    return {
        "groupSnapshotID": grp.groupSnapshotID,
        "groupSnapshotUUID": grp.groupSnapshotUUID,
        "name": grp.name,
        "createTime": grp.createTime,
        "attributes": grp.attributes,
        "members": members,
        "status": "done",
        "enableRemoteReplication": grp.enableRemoteReplication,
        "remoteStatuses": [],
    }


def _group_result(state: ElementState, grp: GroupSnapshot) -> dict[str, Any]:
    members = [state.snapshots[sid] for sid in grp.members]
    return {
        "groupSnapshotID": grp.groupSnapshotID,
        "groupSnapshot": _group(state, grp),
        "members": [
            {"volumeID": s.volumeID, "snapshotID": s.snapshotID, "checksum": s.checksum()}
            for s in members
        ],
    }


# -- cluster -------------------------------------------------------------------------------
@rpc("GetAPI")
def get_api(state: ElementState, p: Params) -> dict[str, Any]:
    return {
        "currentVersion": float(API_VERSION),
        "supportedVersions": [float(v) for v in SUPPORTED_VERSIONS],
        "methods": sorted(METHODS),
    }


@rpc("GetClusterInfo")
def get_cluster_info(state: ElementState, p: Params) -> dict[str, Any]:
    c = state.cluster
    return {
        "clusterInfo": {
            "name": c["name"],
            "uniqueID": c["uniqueID"],
            "uuid": c["uuid"],
            "attributes": {},
            "mvip": "127.0.0.1",
            "mvipNodeID": 1,
            "svip": "127.0.0.1",
            "svipNodeID": 1,
            "repCount": 2,
            "ensemble": ["127.0.0.1"],
            "encryptionAtRestState": "disabled",
            "softwareEncryptionAtRestState": "disabled",
            "defaultProtectionScheme": "doubleHelix",
            "enabledProtectionSchemes": ["doubleHelix"],
            "supportedProtectionSchemes": ["doubleHelix"],
        }
    }


@rpc("GetClusterVersionInfo")
def get_cluster_version_info(state: ElementState, p: Params) -> dict[str, Any]:
    return {
        "clusterAPIVersion": API_VERSION,
        "clusterVersion": ELEMENT_VERSION,
        "clusterVersionInfo": [
            {"nodeID": 1, "nodeInternalRevision": ELEMENT_VERSION, "nodeVersion": ELEMENT_VERSION}
        ],
        "softwareVersionInfo": {
            "currentVersion": ELEMENT_VERSION,
            "nodeID": 0,
            "packageName": "",
            "pendingVersion": ELEMENT_VERSION,
            "startTime": "",
        },
    }


# -- accounts ------------------------------------------------------------------------------
def _account(state: ElementState, account_id: int) -> dict[str, Any]:
    acc = state.account(account_id)
    return acc.wire(state.volumes_of(account_id))


@rpc("AddAccount")
def add_account(state: ElementState, p: Params) -> dict[str, Any]:
    acc = state.add_account(
        p.str_req("username", max_len=64),
        p.dict_opt("attributes") or {},
        p.str_opt("initiatorSecret", max_len=16),
        p.str_opt("targetSecret", max_len=16),
        p.bool_opt("enableChap", True),
    )
    return {"accountID": acc.accountID, "account": _account(state, acc.accountID)}


@rpc("GetAccountByID")
def get_account_by_id(state: ElementState, p: Params) -> dict[str, Any]:
    return {"account": _account(state, p.int_req("accountID"))}


@rpc("GetAccountByName")
def get_account_by_name(state: ElementState, p: Params) -> dict[str, Any]:
    name = p.str_req("username", max_len=64)
    for acc in state.accounts.values():
        if acc.username == name:
            return {"account": _account(state, acc.accountID)}
    raise ElementError("xAccountDoesNotExist", f"Account {name} does not exist.")


@rpc("ListAccounts")
def list_accounts(state: ElementState, p: Params) -> dict[str, Any]:
    start = p.int_opt("startAccountID", minimum=0) or 0
    limit = p.int_opt("limit", minimum=1)
    p.ignore("includeStorageContainers")
    ids = sorted(k for k in state.accounts if k >= start)
    if limit is not None:
        ids = ids[:limit]
    return {"accounts": [_account(state, k) for k in ids]}


# -- volumes -------------------------------------------------------------------------------
def _volume(state: ElementState, volume_id: int) -> dict[str, Any]:
    return state.volumes[volume_id].wire(state.cluster["uniqueID"])


_ACCESS = ("readOnly", "readWrite", "locked", "replicationTarget")


def _access(p: Params) -> str | None:
    access = p.str_opt("access")
    if access is not None and access not in _ACCESS:
        raise errors.invalid(f"access must be one of {', '.join(_ACCESS)}.")
    return access


@rpc("CreateVolume")
def create_volume(state: ElementState, p: Params) -> dict[str, Any]:
    vol = state.create_volume(
        p.str_req("name", max_len=64),
        p.int_req("accountID"),
        p.int_req("totalSize"),
        enable512e=p.bool_opt("enable512e", False),
        attributes=p.dict_opt("attributes") or {},
        qos=p.dict_opt("qos"),
        access=_access(p) or "readWrite",
    )
    p.ignore(
        "associateWithQoSPolicy",
        "qosPolicyID",
        "enableSnapMirrorReplication",
        "protectionScheme",
        "fifoSize",
        "minFifoSize",
    )
    return {
        "volumeID": vol.volumeID,
        "volume": _volume(state, vol.volumeID),
        "curve": vol.qos.get("curve", {}),
    }


def _list_volumes(state: ElementState, p: Params, statuses: tuple[str, ...]) -> list[int]:
    start = p.int_opt("startVolumeID", minimum=0) or 0
    limit = p.int_opt("limit", minimum=1)
    p.ignore("includeVirtualVolumes", "isPaired", "protectionSchemes")
    ids = sorted(k for k, v in state.volumes.items() if k >= start and v.status in statuses)
    if limit is not None:
        ids = ids[:limit]
    return ids


@rpc("ListVolumes")
def list_volumes(state: ElementState, p: Params) -> dict[str, Any]:
    status = p.str_opt("volumeStatus")
    statuses = (status,) if status else ("active",)
    ids = _list_volumes(state, p, statuses)
    wanted = p.int_list_opt("volumeIDs")
    accounts = p.int_list_opt("accounts")
    name = p.str_opt("volumeName", max_len=64)
    if wanted is not None:
        ids = [i for i in ids if i in set(wanted)]
    if accounts is not None:
        ids = [i for i in ids if state.volumes[i].accountID in set(accounts)]
    if name is not None:
        ids = [i for i in ids if state.volumes[i].name == name]
    return {"volumes": [_volume(state, i) for i in ids]}


@rpc("ListActiveVolumes")
def list_active_volumes(state: ElementState, p: Params) -> dict[str, Any]:
    return {"volumes": [_volume(state, i) for i in _list_volumes(state, p, ("active",))]}


@rpc("ListDeletedVolumes")
def list_deleted_volumes(state: ElementState, p: Params) -> dict[str, Any]:
    return {"volumes": [_volume(state, i) for i in _list_volumes(state, p, ("deleted",))]}


@rpc("ListVolumesForAccount")
def list_volumes_for_account(state: ElementState, p: Params) -> dict[str, Any]:
    account_id = p.int_req("accountID")
    state.account(account_id)
    ids = _list_volumes(state, p, ("active",))
    return {"volumes": [_volume(state, i) for i in ids if state.volumes[i].accountID == account_id]}


@rpc("GetVolumeStats")
def get_volume_stats(state: ElementState, p: Params) -> dict[str, Any]:
    vol = state.volume(p.int_req("volumeID"))
    blocks = state.layers.mapped_blocks(vol.head)
    used = min(blocks * state.layers.block_size, vol.totalSize)
    return {
        "volumeStats": {
            "volumeID": vol.volumeID,
            "accountID": vol.accountID,
            "volumeSize": vol.totalSize,
            "nonZeroBlocks": used // 4096,
            "zeroBlocks": (vol.totalSize - used) // 4096,
            "volumeUtilization": 0.0,
            "readBytes": 0,
            "readOps": 0,
            "writeBytes": 0,
            "writeOps": 0,
            "unalignedReads": 0,
            "unalignedWrites": 0,
            "volumeAccessGroups": [],
            "timestamp": now_iso(),
        }
    }


@rpc("ModifyVolume")
def modify_volume(state: ElementState, p: Params) -> dict[str, Any]:
    vol = state.volume(p.int_req("volumeID"))
    state.modify_volume(
        vol,
        size=p.int_opt("totalSize"),
        attributes=p.dict_opt("attributes"),
        account_id=p.int_opt("accountID"),
        access=_access(p),
        qos=p.dict_opt("qos"),
    )
    p.ignore(
        "associateWithQoSPolicy",
        "qosPolicyID",
        "enableSnapMirrorReplication",
        "fifoSize",
        "minFifoSize",
    )
    return {"volume": _volume(state, vol.volumeID)}


@rpc("DeleteVolume")
def delete_volume(state: ElementState, p: Params) -> dict[str, Any]:
    vol = state.volume(p.int_req("volumeID"))
    state.delete_volume(vol)
    return {"volume": _volume(state, vol.volumeID)}


@rpc("RestoreDeletedVolume")
def restore_deleted_volume(state: ElementState, p: Params) -> dict[str, Any]:
    volume_id = p.int_req("volumeID")
    vol = state.volume(volume_id, allow_deleted=True)
    if vol.status != "deleted":
        raise errors.invalid(f"VolumeID {volume_id} is not deleted.")
    state.restore_volume(vol)
    return {}


@rpc("PurgeDeletedVolume")
def purge_deleted_volume(state: ElementState, p: Params) -> dict[str, Any]:
    volume_id = p.int_req("volumeID")
    vol = state.volume(volume_id, allow_deleted=True)
    if vol.status != "deleted":
        raise ElementError("xVolumeNotDeleted", f"VolumeID {volume_id} must be deleted first.")
    state.purge_volume(vol)
    return {}


@rpc("CloneVolume")
def clone_volume(state: ElementState, p: Params) -> dict[str, Any]:
    src = state.volume(p.int_req("volumeID"))
    snapshot_id = p.int_opt("snapshotID")
    snap = state.snapshot(snapshot_id) if snapshot_id is not None else None
    if snap is not None and snap.volumeID != src.volumeID:
        raise errors.invalid(f"SnapshotID {snapshot_id} is not a snapshot of this volume.")
    account_id = p.int_opt("newAccountID")
    vol = state.clone_volume(
        src,
        snap,
        p.str_req("name", max_len=64),
        src.accountID if account_id is None else account_id,
        p.int_opt("newSize"),
        _access(p) or src.access,
        p.dict_opt("attributes") or {},
    )
    p.ignore("enable512e", "enableSnapMirrorReplication")
    # The copy is metadata only and done now; the handle still follows the real protocol.
    res = state.add_async(
        "Clone",
        {"cloneID": vol.volumeID, "volumeID": vol.volumeID, "message": "Clone complete."},
        {"volumeID": vol.volumeID},
    )
    return {
        "volumeID": vol.volumeID,
        "cloneID": vol.volumeID,
        "asyncHandle": res.asyncHandle,
        "volume": _volume(state, vol.volumeID),
        "curve": vol.qos.get("curve", {}),
    }


# -- snapshots -----------------------------------------------------------------------------
@rpc("CreateSnapshot")
def create_snapshot(state: ElementState, p: Params) -> dict[str, Any]:
    vol = state.volume(p.int_req("volumeID"))
    source_id = p.int_opt("snapshotID")
    source = state.snapshot(source_id) if source_id is not None else None
    snap = state.create_snapshot(
        vol,
        p.str_opt("name"),
        p.dict_opt("attributes") or {},
        source,
        p.str_opt("expirationTime"),
        p.str_opt("snapMirrorLabel"),
    )
    p.ignore("enableRemoteReplication", "retention", "ensureSerialCreation")
    return {
        "snapshotID": snap.snapshotID,
        "checksum": snap.checksum(),
        "snapshot": _snap(state, snap),
    }


@rpc("ListSnapshots")
def list_snapshots(state: ElementState, p: Params) -> dict[str, Any]:
    volume_id = p.int_opt("volumeID")
    snapshot_id = p.int_opt("snapshotID")
    if volume_id is not None:
        state.volume(volume_id, allow_deleted=True)
    snaps = sorted(state.snapshots.values(), key=lambda s: s.snapshotID)
    if volume_id is not None:
        snaps = [s for s in snaps if s.volumeID == volume_id]
    if snapshot_id is not None:
        snaps = [s for s in snaps if s.snapshotID == snapshot_id]
    return {"snapshots": [_snap(state, s) for s in snaps]}


@rpc("ModifySnapshot")
def modify_snapshot(state: ElementState, p: Params) -> dict[str, Any]:
    # Like the real method: name, expiration, replication and label; not attributes
    # (those are set at creation). Unknown parameters come back in unusedParameters.
    snap = state.snapshot(p.int_req("snapshotID"))
    name = p.str_opt("name")
    if name is not None:
        snap.name = name
    if "expirationTime" in p.raw:
        snap.expirationTime = p.str_opt("expirationTime")
    snap.enableRemoteReplication = p.bool_opt(
        "enableRemoteReplication", snap.enableRemoteReplication
    )
    label = p.str_opt("snapMirrorLabel")
    if label is not None:
        snap.snapMirrorLabel = label
    state.commit()
    return {"snapshot": _snap(state, snap)}


@rpc("DeleteSnapshot")
def delete_snapshot(state: ElementState, p: Params) -> dict[str, Any]:
    state.delete_snapshot(state.snapshot(p.int_req("snapshotID")))
    return {}


@rpc("RollbackToSnapshot")
def rollback_to_snapshot(state: ElementState, p: Params) -> dict[str, Any]:
    vol = state.volume(p.int_req("volumeID"))
    snap = state.snapshot(p.int_req("snapshotID"))
    saved = state.rollback(
        vol,
        snap,
        p.bool_req("saveCurrentState"),
        p.str_opt("name"),
        p.dict_opt("attributes") or {},
    )
    if saved is None:
        return {}
    return {
        "snapshotID": saved.snapshotID,
        "checksum": saved.checksum(),
        "snapshot": _snap(state, saved),
    }


# -- group snapshots -----------------------------------------------------------------------
@rpc("CreateGroupSnapshot")
def create_group_snapshot(state: ElementState, p: Params) -> dict[str, Any]:
    grp = state.create_group(
        p.int_list_req("volumes"),
        p.str_opt("name"),
        p.dict_opt("attributes") or {},
        p.str_opt("expirationTime"),
        p.str_opt("snapMirrorLabel"),
    )
    p.ignore("enableRemoteReplication", "retention", "ensureSerialCreation")
    return _group_result(state, grp)


@rpc("ListGroupSnapshots")
def list_group_snapshots(state: ElementState, p: Params) -> dict[str, Any]:
    volumes = p.int_list_opt("volumes")
    group_id = p.int_opt("groupSnapshotID")
    groups = sorted(state.groups.values(), key=lambda g: g.groupSnapshotID)
    if group_id is not None:
        groups = [g for g in groups if g.groupSnapshotID == group_id]
    if volumes:
        wanted = set(volumes)
        groups = [
            g for g in groups if any(state.snapshots[s].volumeID in wanted for s in g.members)
        ]
    return {"groupSnapshots": [_group(state, g) for g in groups]}


@rpc("ModifyGroupSnapshot")
def modify_group_snapshot(state: ElementState, p: Params) -> dict[str, Any]:
    grp = state.group(p.int_req("groupSnapshotID"))
    name = p.str_opt("name")
    if name is not None:
        grp.name = name
    if "expirationTime" in p.raw:
        grp.expirationTime = p.str_opt("expirationTime")
    grp.enableRemoteReplication = p.bool_opt("enableRemoteReplication", grp.enableRemoteReplication)
    label = p.str_opt("snapMirrorLabel")
    if label is not None:
        grp.snapMirrorLabel = label
    for sid in grp.members:
        member = state.snapshots[sid]
        member.expirationTime = grp.expirationTime
        member.enableRemoteReplication = grp.enableRemoteReplication
        member.snapMirrorLabel = grp.snapMirrorLabel
    state.commit()
    return {"groupSnapshot": _group(state, grp)}


@rpc("DeleteGroupSnapshot")
def delete_group_snapshot(state: ElementState, p: Params) -> dict[str, Any]:
    grp = state.group(p.int_req("groupSnapshotID"))
    state.delete_group(grp, p.bool_req("saveMembers"))
    return {}


@rpc("RollbackToGroupSnapshot")
def rollback_to_group_snapshot(state: ElementState, p: Params) -> dict[str, Any]:
    grp = state.group(p.int_req("groupSnapshotID"))
    saved = state.rollback_group(
        grp, p.bool_req("saveCurrentState"), p.str_opt("name"), p.dict_opt("attributes") or {}
    )
    return {} if saved is None else _group_result(state, saved)


# -- asynchronous results ------------------------------------------------------------------
def _async(res: AsyncResult) -> dict[str, Any]:
    running = time.time() < res.complete_at
    out: dict[str, Any] = {
        "createTime": res.createTime,
        "lastUpdateTime": now_iso(),
        "resultType": res.resultType,
        "status": "running" if running else "complete",
        "details": res.details,
    }
    if not running:
        if res.error is not None:
            out["error"] = res.error
        else:
            out["result"] = res.result
    return out


@rpc("GetAsyncResult")
def get_async_result(state: ElementState, p: Params) -> dict[str, Any]:
    handle = p.int_req("asyncHandle")
    res = state.async_results.get(handle)
    if res is None:
        raise errors.invalid(f"asyncHandle {handle} does not exist.")
    out = _async(res)
    if out["status"] == "complete" and not p.bool_opt("keepResult", False):
        del state.async_results[handle]
        state.commit()
    return out


@rpc("ListAsyncResults")
def list_async_results(state: ElementState, p: Params) -> dict[str, Any]:
    types = p.raw.get("asyncResultTypes")
    p.ignore("asyncResultTypes")
    handles = []
    for res in sorted(state.async_results.values(), key=lambda r: r.asyncHandle):
        if isinstance(types, list) and res.resultType not in types:
            continue
        body = _async(res)
        handles.append(
            {
                "asyncResultID": res.asyncHandle,
                "completed": body["status"] == "complete",
                "createTime": res.createTime,
                "lastUpdateTime": body["lastUpdateTime"],
                "resultType": res.resultType,
                "success": body["status"] == "complete" and res.error is None,
                "data": body.get("result") or {},
            }
        )
    return {"asyncHandles": handles}


def call(
    state: ElementState, method: Any, raw_params: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one method under the state lock: (result, unusedParameters)."""
    if not isinstance(method, str) or method not in METHODS:
        raise ElementError("xUnknownAPIMethod", f"Unknown method: method={method}")
    params = Params(raw_params)
    with state.lock:
        result = METHODS[method](state, params)
    return result, params.unused()
