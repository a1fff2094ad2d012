"""What a check works with: the connection, test volumes, and call helpers.

A :class:`Connection` is shared by a whole run; each check gets its own
:class:`Session` with its own cleanup registry, its own VM id and ids that no
other check uses, so a check never sees another check's leftovers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from vmsnap_sdk import _convert as cv
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.driver.v1 import driver_pb2, driver_pb2_grpc
from vmsnap_sdk._types import Capability
from vmsnap_sdk._validate import ID_PATTERN
from vmsnap_sdk.conformance._expect import CheckFailed, CheckSkipped
from vmsnap_sdk.conformance._resources import Resources
from vmsnap_sdk.conformance._rpc import RpcFailure, call

ABORTED = grpc.StatusCode.ABORTED
MIB = 1024 * 1024


@dataclass(frozen=True)
class Params:
    """Vendor-specific inputs (``--params FILE``), for drivers without the fixture.

    JSON: ``{"volumes": [{"disk": "vda", "locator": "element://c1/42"}, …],
    "parameters": {"key": "value"}}``. The volumes must exist, be claimed by
    the driver, and hold nothing anyone needs: the suite snapshots them.
    """

    volumes: tuple[common_pb2.Volume, ...] = ()
    parameters: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Params:
        volumes = []
        for i, item in enumerate(data.get("volumes", [])):
            volumes.append(
                common_pb2.Volume(
                    disk=str(item.get("disk") or disk_name(i)),
                    locator=str(item["locator"]),
                    size_bytes=int(item.get("size_bytes", 0)),
                    format=str(item.get("format", "raw")),
                )
            )
        parameters = {str(k): str(v) for k, v in dict(data.get("parameters", {})).items()}
        return cls(tuple(volumes), parameters)

    @classmethod
    def load(cls, path: str | Path) -> Params:
        return cls.from_dict(json.loads(Path(path).read_text()))


def disk_name(i: int) -> str:
    """vda, vdb, …, vdz, vdaa, …"""
    return "vd" + (chr(97 + i) if i < 26 else f"a{i}")


class Connection:
    """The channel to the driver under test and what it said about itself."""

    def __init__(self, address: str, channel: grpc.aio.Channel) -> None:
        self.address = address
        self.channel = channel
        self.driver = driver_pb2_grpc.StorageDriverStub(channel)
        self.fixture = driver_pb2_grpc.ConformanceFixtureStub(channel)
        self.health: Any = health_pb2_grpc.HealthStub(channel)
        self.info: driver_pb2.GetDriverInfoResponse | None = None
        self.info_error = ""
        #: The status code of GetDriverInfo's failure (None when it answered).
        self.info_code: grpc.StatusCode | None = None
        self.run_id = secrets.token_hex(3)
        self._serial = itertools.count(1)

    async def load_info(self, timeout: float) -> None:
        try:
            self.info = await call(
                "GetDriverInfo",
                self.driver.GetDriverInfo,
                driver_pb2.GetDriverInfoRequest(),
                timeout,
            )
        except RpcFailure as exc:
            self.info_error = exc.summary()
            self.info_code = exc.code

    @property
    def capabilities(self) -> frozenset[Capability]:
        if self.info is None:
            return frozenset()
        return frozenset(cv._enum(Capability, c) for c in self.info.capabilities)

    def next_serial(self) -> int:
        return next(self._serial)


class Session:
    """One check's view: helpers that register everything they create."""

    def __init__(
        self,
        conn: Connection,
        params: Params,
        resources: Resources,
        *,
        rpc_timeout: float = 10.0,
    ) -> None:
        self.conn = conn
        self.params = params
        self.resources = resources
        self.rpc_timeout = rpc_timeout
        self.serial = conn.next_serial()
        self.vm_id = f"cf-{conn.run_id}-{self.serial}-vm"
        self._ids = itertools.count(1)

    # --- what the driver is -------------------------------------------------------

    @property
    def driver(self) -> driver_pb2_grpc.StorageDriverStub:
        return self.conn.driver

    @property
    def fixture(self) -> driver_pb2_grpc.ConformanceFixtureStub:
        return self.conn.fixture

    @property
    def info(self) -> driver_pb2.GetDriverInfoResponse:
        if self.conn.info is None:
            raise CheckFailed("GetDriverInfo to answer", self.conn.info_error or "no answer")
        return self.conn.info

    def has(self, capability: Capability) -> bool:
        return capability in self.conn.capabilities

    def require(self, capability: Capability) -> None:
        if not self.has(capability):
            raise CheckSkipped(f"the driver does not advertise CAPABILITY_{capability.name}")

    # --- names --------------------------------------------------------------------

    def new_id(self, label: str = "s") -> str:
        """A vm_snapshot_id no other check uses."""
        return f"cf-{self.conn.run_id}-{self.serial}-{label}{next(self._ids)}"

    def vm(
        self,
        volumes: Sequence[common_pb2.Volume] = (),
        *,
        vm_id: str | None = None,
        state: common_pb2.VMState.ValueType = common_pb2.VM_STATE_STOPPED,
    ) -> common_pb2.VM:
        return common_pb2.VM(
            id=vm_id or self.vm_id, name="conformance", state=state, volumes=list(volumes)
        )

    # --- test volumes -------------------------------------------------------------

    async def volumes(self, count: int) -> list[common_pb2.Volume]:
        """``count`` volumes the driver claims: from the fixture, else from --params."""
        if self.has(Capability.CONFORMANCE_FIXTURE):
            return [await self.create_volume(i) for i in range(count)]
        if len(self.params.volumes) >= count:
            return list(self.params.volumes[:count])
        if self.params.volumes:
            raise CheckSkipped(
                f"needs {count} test volumes; --params gives {len(self.params.volumes)}"
            )
        raise CheckSkipped(
            "needs test volumes: the driver does not advertise "
            "CAPABILITY_CONFORMANCE_FIXTURE and --params gives none"
        )

    def require_data(self) -> None:
        """Reading and writing bytes needs the fixture."""
        if not self.has(Capability.CONFORMANCE_FIXTURE):
            raise CheckSkipped(
                "needs CAPABILITY_CONFORMANCE_FIXTURE to write and read test volumes"
            )

    async def create_volume(self, index: int, size_bytes: int = MIB) -> common_pb2.Volume:
        name = f"cf{self.conn.run_id}{self.serial}v{index}"
        created: list[str] = []

        async def undo() -> None:
            if created:
                await self.delete_volume(created[0])

        self.resources.add(f"test volume {name}", undo)
        response = await call(
            "CreateTestVolume",
            self.fixture.CreateTestVolume,
            driver_pb2.CreateTestVolumeRequest(name=name, size_bytes=size_bytes),
            self.rpc_timeout,
        )
        created.append(response.volume.locator)
        volume = common_pb2.Volume()
        volume.CopyFrom(response.volume)
        volume.disk = disk_name(index)
        return volume

    async def delete_volume(self, locator: str) -> None:
        await call(
            "DeleteTestVolume",
            self.fixture.DeleteTestVolume,
            driver_pb2.DeleteTestVolumeRequest(locator=locator),
            self.rpc_timeout,
        )

    async def write(self, locator: str, data: bytes, offset: int = 0) -> None:
        await call(
            "WriteVolume",
            self.fixture.WriteVolume,
            driver_pb2.WriteVolumeRequest(locator=locator, offset=offset, data=data),
            self.rpc_timeout,
        )

    async def read(self, locator: str, length: int, offset: int = 0) -> bytes:
        response = await call(
            "ReadVolume",
            self.fixture.ReadVolume,
            driver_pb2.ReadVolumeRequest(locator=locator, offset=offset, length=length),
            self.rpc_timeout,
        )
        return response.data

    # --- snapshots ----------------------------------------------------------------

    def take_request(
        self,
        vm_snapshot_id: str,
        volumes: Sequence[common_pb2.Volume],
        *,
        vm_id: str | None = None,
    ) -> driver_pb2.TakeVMSnapshotRequest:
        return driver_pb2.TakeVMSnapshotRequest(
            vm_snapshot_id=vm_snapshot_id,
            vm=self.vm(volumes, vm_id=vm_id),
            volumes=list(volumes),
            parameters=dict(self.params.parameters),
            vm_snapshot_name=f"conformance {vm_snapshot_id}",
        )

    def register_snapshot(self, vm_snapshot_id: str) -> None:
        """Delete this id at cleanup (by id alone: the driver finds it by its tags)."""

        async def undo() -> None:
            await self.delete(vm_snapshot_id)

        self.resources.add(f"snapshot {vm_snapshot_id}", undo)

    async def take_raw(
        self, request: driver_pb2.TakeVMSnapshotRequest, timeout: float | None = None
    ) -> driver_pb2.VMSnapshotResult:
        """TakeVMSnapshot, registered for cleanup before the call (well-formed ids only)."""
        if ID_PATTERN.match(request.vm_snapshot_id):
            self.register_snapshot(request.vm_snapshot_id)
        response = await call(
            "TakeVMSnapshot",
            self.driver.TakeVMSnapshot,
            request,
            self.rpc_timeout if timeout is None else timeout,
        )
        return response.result

    async def take(
        self,
        vm_snapshot_id: str,
        volumes: Sequence[common_pb2.Volume],
        *,
        vm_id: str | None = None,
        timeout: float | None = None,
    ) -> driver_pb2.VMSnapshotResult:
        return await self.take_raw(self.take_request(vm_snapshot_id, volumes, vm_id=vm_id), timeout)

    async def take_retrying(
        self, vm_snapshot_id: str, volumes: Sequence[common_pb2.Volume], attempts: int = 8
    ) -> driver_pb2.VMSnapshotResult:
        """Take, retrying ABORTED with a backoff as the host does."""
        delay = 0.05
        for attempt in range(attempts):
            try:
                return await self.take(vm_snapshot_id, volumes)
            except RpcFailure as exc:
                if exc.code != ABORTED or attempt == attempts - 1:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, vm_snapshot_id: str) -> driver_pb2.VMSnapshotResult:
        response = await call(
            "GetVMSnapshot",
            self.driver.GetVMSnapshot,
            driver_pb2.GetVMSnapshotRequest(vm_snapshot_id=vm_snapshot_id),
            self.rpc_timeout,
        )
        return response.result

    async def wait_ready(
        self, result: driver_pb2.VMSnapshotResult, seconds: float = 10.0
    ) -> driver_pb2.VMSnapshotResult:
        """Poll GetVMSnapshot until ``ready`` (post-processing), up to ``seconds``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while not result.ready:
            if loop.time() > end:
                raise CheckFailed(f"snapshot ready within {seconds:g} s", "still not ready")
            await asyncio.sleep(0.05)
            result = await self.get(result.vm_snapshot_id)
        return result

    async def delete(
        self,
        vm_snapshot_id: str,
        snapshot: driver_pb2.VMSnapshotResult | None = None,
        timeout: float | None = None,
    ) -> None:
        request = driver_pb2.DeleteVMSnapshotRequest(vm_snapshot_id=vm_snapshot_id)
        if snapshot is not None:
            request.snapshot.CopyFrom(snapshot)
        await call(
            "DeleteVMSnapshot",
            self.driver.DeleteVMSnapshot,
            request,
            self.rpc_timeout if timeout is None else timeout,
        )

    async def revert(
        self,
        snapshot: driver_pb2.VMSnapshotResult,
        *,
        undo_id: str = "",
        volumes: Sequence[common_pb2.Volume] = (),
    ) -> driver_pb2.RevertVMSnapshotResponse:
        """Revert the (stopped) VM to ``snapshot``; with ``undo_id``, keep the current state."""
        if undo_id:
            self.register_snapshot(undo_id)
        request = driver_pb2.RevertVMSnapshotRequest(
            vm_snapshot_id=snapshot.vm_snapshot_id,
            snapshot=snapshot,
            vm=self.vm(volumes),
            save_current_state=bool(undo_id),
            undo_vm_snapshot_id=undo_id,
        )
        return await call(
            "RevertVMSnapshot", self.driver.RevertVMSnapshot, request, self.rpc_timeout
        )

    async def clone(
        self,
        snapshot: driver_pb2.VMSnapshotResult,
        clone_id: str,
        *,
        targets: Sequence[tuple[str, str]] = (),
        new_vm_id: str = "",
        register: bool = True,
    ) -> list[common_pb2.Volume]:
        """CloneVolumes of ``snapshot`` (every disk, named after the clone id unless
        ``targets`` (disk, name) are given), registered for cleanup before the call
        (unless ``register`` is false: a driver without the capability cannot delete)."""
        if register:
            self.register_clone(clone_id)
        if not targets:
            targets = [
                (v.disk, f"{clone_id.replace('.', '-').replace('_', '-')}-{v.disk}"[:63])
                for v in snapshot.volume_snapshots
            ]
        request = driver_pb2.CloneVolumesRequest(
            clone_id=clone_id,
            vm_snapshot_id=snapshot.vm_snapshot_id,
            snapshot=snapshot,
            new_vm_id=new_vm_id or f"{self.vm_id}-clone",
            targets=[driver_pb2.CloneTarget(disk=d, name=n) for d, n in targets],
            parameters=dict(self.params.parameters),
        )
        response = await call("CloneVolumes", self.driver.CloneVolumes, request, self.rpc_timeout)
        return list(response.volumes)

    def register_clone(self, clone_id: str) -> None:
        """Delete the clone's volumes at cleanup (by its id alone, as the host does)."""

        async def undo() -> None:
            await self.delete_clone(clone_id)

        self.resources.add(f"clone {clone_id}", undo)

    async def delete_clone(self, clone_id: str) -> None:
        await call(
            "DeleteClonedVolumes",
            self.driver.DeleteClonedVolumes,
            driver_pb2.DeleteClonedVolumesRequest(clone_id=clone_id),
            self.rpc_timeout,
        )

    async def list_page(
        self, page_size: int = 0, page_token: str = "", vm_id: str = ""
    ) -> driver_pb2.ListVMSnapshotsResponse:
        return await call(
            "ListVMSnapshots",
            self.driver.ListVMSnapshots,
            driver_pb2.ListVMSnapshotsRequest(
                page_size=page_size, page_token=page_token, vm_id=vm_id
            ),
            self.rpc_timeout,
        )

    async def list_all(
        self, vm_id: str = "", page_size: int = 0, max_pages: int = 200
    ) -> list[driver_pb2.VMSnapshotResult]:
        """Every page; fails when the pages do not end within ``max_pages``."""
        found: list[driver_pb2.VMSnapshotResult] = []
        token = ""
        for _ in range(max_pages):
            page = await self.list_page(page_size, token, vm_id)
            found.extend(page.vm_snapshots)
            token = page.next_page_token
            if not token:
                return found
        raise CheckFailed(f"ListVMSnapshots to end within {max_pages} pages", "more pages")

    async def listed_ids(self, vm_id: str = "") -> list[str]:
        """The ids ListVMSnapshots reports for this check's VM (duplicates kept)."""
        return [r.vm_snapshot_id for r in await self.list_all(vm_id or self.vm_id)]


def handles(result: driver_pb2.VMSnapshotResult) -> dict[str, str]:
    """disk → handle of a result."""
    return {v.disk: v.handle for v in result.volume_snapshots}
