"""The SolidFire / Element storage driver.

A VM snapshot is one Element **group snapshot** of the VM's volumes on this
cluster: the cluster cuts every member at the same instant, so the result is
crash consistent without freezing the VM (CAPABILITY_CONSISTENT_GROUP). The
group carries the host's ids in its ``attributes`` (see ``_tags``), which is how
every call finds it again: a retry of a take returns the group it made, a
delete by id alone finds what a failed take left, and a list shows the host its
orphans. Revert is RollbackToGroupSnapshot, which can keep the current state as
a new group snapshot: the undo the host asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from solidfire.models import CloneMultipleVolumeParams

from vmsnap_driver_solidfire import _clones as clones
from vmsnap_driver_solidfire._array import ElementArray
from vmsnap_driver_solidfire._config import Config
from vmsnap_driver_solidfire._fixture import EmulatorData
from vmsnap_driver_solidfire._tags import Tag, locator, parse_locator
from vmsnap_sdk import (
    VM,
    Capability,
    CloneRequest,
    Consistency,
    DriverInfo,
    Limits,
    Operation,
    Page,
    Priority,
    ProbeResult,
    RevertRequest,
    RevertResult,
    SnapshotPage,
    SnapshotResult,
    StorageDriver,
    TakeRequest,
    UnmanagedPage,
    UnmanagedSnapshot,
    VMState,
    Volume,
    VolumeDecision,
    VolumeSnapshot,
    current_call,
    fixture_disk_name,
)
from vmsnap_sdk.blocks import BlockMetadataType, BlockPage, BlockRange, SnapshotRef
from vmsnap_sdk.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unimplemented,
    VMSnapError,
)
from vmsnap_sdk.toolkit import KeyLocks

__version__ = "0.1.0"

log = logging.getLogger("vmsnap.driver.solidfire")

DRIVER_NAME = "com.netapp.solidfire"
#: Element keeps at most 32 snapshots per volume.
MAX_SNAPSHOTS_PER_VOLUME = 32
#: Metadata key of a group snapshot listed by ListUnmanagedSnapshots: once adopted,
#: revert and delete find it by its handle and UUID (it carries no tag).
ADOPTED = "adopted"
#: Kept small so that the disks map fits the cluster's 1000-byte attribute limit.
MAX_VOLUMES_PER_SNAPSHOT = 16


class SolidFireDriver(StorageDriver):
    """vmsnap driver for one Element cluster."""

    def __init__(self, config: Config, array: ElementArray | None = None) -> None:
        self.config = config
        self.array = array or ElementArray(config)
        self._cluster = config.cluster
        # One take/revert/delete per vm_snapshot_id at a time in this process, so
        # that two concurrent retries cannot both create a group snapshot.
        self._lock = KeyLocks()
        #: Group snapshot creations whose caller stopped waiting (its deadline) while
        #: the array call went on, by vm_snapshot_id: a retry waits for the array's
        #: answer before it looks, or it would create a second group snapshot.
        self._abandoned: dict[str, asyncio.Future[Any]] = {}
        self._fixture = EmulatorData(config) if config.conformance_fixture else None

    # --- identity and health -------------------------------------------------------

    async def get_info(self) -> DriverInfo:
        capabilities = {
            Capability.REVERT,
            Capability.REVERT_UNDO,
            Capability.CONSISTENT_GROUP,
            Capability.LIST,
            Capability.CLONE_VOLUMES,
            Capability.LIST_UNMANAGED,
        }
        if self._fixture is not None:
            capabilities.add(Capability.CONFORMANCE_FIXTURE)
            # The real Element API has no changed-block call and reads snapshots only
            # through StartBulkVolumeRead's whole-volume sessions: both capabilities
            # use the emulator's block map, so they come with the emulator only.
            capabilities.update({Capability.CHANGED_BLOCKS, Capability.READ_SNAPSHOT})
        labels = {"array": self.config.url, "api_version": self.config.api_version}
        if self._cluster:
            labels["cluster"] = self._cluster
        return DriverInfo(
            name=DRIVER_NAME,
            vendor_version=__version__,
            capabilities=frozenset(capabilities),
            limits=Limits(
                max_volumes_per_snapshot=MAX_VOLUMES_PER_SNAPSHOT,
                max_snapshots_per_volume=MAX_SNAPSHOTS_PER_VOLUME,
                max_concurrent_calls=0,
            ),
            labels=labels,
        )

    async def probe(self) -> ProbeResult:
        try:
            name = await self._cluster_info_name()
        except VMSnapError as exc:
            return ProbeResult(ready=False, message=exc.message)
        if self.config.cluster and name != self.config.cluster:
            return ProbeResult(
                ready=False,
                message=f"the cluster at {self.config.url} is {name!r}, "
                f"not the configured {self.config.cluster!r}",
            )
        return ProbeResult(ready=True, message=f"Element cluster {name} at {self.config.url}")

    async def _cluster_info_name(self) -> str:
        info = await self.array.call(
            "read cluster info", lambda sf: sf.get_cluster_info().cluster_info
        )
        return str(info.name)

    async def cluster(self) -> str:
        """The cluster name in locators: configured, or asked once from the cluster."""
        if not self._cluster:
            self._cluster = await self._cluster_info_name()
        return self._cluster

    # --- CanHandle -----------------------------------------------------------------

    async def can_handle(
        self,
        vm: VM,
        volumes: Sequence[Volume],
        operation: Operation,
        options: Mapping[str, str],
    ) -> Sequence[VolumeDecision]:
        try:
            cluster = await self.cluster()
        except VMSnapError as exc:
            # Without the cluster name no locator can be matched; say why, do not fail.
            return [
                VolumeDecision(v.disk, Priority.CANT_HANDLE, f"cluster unknown: {exc.message}")
                for v in volumes
            ]
        decisions = []
        for v in volumes:
            parsed = parse_locator(v.locator)
            if parsed is None:
                decision = VolumeDecision(
                    v.disk, Priority.CANT_HANDLE, f"{v.locator} is not an element:// volume"
                )
            elif parsed.cluster != cluster:
                decision = VolumeDecision(
                    v.disk,
                    Priority.CANT_HANDLE,
                    f"volume {parsed.volume_id} is on cluster {parsed.cluster}, "
                    f"this driver serves {cluster}",
                )
            else:
                decision = VolumeDecision(
                    v.disk, Priority.PLUGIN, f"volume {parsed.volume_id} is on cluster {cluster}"
                )
            decisions.append(decision)
        return decisions

    # --- take ----------------------------------------------------------------------

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        cluster = await self.cluster()
        disks = self._volume_ids(request.volumes, cluster)
        tag = Tag(
            vm_snapshot_id=request.vm_snapshot_id,
            vm_id=request.vm.id,
            name=request.vm_snapshot_name,
            disks=disks,
        )
        action = f"take snapshot {request.vm_snapshot_id}"
        async with self._lock(request.vm_snapshot_id):
            await self._settled(request.vm_snapshot_id, action)
            existing = await self._find(request.vm_snapshot_id, action)
            if existing:
                group, found = existing[0]
                if dict(found.disks) != dict(disks) or found.vm_id != request.vm.id:
                    raise AlreadyExists(
                        f"snapshot {request.vm_snapshot_id} exists on cluster {cluster} "
                        f"for VM {found.vm_id} with volumes {sorted(found.disks)}, "
                        f"not for VM {request.vm.id} with {sorted(disks)}"
                    )
                return self._result(group, found, cluster, request.volumes)
            volume_ids = list(disks)
            result = await self.array.call(
                action,
                lambda sf: sf.create_group_snapshot(
                    volumes=volume_ids,
                    name=_snapshot_name(request.vm_snapshot_id),
                    attributes=tag.attributes(),
                ),
                abandoned=functools.partial(self._abandon, request.vm_snapshot_id),
            )
            log.info(
                "group snapshot created",
                extra={
                    "fields": {
                        "vm_snapshot_id": request.vm_snapshot_id,
                        "group_snapshot_id": result.group_snapshot_id,
                        "volumes": volume_ids,
                    }
                },
            )
            return self._result(result.group_snapshot, tag, cluster, request.volumes)

    def _abandon(self, key: str, creation: asyncio.Future[Any]) -> None:
        """Keep a creation whose caller stopped waiting (``key``: the snapshot id, or
        ``clone:`` and the clone id) until it ends."""
        self._abandoned[key] = creation

        def ended(_: asyncio.Future[Any]) -> None:
            if self._abandoned.get(key) is creation:
                del self._abandoned[key]

        creation.add_done_callback(ended)

    async def _settled(self, key: str, action: str) -> None:
        """Wait, within the caller's deadline, for an earlier attempt's creation that
        its caller abandoned: a group snapshot (Element names need not be unique:
        were this attempt to look before that one lands, it would make a second
        group snapshot), or a clone's volumes (a second set, tagged alike).
        Still running at the deadline: ABORTED, retry."""
        creation = self._abandoned.get(key)
        if creation is None or creation.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(creation), current_call().time_remaining())
        except TimeoutError:
            raise Aborted(
                f"{action}: an earlier attempt is still running on the array; retry"
            ) from None
        except Exception:  # noqa: BLE001 - its outcome is the array's, read by _find
            pass

    def _volume_ids(self, volumes: Sequence[Volume], cluster: str) -> dict[int, str]:
        """volume id → disk, in request order; every volume must be on this cluster."""
        disks: dict[int, str] = {}
        for i, v in enumerate(volumes):
            parsed = parse_locator(v.locator)
            if parsed is None:
                # Not an Element volume: unknown to this driver, like a volume of
                # another cluster (the host sent it to the wrong driver).
                raise NotFound(
                    f"volume {v.locator} is not an element://<cluster>/<volumeID> volume",
                    reason="VOLUME_NOT_HERE",
                )
            if parsed.cluster != cluster:
                raise NotFound(
                    f"volume {v.locator} is not on cluster {cluster}", reason="VOLUME_NOT_HERE"
                )
            if parsed.volume_id in disks:
                raise InvalidArgument.for_field(
                    f"volumes[{i}].locator", f"volume {parsed.volume_id} is given twice"
                )
            disks[parsed.volume_id] = v.disk
        if len(disks) > MAX_VOLUMES_PER_SNAPSHOT:
            raise InvalidArgument.for_field(
                "volumes", f"at most {MAX_VOLUMES_PER_SNAPSHOT} volumes per snapshot"
            )
        return disks

    # --- get, revert, delete, list -------------------------------------------------

    async def get_snapshot(self, vm_snapshot_id: str) -> SnapshotResult:
        cluster = await self.cluster()
        found = await self._find(vm_snapshot_id, f"get snapshot {vm_snapshot_id}")
        if not found:
            raise NotFound(f"no snapshot {vm_snapshot_id} on cluster {cluster}")
        return self._result(*found[0], cluster)

    async def revert_snapshot(self, request: RevertRequest) -> RevertResult:
        cluster = await self.cluster()
        action = f"revert to snapshot {request.vm_snapshot_id}"
        if request.vm.state in (VMState.RUNNING, VMState.PAUSED):
            raise FailedPrecondition(
                f"{action}: VM {request.vm.id} is {request.vm.state.name.lower()}; "
                "its volumes are in use: stop it first",
                reason="VM_NOT_STOPPED",
            )
        undo_id = request.undo_vm_snapshot_id
        if request.save_current_state and not undo_id:
            raise InvalidArgument.for_field(
                "undo_vm_snapshot_id", "is required with save_current_state"
            )
        async with self._lock(request.vm_snapshot_id):
            found = await self._find(request.vm_snapshot_id, action) or await self._adopted(
                request.vm_snapshot_id, request.snapshot, request.vm.id, cluster, action
            )
            if not found:
                raise NotFound(
                    f"{action}: no snapshot {request.vm_snapshot_id} on cluster {cluster}"
                )
            group, tag = found[0]
            group_id = int(group.group_snapshot_id)
            if not request.save_current_state:
                await self.array.call(
                    action,
                    lambda sf: sf.rollback_to_group_snapshot(
                        group_snapshot_id=group_id, save_current_state=False
                    ),
                )
                return RevertResult()
            async with self._lock(undo_id):
                # A retry after the cluster did roll back: the undo exists, the
                # volumes are already at the snapshot. Rolling back again would
                # make a second undo of the already-reverted state.
                done = await self._find(undo_id, action)
                if done:
                    return RevertResult(undo=self._result(*done[0], cluster))
                undo_tag = Tag(undo_id, tag.vm_id, f"undo of {tag.vm_snapshot_id}", tag.disks)
                saved = await self.array.call(
                    action,
                    lambda sf: sf.rollback_to_group_snapshot(
                        group_snapshot_id=group_id,
                        save_current_state=True,
                        name=_snapshot_name(undo_id),
                        attributes=undo_tag.attributes(),
                    ),
                )
                return RevertResult(undo=self._result(saved.group_snapshot, undo_tag, cluster))

    async def delete_snapshot(self, vm_snapshot_id: str, snapshot: SnapshotResult | None) -> None:
        action = f"delete snapshot {vm_snapshot_id}"
        async with self._lock(vm_snapshot_id):
            # By tag, not by the handles: after a failed take the host has none, and
            # a handle alone could name a group that is not ours. An adopted group has
            # no tag: it is found by the handle *and* the UUID it was listed with.
            found = await self._find(vm_snapshot_id, action)
            if not found and snapshot is not None:
                cluster = await self.cluster()
                found = await self._adopted(vm_snapshot_id, snapshot, "", cluster, action)
            for group, _tag in found:
                group_id = int(group.group_snapshot_id)
                # NOT_FOUND: deleted meanwhile, the outcome the caller wants.
                with contextlib.suppress(NotFound):
                    await self.array.call(action, _delete_group(group_id))
                log.info(
                    "group snapshot deleted",
                    extra={"fields": {"vm_snapshot_id": vm_snapshot_id, "group": group_id}},
                )

    async def list_snapshots(self, page: Page, vm_id: str = "") -> SnapshotPage:
        cluster = await self.cluster()
        after = _parse_token(page.token)
        groups = await self._tagged("list snapshots")
        # Stable order: group snapshot ids only grow, so "after id N" survives
        # deletions and creations between pages.
        chosen = [
            (g, t)
            for g, t in groups
            if int(g.group_snapshot_id) > after and (not vm_id or t.vm_id == vm_id)
        ]
        chosen.sort(key=lambda gt: int(gt[0].group_snapshot_id))
        items = chosen[: page.size]
        token = ""
        if len(chosen) > page.size:
            token = f"after:{int(items[-1][0].group_snapshot_id)}"
        return SnapshotPage(tuple(self._result(g, t, cluster) for g, t in items), token)

    # --- changed blocks and snapshot reads (the emulator's block map) -------------

    async def get_allocated(
        self, snapshot: SnapshotRef, starting_offset: int, max_results: int
    ) -> BlockPage:
        fixture = self._blocks_or_raise()
        snapshot_id = await self._snapshot_id("snapshot", snapshot)
        answer = await fixture.blocks(snapshot_id, None, starting_offset, max_results)
        return _block_page(answer)

    async def get_delta(
        self, base: SnapshotRef, target: SnapshotRef, starting_offset: int, max_results: int
    ) -> BlockPage:
        fixture = self._blocks_or_raise()
        base_id = await self._snapshot_id("base", base)
        target_id = await self._snapshot_id("target", target)
        answer = await fixture.blocks(target_id, base_id, starting_offset, max_results)
        return _block_page(answer)

    async def read_snapshot(self, snapshot: SnapshotRef, offset: int, length: int) -> bytes:
        fixture = self._blocks_or_raise()
        return await fixture.read_snapshot(
            await self._snapshot_id("snapshot", snapshot), offset, length
        )

    def _blocks_or_raise(self) -> EmulatorData:
        if self._fixture is None:
            raise Unimplemented(
                "changed blocks and snapshot reads need the emulator's block map "
                "(the driver runs with conformance_fixture against the emulator only)"
            )
        return self._fixture

    async def _snapshot_id(self, field: str, ref: SnapshotRef) -> int:
        """The Element snapshot id in a volume snapshot's handle (the member's id)."""
        await self._fixture_volume(ref.volume.locator)
        if not ref.volume.handle.isdigit():
            raise InvalidArgument.for_field(
                f"{field}.volume_snapshot.handle", "is no Element snapshot id (digits)"
            )
        return int(ref.volume.handle)

    # --- clone to a new VM -----------------------------------------------------------

    async def clone_volumes(self, request: CloneRequest) -> Sequence[Volume]:
        cluster = await self.cluster()
        action = f"clone snapshot {request.vm_snapshot_id} as {request.clone_id}"
        async with self._lock(f"clone:{request.clone_id}"):
            await self._settled(f"clone:{request.clone_id}", action)
            existing = [
                c for c in await clones.find(self.array, request.clone_id, action) if not c.deleted
            ]
            wanted = {t.disk for t in request.targets}
            if existing:
                have = {c.tag.disk for c in existing}
                same = all(
                    c.tag.vm_snapshot_id == request.vm_snapshot_id
                    and c.tag.vm_id == request.new_vm_id
                    for c in existing
                )
                if not same or not have <= wanted:
                    raise AlreadyExists(
                        f"clone {request.clone_id} exists on cluster {cluster} from snapshot "
                        f"{existing[0].tag.vm_snapshot_id} for VM {existing[0].tag.vm_id} "
                        f"with disks {sorted(have)}; use a new clone_id",
                        reason="CLONE_ID_REUSED",
                    )
                names = {t.disk: t.name for t in request.targets}
                if have == wanted and all(names[c.tag.disk] == c.name for c in existing):
                    return self._clone_result(request, existing, cluster)
                if have == wanted:
                    raise AlreadyExists(
                        f"clone {request.clone_id} exists on cluster {cluster} with other "
                        "volume names; use a new clone_id",
                        reason="CLONE_ID_REUSED",
                    )
                # Fewer than asked: left by an interrupted call; made again whole, at
                # the group's instant.
                await self._delete_clones(existing, action)
            found = await self._find(request.vm_snapshot_id, action)
            if not found:
                raise NotFound(
                    f"{action}: no snapshot {request.vm_snapshot_id} on cluster {cluster}"
                )
            group, tag = found[0]
            volume_of = {disk: volume_id for volume_id, disk in tag.disks.items()}
            params = [
                CloneMultipleVolumeParams(
                    volume_id=volume_of[t.disk],
                    name=t.name,
                    attributes=clones.CloneTag(
                        request.clone_id, request.vm_snapshot_id, request.new_vm_id, t.disk
                    ).attributes(),
                )
                for t in request.targets
            ]
            group_id = int(group.group_snapshot_id)
            result = await self.array.call(
                action,
                lambda sf: sf.clone_multiple_volumes(params, group_snapshot_id=group_id),
                abandoned=functools.partial(self._abandon, f"clone:{request.clone_id}"),
            )
            await clones.wait_async(
                self.array, int(result.async_handle), action, self.config.call_timeout
            )
            made = await clones.find(self.array, request.clone_id, action)
            log.info(
                "volumes cloned",
                extra={
                    "fields": {
                        "clone_id": request.clone_id,
                        "vm_snapshot_id": request.vm_snapshot_id,
                        "group_clone_id": result.group_clone_id,
                    }
                },
            )
            return self._clone_result(request, [c for c in made if not c.deleted], cluster)

    async def delete_cloned_volumes(self, clone_id: str) -> None:
        action = f"delete clone {clone_id}"
        async with self._lock(f"clone:{clone_id}"):
            await self._delete_clones(await clones.find(self.array, clone_id, action), action)

    async def _delete_clones(self, found: Sequence[clones.ClonedVolume], action: str) -> None:
        for volume in found:
            volume_id = volume.volume_id
            if not volume.deleted:
                with contextlib.suppress(NotFound):
                    await self.array.call(action, _volume_call("delete_volume", volume_id))
            # Purged at once: a compensated clone leaves nothing on the cluster.
            with contextlib.suppress(NotFound):
                await self.array.call(action, _volume_call("purge_deleted_volume", volume_id))
            log.info(
                "cloned volume deleted",
                extra={"fields": {"clone_id": volume.tag.clone_id, "volume": volume_id}},
            )

    @staticmethod
    def _clone_result(
        request: CloneRequest, made: Sequence[clones.ClonedVolume], cluster: str
    ) -> list[Volume]:
        by_disk = {c.tag.disk: c for c in made}
        missing = [t.disk for t in request.targets if t.disk not in by_disk]
        if missing:
            raise NotFound(
                f"the clones of disks {missing} ({request.clone_id}) vanished from "
                f"cluster {cluster} while being made"
            )
        return [
            Volume(
                disk=t.disk,
                locator=locator(cluster, by_disk[t.disk].volume_id),
                size_bytes=by_disk[t.disk].size,
            )
            for t in request.targets
        ]

    # --- adopt: group snapshots no vmsnap host made ---------------------------------

    async def list_unmanaged_snapshots(
        self, volumes: Sequence[Volume], page: Page
    ) -> UnmanagedPage:
        """Untagged group snapshots whose members are all among ``volumes``
        (ListGroupSnapshots only: nothing on the cluster changes). Snapshots of a
        single volume outside any group are not listed (not offered yet)."""
        cluster = await self.cluster()
        after = _parse_token(page.token)
        wanted: dict[int, Volume] = {}
        for v in volumes:
            parsed = parse_locator(v.locator)
            if parsed is not None and parsed.cluster == cluster:
                wanted[parsed.volume_id] = v
        if not wanted:
            return UnmanagedPage(())
        ids = sorted(wanted)
        groups = await self.array.call(
            "list unmanaged snapshots",
            lambda sf: sf.list_group_snapshots(volumes=ids).group_snapshots,
        )
        chosen = []
        for group in groups:
            members = [int(m.volume_id) for m in group.members]
            if (
                int(group.group_snapshot_id) <= after
                or Tag.from_attributes(group.attributes) is not None
                or not members
                or not set(members) <= set(wanted)
            ):
                continue
            chosen.append(group)
        chosen.sort(key=lambda g: int(g.group_snapshot_id))
        items = chosen[: page.size]
        token = f"after:{int(items[-1].group_snapshot_id)}" if len(chosen) > page.size else ""
        return UnmanagedPage(tuple(self._unmanaged(g, wanted, cluster) for g in items), token)

    def _unmanaged(
        self, group: Any, wanted: Mapping[int, Volume], cluster: str
    ) -> UnmanagedSnapshot:
        rank = {vid: i for i, vid in enumerate(wanted)}
        members = sorted(group.members, key=lambda m: rank[int(m.volume_id)])
        return UnmanagedSnapshot(
            id=str(group.group_snapshot_id),
            name=str(group.name or "")[:255],
            create_time=_parse_time(group.create_time),
            volume_snapshots=tuple(
                VolumeSnapshot(
                    disk=wanted[int(m.volume_id)].disk,
                    locator=wanted[int(m.volume_id)].locator,
                    handle=str(m.snapshot_id),
                    size_bytes=int(m.total_size or 0),
                )
                for m in members
            ),
            consistent_group=True,
            group_handle=str(group.group_snapshot_id),
            metadata={
                "cluster": cluster,
                "group_snapshot_uuid": str(group.group_snapshot_uuid),
                ADOPTED: "group",
            },
        )

    async def _adopted(
        self,
        vm_snapshot_id: str,
        snapshot: SnapshotResult,
        vm_id: str,
        cluster: str,
        action: str,
    ) -> list[tuple[Any, Tag]]:
        """The group an adopted snapshot names (its handle and UUID as listed),
        still untagged; with a tag made up from the stored result."""
        if snapshot.metadata.get(ADOPTED) != "group" or not snapshot.group_handle.isdigit():
            return []
        group_id = int(snapshot.group_handle)
        groups = await self.array.call(
            action, lambda sf: sf.list_group_snapshots(group_snapshot_id=group_id).group_snapshots
        )
        disks: dict[int, str] = {}
        for v in snapshot.volume_snapshots:
            parsed = parse_locator(v.locator)
            if parsed is not None:
                disks[parsed.volume_id] = v.disk
        return [
            (g, Tag(vm_snapshot_id, vm_id or snapshot.vm_id, "adopted", disks))
            for g in groups
            if int(g.group_snapshot_id) == group_id
            and str(g.group_snapshot_uuid) == snapshot.metadata.get("group_snapshot_uuid")
            and Tag.from_attributes(g.attributes) is None
        ]

    # --- ConformanceFixture --------------------------------------------------------

    async def create_test_volume(self, name: str, size_bytes: int) -> Volume:
        fixture = self._fixture_or_raise()
        cluster = await self.cluster()
        volume_id, size = await fixture.create_volume(self.array, name, size_bytes)
        return Volume(
            disk=fixture_disk_name(name), locator=locator(cluster, volume_id), size_bytes=size
        )

    async def delete_test_volume(self, locator: str) -> None:
        fixture = self._fixture_or_raise()
        await fixture.delete_volume(self.array, await self._fixture_volume(locator))

    async def write_volume(self, locator: str, offset: int, data: bytes) -> None:
        fixture = self._fixture_or_raise()
        await fixture.write(await self._fixture_volume(locator), offset, data)

    async def read_volume(self, locator: str, offset: int, length: int) -> bytes:
        fixture = self._fixture_or_raise()
        return await fixture.read(await self._fixture_volume(locator), offset, length)

    def _fixture_or_raise(self) -> EmulatorData:
        if self._fixture is None:
            raise FailedPrecondition("the ConformanceFixture service is not enabled")
        return self._fixture

    async def _fixture_volume(self, value: str) -> int:
        parsed = parse_locator(value)
        cluster = await self.cluster()
        if parsed is None:
            raise InvalidArgument.for_field("locator", "must be element://<cluster>/<volumeID>")
        if parsed.cluster != cluster:
            raise NotFound(f"volume {value} is not on cluster {cluster}")
        return parsed.volume_id

    # --- helpers -------------------------------------------------------------------

    async def _tagged(self, action: str) -> list[tuple[Any, Tag]]:
        """Every group snapshot on the cluster that carries a vmsnap tag."""
        groups = await self.array.call(action, lambda sf: sf.list_group_snapshots().group_snapshots)
        tagged = []
        for group in groups:
            tag = Tag.from_attributes(group.attributes)
            if tag is not None:
                tagged.append((group, tag))
        return tagged

    async def _find(self, vm_snapshot_id: str, action: str) -> list[tuple[Any, Tag]]:
        """The group snapshot(s) tagged with the id: normally none or one."""
        return [(g, t) for g, t in await self._tagged(action) if t.vm_snapshot_id == vm_snapshot_id]

    def _result(
        self, group: Any, tag: Tag, cluster: str, order: Sequence[Volume] = ()
    ) -> SnapshotResult:
        """The result of a group snapshot: volumes in ``order`` (a take's request
        order, so that a retry answers exactly the same), else by disk name."""
        members = {int(m.volume_id): m for m in group.members}
        rank = {v.disk: i for i, v in enumerate(order)}
        entries = sorted(tag.disks.items(), key=lambda kv: (rank.get(kv[1], len(rank)), kv[1]))
        volume_snapshots = []
        for volume_id, disk in entries:
            member = members.get(volume_id)
            volume_snapshots.append(
                VolumeSnapshot(
                    disk=disk,
                    locator=locator(cluster, volume_id),
                    handle=str(member.snapshot_id) if member is not None else "",
                    size_bytes=int(member.total_size or 0) if member is not None else 0,
                )
            )
        return SnapshotResult(
            vm_snapshot_id=tag.vm_snapshot_id,
            volume_snapshots=tuple(volume_snapshots),
            ready=True,
            consistency=Consistency.CRASH,
            needs_unquiesce=False,
            group_handle=str(group.group_snapshot_id),
            metadata={"cluster": cluster, "group_snapshot_uuid": str(group.group_snapshot_uuid)},
            create_time=_parse_time(group.create_time),
            vm_id=tag.vm_id,
        )


def _block_page(answer: Mapping[str, Any]) -> BlockPage:
    return BlockPage(
        ranges=tuple(BlockRange(int(o), int(n)) for o, n in answer["ranges"]),
        block_size=int(answer["blockSize"]),
        capacity_bytes=int(answer["totalSize"]),
        kind=BlockMetadataType.VARIABLE_LENGTH,
        done=not answer["more"],
    )


def _delete_group(group_id: int) -> Callable[[Any], object]:
    return lambda sf: sf.delete_group_snapshot(group_snapshot_id=group_id, save_members=False)


def _volume_call(method: str, volume_id: int) -> Callable[[Any], object]:
    return lambda sf: getattr(sf, method)(volume_id)


def _snapshot_name(vm_snapshot_id: str) -> str:
    # The array's own name for the group: recognisable in the Element UI.
    return f"vmsnap-{vm_snapshot_id}"


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _parse_token(token: str) -> int:
    if not token:
        return 0
    prefix, _, number = token.partition(":")
    if prefix != "after" or not number.isdigit():
        raise InvalidArgument.for_field("page_token", "is not a token this driver returned")
    return int(number)
