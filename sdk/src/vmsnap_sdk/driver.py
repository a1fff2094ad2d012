"""The storage driver a vendor writes: subclass :class:`StorageDriver`.

This is the domain interface of go-plugin's three layers. The SDK's server
adapter calls it for every RPC (after validating the request), and the host
talks to remote drivers through :class:`vmsnap_sdk.DriverClient`, which
implements the same interface over gRPC. No protobuf type appears here.

Raise the errors of :mod:`vmsnap_sdk.errors` to answer with a status code;
any other exception becomes INTERNAL without its text. The deadline of the
call being served is ``current_call().time_remaining()``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

from vmsnap_sdk._errors import Unimplemented
from vmsnap_sdk._types import (
    VM,
    CloneRequest,
    DriverInfo,
    Operation,
    Page,
    ProbeResult,
    RevertRequest,
    RevertResult,
    SnapshotPage,
    SnapshotResult,
    TakeRequest,
    UnmanagedPage,
    Volume,
    VolumeDecision,
)
from vmsnap_sdk.blocks import BlockPage, SnapshotRef


def fixture_disk_name(name: str) -> str:
    """The disk name of a test volume named ``name``: lower case, dots as dashes.

    A test volume's name (CreateTestVolumeRequest.name, 1..63 chars of
    [A-Za-z0-9._-] starting with a letter or digit) may break the disk-name rule
    of ``Volume.disk`` (1..63 chars of [a-z0-9_-] starting with a letter or
    digit); this one obeys it, so the volume a fixture returns can be used as it is.
    """
    return name.lower().replace(".", "-")


class StorageDriver(abc.ABC):
    """Base class of a storage driver. Every mutating call is idempotent on its id."""

    @abc.abstractmethod
    async def get_info(self) -> DriverInfo:
        """Name, version, contract versions, capabilities and limits."""

    async def probe(self) -> ProbeResult:
        """Whether the array answers. Override to check the array for real."""
        return ProbeResult(ready=True)

    @abc.abstractmethod
    async def can_handle(
        self,
        vm: VM,
        volumes: Sequence[Volume],
        operation: Operation,
        options: Mapping[str, str],
    ) -> Sequence[VolumeDecision]:
        """One decision per volume. Pure and fast; an unknown volume is CANT_HANDLE."""

    @abc.abstractmethod
    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        """Cut the volumes as one point in time; the same id returns the same result.

        The same id with other volumes must raise AlreadyExists.
        """

    async def get_snapshot(self, vm_snapshot_id: str) -> SnapshotResult:
        """The current result (poll ``ready`` after post-processing)."""
        raise Unimplemented("GetVMSnapshot is not offered by this driver")

    async def revert_snapshot(self, request: RevertRequest) -> RevertResult:
        """Bring the volumes back to the snapshot (CAPABILITY_REVERT)."""
        raise Unimplemented("RevertVMSnapshot is not offered by this driver")

    @abc.abstractmethod
    async def delete_snapshot(self, vm_snapshot_id: str, snapshot: SnapshotResult | None) -> None:
        """Remove everything tagged with the id. Unknown ids are fine (idempotent)."""

    async def list_snapshots(self, page: Page, vm_id: str = "") -> SnapshotPage:
        """Snapshots the array holds, tagged with the host's ids (CAPABILITY_LIST)."""
        raise Unimplemented("ListVMSnapshots is not offered by this driver")

    # --- Changed blocks and snapshot reads (CAPABILITY_CHANGED_BLOCKS / _READ_SNAPSHOT)

    async def get_allocated(
        self, snapshot: SnapshotRef, starting_offset: int, max_results: int
    ) -> BlockPage:
        """One page of the ranges of ``snapshot`` that hold data: sorted, apart,
        ending after ``starting_offset``, at most ``max_results`` of them
        (vmsnap_sdk.blocks.ranges_problem states the rules)."""
        raise Unimplemented("GetMetadataAllocated is not offered by this driver")

    async def get_delta(
        self, base: SnapshotRef, target: SnapshotRef, starting_offset: int, max_results: int
    ) -> BlockPage:
        """One page of the ranges whose bytes differ between two snapshots of one
        volume (``base`` the older). Same rules as :meth:`get_allocated`."""
        raise Unimplemented("GetMetadataDelta is not offered by this driver")

    async def read_snapshot(self, snapshot: SnapshotRef, offset: int, length: int) -> bytes:
        """``length`` bytes (at most 4 MiB) of the snapshot from ``offset``."""
        raise Unimplemented("ReadSnapshot is not offered by this driver")

    # --- clone to a new VM (CAPABILITY_CLONE_VOLUMES) --------------------------------

    async def clone_volumes(self, request: CloneRequest) -> Sequence[Volume]:
        """New volumes from the snapshot, one per target in target order: ``disk``
        the target's disk, ``locator`` a volume this driver claims. Each is
        independent of the snapshot and its source (writes go to one only).
        Idempotent on ``clone_id``: tag what you create with it; the same id with
        another snapshot or other targets must raise AlreadyExists."""
        raise Unimplemented("CloneVolumes is not offered by this driver")

    async def delete_cloned_volumes(self, clone_id: str) -> None:
        """Delete every volume made for ``clone_id`` (found by its tags). Unknown is fine."""
        raise Unimplemented("DeleteClonedVolumes is not offered by this driver")

    async def list_unmanaged_snapshots(
        self, volumes: Sequence[Volume], page: Page
    ) -> UnmanagedPage:
        """Snapshots of some of ``volumes`` that no vmsnap host made, each array
        object once, none with a member outside ``volumes``; read only
        (CAPABILITY_LIST_UNMANAGED). Revert and delete must then accept the
        :meth:`UnmanagedSnapshot.as_result` of an entry."""
        raise Unimplemented("ListUnmanagedSnapshots is not offered by this driver")

    # --- ConformanceFixture (test arrays only; CAPABILITY_CONFORMANCE_FIXTURE) ------

    async def create_test_volume(self, name: str, size_bytes: int) -> Volume:
        """Create a volume this driver claims; return it as a valid input of every
        RPC: its ``disk`` obeys the disk-name rule (:func:`fixture_disk_name`
        makes one from ``name``), else the SDK refuses the answer (INTERNAL,
        ANSWER_INVALID)."""
        raise Unimplemented("the ConformanceFixture service is not offered")

    async def delete_test_volume(self, locator: str) -> None:
        """Delete a test volume (idempotent)."""
        raise Unimplemented("the ConformanceFixture service is not offered")

    async def write_volume(self, locator: str, offset: int, data: bytes) -> None:
        """Write bytes into a test volume."""
        raise Unimplemented("the ConformanceFixture service is not offered")

    async def read_volume(self, locator: str, offset: int, length: int) -> bytes:
        """Read bytes from a test volume."""
        raise Unimplemented("the ConformanceFixture service is not offered")
