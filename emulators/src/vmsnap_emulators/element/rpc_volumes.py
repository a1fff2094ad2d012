"""Element RPC methods on volumes (create, list, modify, delete, purge, clone)."""

from __future__ import annotations

from typing import Any

from . import errors
from .errors import ElementError
from .model import Snapshot, Volume, now_iso
from .params import Params
from .rpc import rpc
from .state import ElementState


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


def _clone_param(item: dict[str, Any], i: int) -> Params:
    """One entry of CloneMultipleVolumes' ``volumes`` (CloneMultipleVolumeParams)."""
    p = Params(item)
    p.int_req("volumeID")
    unknown = set(item) - {"volumeID", "access", "name", "newAccountID", "newSize", "attributes"}
    if unknown:
        raise errors.invalid(f"volumes[{i}] has unknown members {sorted(unknown)}.")
    return p


@rpc("CloneMultipleVolumes")
def clone_multiple_volumes(state: ElementState, p: Params) -> dict[str, Any]:
    """Clones of several volumes at one instant, or of a group snapshot's members.

    As on the array: with ``groupSnapshotID`` every listed volume must be a member of
    that group and its clone is made from the member snapshot; without it the clones
    share one point in time of the current volumes (the state lock covers them all).
    A clone shares the source's blocks (copy-on-write): writes to either side never
    reach the other.
    """
    items = [_clone_param(item, i) for i, item in enumerate(p.dict_list_req("volumes"))]
    if not items:
        raise errors.invalid("volumes must list at least one volume.")
    default_access = _access(p)
    default_account = p.int_opt("newAccountID")
    group_id = p.int_opt("groupSnapshotID")
    group = state.group(group_id) if group_id is not None else None
    members = (
        {state.snapshots[sid].volumeID: state.snapshots[sid] for sid in group.members}
        if group is not None
        else {}
    )
    sources: list[tuple[Volume, Snapshot | None, Params]] = []
    for i, item in enumerate(items):
        volume_id = item.int_req("volumeID")
        src = state.volume(volume_id)
        if group is not None and volume_id not in members:
            raise errors.invalid(
                f"VolumeID {volume_id} is not a member of GroupSnapshotID {group_id}."
            )
        if volume_id in [s.volumeID for s, _, _ in sources]:
            raise errors.invalid(f"volumes[{i}]: VolumeID {volume_id} is listed twice.")
        sources.append((src, members.get(volume_id), item))
    # One point in time without a group snapshot: freeze every source first.
    pairs = []
    for src, snap, item in sources:
        account = item.int_opt("newAccountID")
        account = default_account if account is None else account
        access = _access(item) or default_access or src.access
        vol = state.clone_volume(
            src,
            snap,
            item.str_opt("name", max_len=64) or src.name,
            src.accountID if account is None else account,
            item.int_opt("newSize"),
            access,
            item.dict_opt("attributes") or {},
        )
        pairs.append({"volumeID": vol.volumeID, "srcVolumeID": src.volumeID})
    state.next_ids.setdefault("groupClone", 1)
    group_clone_id = state.next_ids["groupClone"]
    state.next_ids["groupClone"] = group_clone_id + 1
    res = state.add_async(
        "CloneMultiple",
        {"groupCloneID": group_clone_id, "members": pairs},
        {"groupCloneID": group_clone_id},
    )
    return {"asyncHandle": res.asyncHandle, "groupCloneID": group_clone_id, "members": pairs}
