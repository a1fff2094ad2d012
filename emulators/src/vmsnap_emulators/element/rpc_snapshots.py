"""Element RPC methods on snapshots and group snapshots, including rollbacks."""

from __future__ import annotations

from typing import Any

from .model import GroupSnapshot, Snapshot
from .params import Params
from .rpc import rpc
from .state import ElementState


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
