"""Element RPC methods: cluster information, accounts, asynchronous results."""

from __future__ import annotations

import time
from typing import Any

from . import errors
from .errors import ElementError
from .model import AsyncResult, now_iso
from .params import Params
from .rpc import API_VERSION, ELEMENT_VERSION, METHODS, SUPPORTED_VERSIONS, rpc
from .state import ElementState


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
