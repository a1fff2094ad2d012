"""The NetApp ONTAP storage driver: VM disks are files, snapshots are file clones.

Take file-clones every disk file (POST /api/storage/file/clone) into the VM
snapshot's directory of its volume (see ``_layout``). A file clone is instant
and shares blocks, but clones of *several* files are not cut at one instant:
ONTAP has no consistency group for single files. So the driver does not offer
CAPABILITY_CONSISTENT_GROUP; the host freezes the VM with a hypervisor overlay
(the base files stop changing, writes go to the overlay) before the take, and
must unquiesce — commit the overlays — afterwards: every result says
``needs_unquiesce``. Consistency is CRASH for one disk, or for several when the
host says it quiesced; otherwise UNSPECIFIED: the driver makes no promise.

Revert clones each snapshot file back over its disk file (overwrite_destination);
with save_current_state it first takes the current files as the undo snapshot.
Delete removes the snapshot's directories. Everything is found by the directory
names, so every call is idempotent and works from the id alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from functools import partial

from vmsnap_driver_netapp import _catalog as catalog
from vmsnap_driver_netapp import _clones as clones
from vmsnap_driver_netapp._array import OntapArray
from vmsnap_driver_netapp._catalog import FlexVol, Found
from vmsnap_driver_netapp._config import Config
from vmsnap_driver_netapp._fixture import EmulatorFiles
from vmsnap_driver_netapp._layout import (
    DONE_MARKER,
    MAX_PATH_BYTES,
    QUIESCED_MARKER,
    ROOT,
    DiskFile,
    parse_locator,
)
from vmsnap_driver_netapp._snapread import FileReader
from vmsnap_sdk import (
    VM,
    Capability,
    CloneRequest,
    Consistency,
    DriverInfo,
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
    VMState,
    Volume,
    VolumeDecision,
    VolumeSnapshot,
    fixture_disk_name,
)
from vmsnap_sdk.blocks import BlockPage, SnapshotRef
from vmsnap_sdk.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    VMSnapError,
)
from vmsnap_sdk.toolkit import KeyLocks

__version__ = "0.1.0"

log = logging.getLogger("vmsnap.driver.netapp")

DRIVER_NAME = "com.netapp.ontap"


class NetAppDriver(StorageDriver):
    """vmsnap driver for the files of one ONTAP cluster's SVMs."""

    def __init__(self, config: Config, array: OntapArray | None = None) -> None:
        self.config = config
        self.array = array or OntapArray(config)
        self._svms: tuple[str, ...] = config.svms
        self._volumes: dict[tuple[str, str], FlexVol] = {}
        self._lock = KeyLocks()
        self._fixture = EmulatorFiles(config) if config.conformance_fixture else None
        self._reader = FileReader(config)

    # --- identity and health -------------------------------------------------------

    async def get_info(self) -> DriverInfo:
        # Snapshot reads and changed blocks use ONTAP's own file API (see _snapread).
        capabilities = {
            Capability.REVERT,
            Capability.REVERT_UNDO,
            Capability.LIST,
            Capability.CHANGED_BLOCKS,
            Capability.READ_SNAPSHOT,
            Capability.CLONE_VOLUMES,
        }
        if self._fixture is not None:
            capabilities.add(Capability.CONFORMANCE_FIXTURE)
        labels = {"array": self.config.url}
        if self._svms:
            labels["svms"] = ",".join(self._svms)
        return DriverInfo(
            name=DRIVER_NAME,
            vendor_version=__version__,
            capabilities=frozenset(capabilities),
            labels=labels,
        )

    async def probe(self) -> ProbeResult:
        try:
            present = await self.array.call("list SVMs", catalog.list_svms)
        except VMSnapError as exc:
            return ProbeResult(ready=False, message=exc.message)
        missing = [s for s in self.config.svms if s not in present]
        if missing:
            return ProbeResult(
                ready=False, message=f"SVMs {missing} do not exist on {self.config.url}"
            )
        if not self._svms:
            self._svms = tuple(present)
        return ProbeResult(ready=True, message=f"ONTAP at {self.config.url}, SVMs {list(present)}")

    async def svms(self) -> tuple[str, ...]:
        """The SVMs served: configured, or every SVM of the cluster (asked once)."""
        if not self._svms:
            self._svms = tuple(await self.array.call("list SVMs", catalog.list_svms))
        return self._svms

    # --- CanHandle -----------------------------------------------------------------

    async def can_handle(
        self,
        vm: VM,
        volumes: Sequence[Volume],
        operation: Operation,
        options: Mapping[str, str],
    ) -> Sequence[VolumeDecision]:
        try:
            svms = await self.svms()
        except VMSnapError as exc:
            return [
                VolumeDecision(v.disk, Priority.CANT_HANDLE, f"SVMs unknown: {exc.message}")
                for v in volumes
            ]
        decisions = []
        for v in volumes:
            disk = parse_locator(v.locator)
            if disk is None:
                decisions.append(
                    VolumeDecision(
                        v.disk,
                        Priority.CANT_HANDLE,
                        f"{v.locator} is not an ontap://<svm>/<volume>/<path> file",
                    )
                )
            elif disk.svm not in svms:
                decisions.append(
                    VolumeDecision(
                        v.disk,
                        Priority.CANT_HANDLE,
                        f"SVM {disk.svm} is not served by this driver ({', '.join(svms)})",
                    )
                )
            else:
                decisions.append(
                    VolumeDecision(
                        v.disk,
                        Priority.PLUGIN,
                        f"file {disk.path} is in volume {disk.volume} of SVM {disk.svm}",
                    )
                )
        return decisions

    # --- take ----------------------------------------------------------------------

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        _check_id("vm.id", request.vm.id)
        _check_id("vm_snapshot_id", request.vm_snapshot_id)
        disks = await self._disk_files(request.volumes)
        async with self._lock(request.vm_snapshot_id):
            found = await self._find(
                request.vm_snapshot_id, f"take snapshot {request.vm_snapshot_id}"
            )
            if found is not None:
                have = {(c.disk, c.source) for c in found.clones}
                wanted = set(disks.items())
                # A finished take must match exactly; an interrupted one (no "done"
                # marker) may hold a part of the disks: the retry cuts the rest.
                same = have == wanted if found.complete else have <= wanted
                if found.vm_id != request.vm.id or not same:
                    raise AlreadyExists(
                        f"snapshot {request.vm_snapshot_id} exists for VM {found.vm_id} with "
                        f"disks {sorted(c.disk for c in found.clones)}; asked for VM "
                        f"{request.vm.id} with {sorted(disks)}"
                    )
                if found.complete:
                    return self._result(found, request.volumes)
            cloned = {c.disk for c in found.clones} if found is not None else set()
            await self._check_files({d: f for d, f in disks.items() if d not in cloned})
            await self._clone_all(
                request.vm_snapshot_id, request.vm.id, disks, found, request.quiesced
            )
            done = await self._find(
                request.vm_snapshot_id, f"take snapshot {request.vm_snapshot_id}"
            )
            if done is None:  # pragma: no cover - the clones were just made
                raise NotFound(f"snapshot {request.vm_snapshot_id} vanished while being taken")
            log.info(
                "file clones created",
                extra={
                    "fields": {"vm_snapshot_id": request.vm_snapshot_id, "disks": sorted(disks)}
                },
            )
            return self._result(done, request.volumes)

    async def _clone_all(
        self,
        vm_snapshot_id: str,
        vm_id: str,
        disks: Mapping[str, DiskFile],
        found: Found | None,
        quiesced: bool,
    ) -> None:
        have = {c.disk for c in found.clones} if found is not None else set()
        action = f"take snapshot {vm_snapshot_id}"
        jobs = []
        for disk, source in disks.items():
            if disk in have:
                continue
            vol = await self._volume(source)
            jobs.append(
                self.array.call(
                    action,
                    partial(catalog.clone_into_snapshot, vol, vm_snapshot_id, vm_id, disk, source),
                )
            )
        # The disks are stable (the host froze them): clone them in parallel, within
        # the array-call bound.
        await asyncio.gather(*jobs)
        volumes = {await self._volume(d) for d in disks.values()}
        markers = [DONE_MARKER, *([QUIESCED_MARKER] if quiesced and len(disks) > 1 else [])]
        # "quiesced" first, "done" last: a directory marked done is complete.
        for marker in reversed(markers):
            for vol in volumes:
                await self.array.call(
                    action, partial(catalog.mark, vol, vm_snapshot_id, vm_id, marker)
                )

    async def _disk_files(self, volumes: Sequence[Volume]) -> dict[str, DiskFile]:
        """disk → file, each in a volume of an SVM this driver serves (no file I/O)."""
        svms = await self.svms()
        disks: dict[str, DiskFile] = {}
        for i, v in enumerate(volumes):
            disk = parse_locator(v.locator)
            if disk is None:
                # Not an ONTAP file: unknown to this driver (sent to the wrong driver).
                raise NotFound(
                    f"volume {v.locator} is not an ontap://<svm>/<volume>/<path> file",
                    reason="VOLUME_NOT_HERE",
                )
            if len(disk.path.encode()) > MAX_PATH_BYTES:
                raise InvalidArgument.for_field(
                    f"volumes[{i}].locator", f"the path is longer than {MAX_PATH_BYTES} bytes"
                )
            if disk.svm not in svms:
                raise NotFound(f"SVM {disk.svm} of {v.locator} is not served by this driver")
            if disk in disks.values():
                raise InvalidArgument.for_field(f"volumes[{i}].locator", "is given twice")
            disks[v.disk] = disk
        return disks

    async def _check_files(self, disks: Mapping[str, DiskFile]) -> None:
        """Every file exists: checked before cloning any, so that an unknown disk
        fails the take cleanly, leaving nothing behind on the array."""
        for disk in disks.values():
            vol = await self._volume(disk)
            size = await self.array.call(
                f"check {disk.locator}",
                partial(catalog.file_size, vol, disk.path),
            )
            if size is None:
                raise NotFound(f"no file {disk.path} in volume {disk.volume} of SVM {disk.svm}")

    # --- get, revert, delete, list -------------------------------------------------

    async def get_snapshot(self, vm_snapshot_id: str) -> SnapshotResult:
        found = await self._find(vm_snapshot_id, f"get snapshot {vm_snapshot_id}")
        if found is None:
            raise NotFound(f"no snapshot {vm_snapshot_id} on {self.config.url}")
        return self._result(found)

    async def revert_snapshot(self, request: RevertRequest) -> RevertResult:
        action = f"revert to snapshot {request.vm_snapshot_id}"
        if request.vm.state in (VMState.RUNNING, VMState.PAUSED):
            raise FailedPrecondition(
                f"{action}: VM {request.vm.id} is {request.vm.state.name.lower()}; "
                "its disk files are in use: stop it first",
                reason="VM_NOT_STOPPED",
            )
        undo_id = request.undo_vm_snapshot_id
        if request.save_current_state:
            if not undo_id:
                raise InvalidArgument.for_field(
                    "undo_vm_snapshot_id", "is required with save_current_state"
                )
            _check_id("undo_vm_snapshot_id", undo_id)
        async with self._lock(request.vm_snapshot_id):
            found = await self._find(request.vm_snapshot_id, action)
            if found is None or not found.clones:
                raise NotFound(
                    f"{action}: no snapshot {request.vm_snapshot_id} on {self.config.url}"
                )
            undo: SnapshotResult | None = None
            if request.save_current_state:
                current = {c.disk: c.source for c in found.clones}
                async with self._lock(undo_id):
                    # A retried revert finds its undo made: it must not be cut again
                    # (the disks may already hold the reverted state).
                    kept = await self._find(undo_id, action)
                    if kept is None or not kept.complete:
                        # The VM is stopped: its files do not change, as if quiesced.
                        await self._clone_all(undo_id, found.vm_id, current, kept, True)
                        kept = await self._find(undo_id, action)
                    if kept is None:  # pragma: no cover - the clones were just made
                        raise NotFound(f"{action}: the undo snapshot {undo_id} vanished")
                    undo = self._result(kept)
            for clone in found.clones:
                vol = await self._volume(clone.source)
                await self.array.call(
                    action,
                    partial(catalog.clone_back, vol, clone.path, clone.source.path),
                )
            log.info(
                "disks reverted",
                extra={"fields": {"vm_snapshot_id": request.vm_snapshot_id, "undo": undo_id}},
            )
            return RevertResult(undo=undo)

    async def delete_snapshot(self, vm_snapshot_id: str, snapshot: SnapshotResult | None) -> None:
        action = f"delete snapshot {vm_snapshot_id}"
        async with self._lock(vm_snapshot_id):
            found = await self._find(vm_snapshot_id, action)
            if found is None:
                return
            for vol, directory in found.directories:
                await self.array.call(
                    action,
                    partial(catalog.remove_directory, vol, directory),
                )
            log.info("file clones deleted", extra={"fields": {"vm_snapshot_id": vm_snapshot_id}})

    async def list_snapshots(self, page: Page, vm_id: str = "") -> SnapshotPage:
        svms = await self.svms()
        found = await self.array.call(
            "list snapshots", lambda: catalog.scan(catalog.list_volumes(svms))
        )
        # Stable order: by id. The token is the last id returned; ids are unique.
        ids = sorted(i for i, f in found.items() if not vm_id or f.vm_id == vm_id)
        after = _parse_token(page.token)
        ids = [i for i in ids if i > after] if after else ids
        chosen = ids[: page.size]
        token = f"after:{chosen[-1]}" if len(ids) > page.size else ""
        return SnapshotPage(tuple(self._result(found[i]) for i in chosen), token)

    # --- clone to a new VM -----------------------------------------------------------

    async def clone_volumes(self, request: CloneRequest) -> Sequence[Volume]:
        _check_id("clone_id", request.clone_id)
        _check_id("new_vm_id", request.new_vm_id)
        action = f"clone snapshot {request.vm_snapshot_id} as {request.clone_id}"
        async with self._lock(f"clone:{request.clone_id}"):
            found = await self._find(request.vm_snapshot_id, action)
            if found is None or not found.clones:
                raise NotFound(
                    f"{action}: no snapshot {request.vm_snapshot_id} on {self.config.url}"
                )
            by_disk = {c.disk: c for c in found.clones}
            volumes = {(await self._volume(by_disk[t.disk].source)) for t in request.targets}
            names = {t.disk: t.name for t in request.targets}
            existing = [
                (vol, held)
                for vol in volumes
                if (
                    held := await self.array.call(
                        action, partial(clones.scan, vol, request.clone_id)
                    )
                )
                is not None
            ]
            for _vol, held in existing:
                same = (
                    held.vm_snapshot_id in ("", request.vm_snapshot_id)
                    and held.vm_id in ("", request.new_vm_id)
                    and all(names.get(d) == f[0] for d, f in held.files.items())
                )
                if not same:
                    raise AlreadyExists(
                        f"clone {request.clone_id} exists on {self.config.url} from snapshot "
                        f"{held.vm_snapshot_id or '?'} for VM {held.vm_id or '?'} with disks "
                        f"{sorted(held.files)}; use a new clone_id",
                        reason="CLONE_ID_REUSED",
                    )
            held_disks = {d for _v, held in existing for d in held.files}
            for vol in volumes:
                await self.array.call(
                    action,
                    partial(
                        clones.start,
                        vol,
                        request.clone_id,
                        request.vm_snapshot_id,
                        request.new_vm_id,
                    ),
                )
            jobs = []
            for target in request.targets:
                if target.disk in held_disks:
                    continue
                snap_file = by_disk[target.disk]
                vol = await self._volume(snap_file.source)
                jobs.append(
                    self.array.call(
                        action,
                        partial(
                            clones.clone_one,
                            vol,
                            request.clone_id,
                            target.disk,
                            target.name,
                            snap_file.path,
                        ),
                    )
                )
            await asyncio.gather(*jobs)
            made: dict[str, tuple[FlexVol, int, str]] = {}
            for vol in volumes:
                await self.array.call(action, partial(clones.finish, vol, request.clone_id))
                held = await self.array.call(action, partial(clones.scan, vol, request.clone_id))
                for disk, (_name, path, size) in (held.files if held else {}).items():
                    made[disk] = (vol, size, path)
            missing = [t.disk for t in request.targets if t.disk not in made]
            if missing:  # pragma: no cover - the clones were just made
                raise NotFound(f"{action}: the clones of {missing} vanished while being made")
            log.info(
                "disk files cloned",
                extra={"fields": {"clone_id": request.clone_id, "disks": sorted(made)}},
            )
            return [
                Volume(
                    disk=t.disk,
                    locator=DiskFile(
                        made[t.disk][0].svm, made[t.disk][0].name, made[t.disk][2]
                    ).locator,
                    size_bytes=made[t.disk][1],
                )
                for t in request.targets
            ]

    async def delete_cloned_volumes(self, clone_id: str) -> None:
        _check_id("clone_id", clone_id)
        action = f"delete clone {clone_id}"
        svms = await self.svms()
        async with self._lock(f"clone:{clone_id}"):
            for vol in await self.array.call(action, partial(catalog.list_volumes, svms)):
                if await self.array.call(action, partial(clones.remove, vol, clone_id)):
                    log.info(
                        "cloned disk files deleted",
                        extra={"fields": {"clone_id": clone_id, "volume": vol.name}},
                    )

    # --- ConformanceFixture --------------------------------------------------------

    async def create_test_volume(self, name: str, size_bytes: int) -> Volume:
        fixture = self._fixture_or_raise()
        svm = (await self.svms())[0]
        disk = await fixture.create_file(self.array, svm, name, size_bytes)
        return Volume(disk=fixture_disk_name(name), locator=disk.locator, size_bytes=size_bytes)

    async def delete_test_volume(self, locator: str) -> None:
        fixture = self._fixture_or_raise()
        disk = self._fixture_disk(locator)
        await fixture.delete_file(self.array, await self._volume(disk), disk)

    async def write_volume(self, locator: str, offset: int, data: bytes) -> None:
        fixture = self._fixture_or_raise()
        disk = self._fixture_disk(locator)
        await fixture.write(await self._volume(disk), disk, offset, data)

    async def read_volume(self, locator: str, offset: int, length: int) -> bytes:
        fixture = self._fixture_or_raise()
        disk = self._fixture_disk(locator)
        return await fixture.read(await self._volume(disk), disk, offset, length)

    def _fixture_or_raise(self) -> EmulatorFiles:
        if self._fixture is None:
            raise FailedPrecondition("the ConformanceFixture service is not enabled")
        return self._fixture

    @staticmethod
    def _fixture_disk(locator: str) -> DiskFile:
        disk = parse_locator(locator)
        if disk is None:
            raise InvalidArgument.for_field("locator", "must be ontap://<svm>/<volume>/<path>")
        return disk

    # --- helpers -------------------------------------------------------------------

    # --- snapshot reads and changed blocks (file clones read over REST) -----------

    async def _clone(self, field: str, ref: SnapshotRef) -> tuple[FlexVol, str, int]:
        """The volume, path and size of a snapshot's clone (only clones under /.vmsnap)."""
        disk = parse_locator(ref.volume.locator)
        if disk is None:
            raise InvalidArgument.for_field(
                f"{field}.volume_snapshot.locator", "must be ontap://<svm>/<volume>/<path>"
            )
        path = ref.volume.handle
        if not path.startswith(ROOT + "/") or ".." in path.split("/"):
            raise InvalidArgument.for_field(
                f"{field}.volume_snapshot.handle",
                f"is no snapshot clone of this driver ({ROOT}/...)",
            )
        vol = await self._volume(disk)
        size = await self.array.call(f"size of {path}", lambda: catalog.file_size(vol, path))
        if size is None:
            raise NotFound(f"snapshot clone {path} is gone from volume {vol.name}")
        return vol, path, size

    async def get_allocated(
        self, snapshot: SnapshotRef, starting_offset: int, max_results: int
    ) -> BlockPage:
        vol, path, size = await self._clone("snapshot", snapshot)
        return await self._reader.page(vol.uuid, path, None, size, starting_offset, max_results)

    async def get_delta(
        self, base: SnapshotRef, target: SnapshotRef, starting_offset: int, max_results: int
    ) -> BlockPage:
        vol, path, size = await self._clone("target", target)
        base_vol, base_path, _ = await self._clone("base", base)
        if base_vol.uuid != vol.uuid:
            raise InvalidArgument.for_field("base", "is not a snapshot of the target's volume")
        return await self._reader.page(
            vol.uuid, path, base_path, size, starting_offset, max_results
        )

    async def read_snapshot(self, snapshot: SnapshotRef, offset: int, length: int) -> bytes:
        vol, path, size = await self._clone("snapshot", snapshot)
        if offset + length > size:
            raise InvalidArgument.for_field(
                "length", f"reads past the end of the disk ({size} bytes)"
            )
        return await self._reader.read(vol.uuid, path, offset, length)

    async def _volume(self, disk: DiskFile) -> FlexVol:
        key = (disk.svm, disk.volume)
        vol = self._volumes.get(key)
        if vol is None:
            vol = await self.array.call(
                f"find volume {disk.volume}", lambda: catalog.find_volume(disk.svm, disk.volume)
            )
            if vol is None:
                raise NotFound(f"no volume {disk.volume} in SVM {disk.svm} on {self.config.url}")
            self._volumes[key] = vol
        return vol

    async def _find(self, vm_snapshot_id: str, action: str) -> Found | None:
        """The VM snapshot with that id, looked for in every volume of the SVMs served."""
        svms = await self.svms()
        found = await self.array.call(
            action, lambda: catalog.scan(catalog.list_volumes(svms), vm_snapshot_id)
        )
        return found.get(vm_snapshot_id)

    def _result(self, found: Found, order: Sequence[Volume] = ()) -> SnapshotResult:
        by_disk = {c.disk: c for c in found.clones}
        disks = [v.disk for v in order if v.disk in by_disk] or sorted(by_disk)
        snapshots = tuple(
            VolumeSnapshot(
                disk=d,
                locator=by_disk[d].source.locator,
                handle=by_disk[d].path,
                size_bytes=by_disk[d].size,
            )
            for d in disks
        )
        # One file clone is atomic; several are cut at one instant only because
        # the host froze the files first.
        crash = len(snapshots) == 1 or found.quiesced
        return SnapshotResult(
            vm_snapshot_id=found.vm_snapshot_id,
            volume_snapshots=snapshots,
            ready=True,
            consistency=Consistency.CRASH if crash else Consistency.UNSPECIFIED,
            needs_unquiesce=True,
            create_time=found.create_time,
            vm_id=found.vm_id,
        )


def _check_id(field: str, value: str) -> None:
    # Ids become directory names: "." and ".." would climb the tree.
    if value in (".", "..") or "@" in value or "/" in value:
        raise InvalidArgument.for_field(field, "cannot be used as a directory name")


def _parse_token(token: str) -> str:
    if not token:
        return ""
    prefix, _, last = token.partition(":")
    if prefix != "after" or not last:
        raise InvalidArgument.for_field("page_token", "is not a token this driver returned")
    return last
