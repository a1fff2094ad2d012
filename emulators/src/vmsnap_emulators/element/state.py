"""Persistent state of one emulated Element cluster.

All metadata (accounts, volumes, snapshots, group snapshots, async results, ID counters and
the block store's layer table) lives in one ``state.json``, replaced atomically after every
mutating call, so a crash leaves the previous or the next consistent state. Volume bytes live
in the copy-on-write :mod:`vmsnap_emulators.blockstore` under the same directory.

Callers hold :attr:`ElementState.lock` around every call (one cluster-wide lock: simple and
plenty fast for an emulator).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..atomicio import atomic_write_json, read_json, remove_stale_temps
from ..blockstore import DEFAULT_BLOCK_SIZE, LayerStore, VolumeDevice
from ..overwrites import Overwrites
from . import errors
from .errors import ElementError
from .model import (
    Account,
    AsyncResult,
    GroupSnapshot,
    Snapshot,
    Volume,
    default_qos,
    now_iso,
)

STATE_FILE = "state.json"
SIZE_GRANULARITY = 1 << 20  # the API rounds totalSize up to whole MiB
MAX_VOLUME_SIZE = 16 << 40
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def _int_keys(d: dict[str, Any]) -> dict[int, Any]:
    return {int(k): v for k, v in d.items()}


class ElementState:
    def __init__(
        self,
        root: Path,
        *,
        cluster_name: str,
        max_snapshots_per_volume: int = 32,
        async_delay: float = 0.0,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        self.root = root
        self.lock = threading.RLock()
        self.overwrites = Overwrites(root)
        self.max_snapshots = max_snapshots_per_volume
        self.async_delay = async_delay
        path = root / STATE_FILE
        remove_stale_temps(path)
        raw: dict[str, Any] = read_json(path) if path.exists() else {}
        self.cluster: dict[str, str] = raw.get("cluster") or {
            "name": cluster_name,
            "uniqueID": secrets.token_hex(2),
            "uuid": str(uuid.uuid4()),
        }
        self.next_ids: dict[str, int] = raw.get(
            "next", {"account": 1, "volume": 1, "snapshot": 1, "group": 1, "async": 1}
        )
        self.accounts = {k: Account(**v) for k, v in _int_keys(raw.get("accounts", {})).items()}
        self.volumes = {k: Volume(**v) for k, v in _int_keys(raw.get("volumes", {})).items()}
        self.snapshots = {k: Snapshot(**v) for k, v in _int_keys(raw.get("snapshots", {})).items()}
        self.groups = {k: GroupSnapshot(**v) for k, v in _int_keys(raw.get("groups", {})).items()}
        self.async_results = {
            k: AsyncResult(**v) for k, v in _int_keys(raw.get("async", {})).items()
        }
        block_size = int(raw.get("blockSize", block_size))
        self.layers = LayerStore(root, raw.get("layers", {}), block_size)
        if not path.exists():
            self.commit()
        self.layers.sweep()  # blocks orphaned by a crash mid-write

    # -- persistence -------------------------------------------------------------------
    def commit(self) -> None:
        atomic_write_json(
            self.root / STATE_FILE,
            {
                "cluster": self.cluster,
                "next": self.next_ids,
                "blockSize": self.layers.block_size,
                "accounts": {str(k): asdict(v) for k, v in self.accounts.items()},
                "volumes": {str(k): asdict(v) for k, v in self.volumes.items()},
                "snapshots": {str(k): asdict(v) for k, v in self.snapshots.items()},
                "groups": {str(k): asdict(v) for k, v in self.groups.items()},
                "async": {str(k): asdict(v) for k, v in self.async_results.items()},
                "layers": self.layers.table(),
            },
        )

    def _next(self, kind: str) -> int:
        value = self.next_ids[kind]
        self.next_ids[kind] = value + 1
        return value

    def _collect_and_commit(self) -> None:
        """Commit, then drop layers and blocks nothing refers to any more."""
        roots = {v.head for v in self.volumes.values()}
        roots.update(s.layer for s in self.snapshots.values())
        removed = self.layers.collect(roots)
        self.commit()
        if removed:
            self.layers.purge(removed)

    # -- lookups -----------------------------------------------------------------------
    def account(self, account_id: int) -> Account:
        acc = self.accounts.get(account_id)
        if acc is None:
            raise errors.account_not_found(account_id)
        return acc

    def volume(self, volume_id: int, *, allow_deleted: bool = False) -> Volume:
        vol = self.volumes.get(volume_id)
        if vol is None or (vol.status == "deleted" and not allow_deleted):
            raise errors.volume_not_found(volume_id)
        return vol

    def snapshot(self, snapshot_id: int) -> Snapshot:
        snap = self.snapshots.get(snapshot_id)
        if snap is None:
            raise errors.snapshot_not_found(snapshot_id)
        return snap

    def group(self, group_id: int) -> GroupSnapshot:
        grp = self.groups.get(group_id)
        if grp is None:
            raise errors.group_snapshot_not_found(group_id)
        return grp

    def snapshots_of(self, volume_id: int) -> list[Snapshot]:
        return [s for s in self.snapshots.values() if s.volumeID == volume_id]

    def volumes_of(self, account_id: int) -> list[int]:
        return [v.volumeID for v in self.volumes.values() if v.accountID == account_id]

    def device(self, volume_id: int) -> VolumeDevice:
        vol = self.volume(volume_id)
        return VolumeDevice(self.layers, vol.head, vol.totalSize)

    def snapshot_device(self, snapshot_id: int) -> VolumeDevice:
        """Read-only view of a snapshot's bytes (callers must not write through it)."""
        snap = self.snapshot(snapshot_id)
        return VolumeDevice(self.layers, snap.layer, snap.totalSize)

    # -- accounts ----------------------------------------------------------------------
    def add_account(
        self,
        username: str,
        attributes: dict[str, Any],
        initiator: str | None,
        target: str | None,
        enable_chap: bool,
    ) -> Account:
        if not username:
            raise errors.invalid("username must not be empty.")
        if any(a.username == username for a in self.accounts.values()):
            raise ElementError("xDuplicateUsername", f"Username {username} already exists.")
        acc = Account(
            accountID=self._next("account"),
            username=username,
            status="active",
            attributes=attributes,
            initiatorSecret=initiator or secrets.token_urlsafe(9)[:12],
            targetSecret=target or secrets.token_urlsafe(9)[:12],
            enableChap=enable_chap,
        )
        self.accounts[acc.accountID] = acc
        self.commit()
        return acc

    # -- volumes -----------------------------------------------------------------------
    @staticmethod
    def _check_size(size: int) -> int:
        if size < 1 or size > MAX_VOLUME_SIZE:
            raise errors.invalid(f"totalSize must be between 1 and {MAX_VOLUME_SIZE} bytes.")
        return -(-size // SIZE_GRANULARITY) * SIZE_GRANULARITY

    @staticmethod
    def _check_name(name: str) -> None:
        if not _VOLUME_NAME.match(name):
            raise errors.invalid(
                "Volume name must be 1 to 64 characters: letters, digits and dashes."
            )

    def create_volume(
        self,
        name: str,
        account_id: int,
        size: int,
        *,
        enable512e: bool,
        attributes: dict[str, Any],
        qos: dict[str, Any] | None,
        access: str,
        parent_layer: str | None = None,
    ) -> Volume:
        self._check_name(name)
        self.account(account_id)
        vol = Volume(
            volumeID=self._next("volume"),
            name=name,
            accountID=account_id,
            totalSize=self._check_size(size),
            enable512e=enable512e,
            access=access,
            attributes=attributes,
            qos={**default_qos(), **(qos or {})},
            createTime=now_iso(),
            volumeUUID=str(uuid.uuid4()),
            head=self.layers.create(parent_layer),
        )
        self.volumes[vol.volumeID] = vol
        self.commit()
        return vol

    def modify_volume(
        self,
        vol: Volume,
        *,
        size: int | None,
        attributes: dict[str, Any] | None,
        account_id: int | None,
        access: str | None,
        qos: dict[str, Any] | None,
    ) -> None:
        if size is not None:
            new_size = self._check_size(size)
            if new_size < vol.totalSize:
                raise errors.invalid("totalSize can only grow (shrinking is not supported).")
            vol.totalSize = new_size
        if attributes is not None:
            vol.attributes = attributes
        if account_id is not None:
            self.account(account_id)
            vol.accountID = account_id
        if access is not None:
            vol.access = access
        if qos is not None:
            vol.qos = {**vol.qos, **qos}
        self.commit()

    def delete_volume(self, vol: Volume) -> None:
        """Soft delete, as on the array: restorable until purged."""
        vol.status = "deleted"
        vol.deleteTime = now_iso()
        purge = time.time() + 8 * 3600
        vol.purgeTime = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(purge))
        self.commit()

    def restore_volume(self, vol: Volume) -> None:
        vol.status = "active"
        vol.deleteTime = ""
        vol.purgeTime = ""
        self.commit()

    def purge_volume(self, vol: Volume) -> None:
        for snap in self.snapshots_of(vol.volumeID):
            self._drop_snapshot(snap)
        del self.volumes[vol.volumeID]
        self._collect_and_commit()

    def clone_volume(
        self,
        src: Volume,
        snap: Snapshot | None,
        name: str,
        account_id: int,
        size: int | None,
        access: str,
        attributes: dict[str, Any],
    ) -> Volume:
        """A new volume sharing the source's blocks (metadata only)."""
        if snap is None:
            frozen, src.head = self.layers.freeze(src.head)
        else:
            frozen = snap.layer
        base_size = snap.totalSize if snap else src.totalSize
        new_size = base_size if size is None else size
        if new_size < base_size:
            raise errors.invalid("newSize must not be smaller than the source volume.")
        return self.create_volume(
            name,
            account_id,
            new_size,
            enable512e=src.enable512e,
            attributes=attributes,
            qos=src.qos,
            access=access,
            parent_layer=frozen,
        )

    # -- snapshots ---------------------------------------------------------------------
    def _check_limit(self, volume_ids: list[int]) -> None:
        for vid in volume_ids:
            if len(self.snapshots_of(vid)) >= self.max_snapshots:
                raise errors.snapshot_limit(vid, self.max_snapshots)

    def _new_snapshot(
        self,
        vol: Volume,
        name: str | None,
        attributes: dict[str, Any],
        source: Snapshot | None = None,
        group: GroupSnapshot | None = None,
        create_time: str | None = None,
    ) -> Snapshot:
        if source is not None:
            layer, size = source.layer, source.totalSize
        else:
            layer, vol.head = self.layers.freeze(vol.head)
            size = vol.totalSize
        created = create_time or now_iso()
        snap = Snapshot(
            snapshotID=self._next("snapshot"),
            volumeID=vol.volumeID,
            name=name or created,
            layer=layer,
            totalSize=size,
            createTime=created,
            snapshotUUID=str(uuid.uuid4()),
            attributes=attributes,
        )
        if group is not None:
            snap.groupID = group.groupSnapshotID
            snap.groupSnapshotUUID = group.groupSnapshotUUID
            group.members.append(snap.snapshotID)
        self.snapshots[snap.snapshotID] = snap
        return snap

    def create_snapshot(
        self,
        vol: Volume,
        name: str | None,
        attributes: dict[str, Any],
        source: Snapshot | None,
        expiration: str | None,
        label: str | None,
    ) -> Snapshot:
        if source is not None and source.volumeID != vol.volumeID:
            raise errors.invalid(
                f"SnapshotID {source.snapshotID} is not a snapshot of volume {vol.volumeID}."
            )
        self._check_limit([vol.volumeID])
        snap = self._new_snapshot(vol, name, attributes, source)
        snap.expirationTime = expiration
        snap.snapMirrorLabel = label
        self.commit()
        return snap

    def _drop_snapshot(self, snap: Snapshot) -> None:
        del self.snapshots[snap.snapshotID]
        grp = self.groups.get(snap.groupID)
        if grp is not None:
            grp.members = [m for m in grp.members if m != snap.snapshotID]
            if not grp.members:
                del self.groups[grp.groupSnapshotID]

    def delete_snapshot(self, snap: Snapshot) -> None:
        self._drop_snapshot(snap)
        self._collect_and_commit()

    def rollback(
        self,
        vol: Volume,
        snap: Snapshot,
        save: bool,
        name: str | None,
        attributes: dict[str, Any],
    ) -> Snapshot | None:
        if snap.volumeID != vol.volumeID:
            raise errors.invalid(
                f"SnapshotID {snap.snapshotID} is not a snapshot of volume {vol.volumeID}."
            )
        saved = None
        if save:
            self._check_limit([vol.volumeID])
            saved = self._new_snapshot(vol, name, attributes)
        self.overwrites.record("RollbackToSnapshot", volumes=[vol.volumeID])
        vol.head = self.layers.create(snap.layer)
        vol.totalSize = snap.totalSize
        self._collect_and_commit()
        return saved

    # -- group snapshots ---------------------------------------------------------------
    def _check_group_volumes(self, volume_ids: list[int]) -> list[Volume]:
        if not volume_ids:
            raise errors.invalid("volumes must list at least one volume.")
        if len(set(volume_ids)) != len(volume_ids):
            raise errors.invalid("volumes must not contain duplicates.")
        vols = [self.volume(v) for v in volume_ids]
        self._check_limit(volume_ids)
        return vols

    def _new_group(
        self, vols: list[Volume], name: str | None, attributes: dict[str, Any]
    ) -> GroupSnapshot:
        created = now_iso()
        grp = GroupSnapshot(
            groupSnapshotID=self._next("group"),
            groupSnapshotUUID=str(uuid.uuid4()),
            name=name or created,
            createTime=created,
            attributes=attributes,
        )
        self.groups[grp.groupSnapshotID] = grp
        # All members are frozen under the one state lock: no write lands in between, so
        # the group is crash-consistent across its volumes, as on the array.
        for vol in vols:
            self._new_snapshot(vol, grp.name, attributes, group=grp, create_time=created)
        return grp

    def create_group(
        self,
        volume_ids: list[int],
        name: str | None,
        attributes: dict[str, Any],
        expiration: str | None,
        label: str | None,
    ) -> GroupSnapshot:
        grp = self._new_group(self._check_group_volumes(volume_ids), name, attributes)
        grp.expirationTime = expiration
        grp.snapMirrorLabel = label
        for sid in grp.members:
            self.snapshots[sid].expirationTime = expiration
            self.snapshots[sid].snapMirrorLabel = label
        self.commit()
        return grp

    def delete_group(self, grp: GroupSnapshot, save_members: bool) -> None:
        for sid in list(grp.members):
            snap = self.snapshots[sid]
            if save_members:
                snap.groupID = 0
                snap.groupSnapshotUUID = "00000000-0000-0000-0000-000000000000"
            else:
                del self.snapshots[sid]
        self.groups.pop(grp.groupSnapshotID, None)
        self._collect_and_commit()

    def rollback_group(
        self, grp: GroupSnapshot, save: bool, name: str | None, attributes: dict[str, Any]
    ) -> GroupSnapshot | None:
        members = [self.snapshots[sid] for sid in grp.members]
        vols = [self.volume(s.volumeID) for s in members]
        saved = None
        if save:
            saved = self._new_group(
                self._check_group_volumes([v.volumeID for v in vols]), name, attributes
            )
        self.overwrites.record("RollbackToGroupSnapshot", volumes=[v.volumeID for v in vols])
        for vol, snap in zip(vols, members, strict=True):
            vol.head = self.layers.create(snap.layer)
            vol.totalSize = snap.totalSize
        self._collect_and_commit()
        return saved

    # -- async results -----------------------------------------------------------------
    def add_async(
        self, result_type: str, result: dict[str, Any], details: dict[str, Any]
    ) -> AsyncResult:
        res = AsyncResult(
            asyncHandle=self._next("async"),
            resultType=result_type,
            createTime=now_iso(),
            complete_at=time.time() + self.async_delay,
            result=result,
            details=details,
        )
        self.async_results[res.asyncHandle] = res
        self.commit()
        return res
