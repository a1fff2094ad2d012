"""QemuAgent: the SDK's HypervisorAgent implemented on :class:`QemuHypervisor`.

This module is the one place where the QEMU backend meets the contract: SDK
types in, library types out, and every :class:`QemuAgentError` mapped to the
SDK error of its canonical code (:func:`_contract_errors`). The library stays
free of SDK imports so it can be used and tested on its own.

Contract choices specific to QEMU:

* Volumes are opened by locator through a :class:`LocatorMap`; a missing local
  image with a size is created (the demo's VMs bring no disks).
* Words of the VM *name* starting with ``vmsnap.`` go to the guest kernel command
  line (``vmsnap.noga=1`` simulates a guest without agent, ``vmsnap.writer=/dev/vda``
  starts the writer), like the sim's words.
* ``best_effort`` when the guest agent does not answer: both guest methods fall
  back to overlays (crash consistent, with a warning). Unlike doing nothing, the
  overlays still cut every disk at one instant, which a plan spanning several
  arrays needs.
* ``Volume.native_snapshot`` is true only for a disk whose internal snapshots
  restore its bytes: a writable qcow2 image of a ``file://`` locator
  (:func:`native.holds_bytes`); an array's disk (NBD export, file on an array's
  export) is false even when QEMU could write an internal snapshot into it.
* CopyNativeDisks writes new qcow2 images from the snapshot's internal
  snapshots into the agent's state directory (``copies.py``) and answers
  ``file://`` locators: the new VM must be defined on this agent.
* Freezes are listed (ListQuiesces) until fully undone, overlays committed
  included; Unquiesce by ``operation_id`` resolves every one its quiesce made.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from vmsnap_agent import __version__
from vmsnap_sdk import (
    VM,
    AgentInfo,
    CloneTarget,
    HypervisorAgent,
    MemoryState,
    NativeSnapshot,
    NativeSnapshotAtFreeze,
    Page,
    QuiesceInfo,
    QuiesceMethod,
    QuiesceResult,
    UnquiesceResult,
    VMPage,
    VMState,
    Volume,
)
from vmsnap_sdk import Consistency as SdkConsistency
from vmsnap_sdk.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    VMSnapError,
)

from . import errors as e
from . import model as m
from .hypervisor import QemuHypervisor
from .locators import LocatorMap, ensure_image

log = logging.getLogger("vmsnap_agent.qemu")

DEFAULT_MEMORY_MIB = 256

_METHODS = {
    QuiesceMethod.OVERLAY: m.QuiesceMethod.OVERLAY,
    QuiesceMethod.GUEST_FREEZE: m.QuiesceMethod.GUEST,
    QuiesceMethod.GUEST_FREEZE_AND_OVERLAY: m.QuiesceMethod.OVERLAY_GUEST,
    QuiesceMethod.PAUSE_AND_SAVE_MEMORY: m.QuiesceMethod.PAUSE_MEMORY,
    QuiesceMethod.GUEST_FREEZE_AND_CUT: m.QuiesceMethod.GUEST_CUT,
}
_SDK_METHODS = {v: k for k, v in _METHODS.items()}

# Library error → contract error class (the codes named in errors.py).
_ERRORS: tuple[tuple[type[e.QemuAgentError], type[VMSnapError]], ...] = (
    (e.VmNotFound, NotFound),
    (e.SnapshotNotFound, NotFound),
    (e.QuiesceNotFound, NotFound),
    (e.VmAlreadyExists, AlreadyExists),
    (e.SnapshotConflict, AlreadyExists),
    (e.InvalidSpec, InvalidArgument),
    (e.VmBusy, Aborted),
    (e.VmFrozen, FailedPrecondition),
    (e.VmStateError, FailedPrecondition),
    (e.GuestAgentUnavailable, FailedPrecondition),
    (e.GuestAgentError, FailedPrecondition),
    (e.CopyConflict, AlreadyExists),
    (e.NoSpace, ResourceExhausted),
    (e.QmpCommandError, Internal),
)


@contextlib.contextmanager
def _contract_errors() -> Iterator[None]:
    try:
        yield
    except e.QemuAgentError as exc:
        for lib_type, sdk_type in _ERRORS:
            if isinstance(exc, lib_type):
                raise sdk_type(str(exc), reason=exc.reason) from exc
        raise Unavailable(str(exc), reason=exc.reason) from exc


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _kernel_args(name: str) -> str:
    return " ".join(word for word in name.split() if word.startswith("vmsnap."))


class QemuAgent(HypervisorAgent):
    """Serve :class:`QemuHypervisor` through the SDK (``vmsnap-agent --hypervisor qemu``)."""

    def __init__(
        self,
        hypervisor: QemuHypervisor,
        name: str = "qemu-1",
        locators: LocatorMap | None = None,
        boot: m.BootMode = m.BootMode.TEST_GUEST,
    ) -> None:
        self.name = name
        self.hv = hypervisor
        self.locators = locators or LocatorMap()
        self.boot = boot

    def _vm(self, info: m.VmInfo) -> VM:
        state = VMState.RUNNING if info.state is m.VmState.RUNNING else VMState.STOPPED
        return VM(
            id=info.vm_id,
            name=info.name,
            state=state,
            volumes=tuple(
                Volume(
                    d.name,
                    d.locator,
                    d.size_bytes,
                    str(d.format),
                    native_snapshot=d.native_snapshot,
                )
                for d in info.disks
            ),
            memory_mib=info.memory_mib,
            agent=self.name,
        )

    # --- identity and VMs --------------------------------------------------------

    async def get_info(self) -> AgentInfo:
        return AgentInfo(
            name=self.name,
            hypervisor="qemu",
            version=__version__,
            quiesce_methods=frozenset(_METHODS),
            memory_snapshots=True,
            copy_native_disks=True,
            memory_with_array_disks=True,
        )

    async def describe_vm(self, vm_id: str) -> VM:
        with _contract_errors():
            return self._vm(await self.hv.describe_vm(vm_id))

    async def list_vms(self, page: Page) -> VMPage:
        with _contract_errors():
            vms = await self.hv.list_vms()
        # The token is the first id of the next page: stable when VMs come and go.
        rest = [v for v in vms if v.vm_id >= page.token] if page.token else vms
        chunk, following = rest[: page.size], rest[page.size : page.size + 1]
        return VMPage(
            vms=tuple(self._vm(v) for v in chunk),
            next_token=following[0].vm_id if following else "",
        )

    async def define_vm(self, vm: VM) -> VM:
        with _contract_errors():
            disks = []
            for v in vm.volumes:
                fmt = m.DiskFormat(v.format or "raw")
                path = self.locators.resolve(v.locator)
                ensure_image(path, fmt, v.size_bytes)
                disks.append(
                    m.DiskSpec(v.disk, path, fmt, locator=v.locator, size_bytes=v.size_bytes)
                )
            info = await self.hv.define_vm(
                vm.id,
                vm.memory_mib or DEFAULT_MEMORY_MIB,
                disks,
                kernel_args=_kernel_args(vm.name),
                name=vm.name,
                boot=self.boot,
            )
            return self._vm(info)

    async def undefine_vm(self, vm_id: str) -> None:
        with _contract_errors():
            await self.hv.undefine_vm(vm_id)

    async def start_vm(self, vm_id: str) -> VM:
        with _contract_errors():
            return self._vm(await self.hv.start_vm(vm_id))

    async def stop_vm(self, vm_id: str, force: bool) -> VM:
        with _contract_errors():
            return self._vm(await self.hv.stop_vm(vm_id, force=force))

    # --- quiesce -----------------------------------------------------------------

    async def quiesce(
        self,
        vm_id: str,
        method: QuiesceMethod,
        lease_seconds: float,
        best_effort: bool,
        operation_id: str,
        *,
        no_native_snapshot: bool = False,
        native_snapshot: NativeSnapshotAtFreeze | None = None,
    ) -> QuiesceResult:
        if method not in _METHODS:
            raise InvalidArgument.for_field("method", f"unsupported quiesce method {method.name}")
        warning = ""
        at_freeze = (
            (native_snapshot.snapshot_id, list(native_snapshot.disks) or None)
            if native_snapshot is not None
            else None
        )
        with _contract_errors():
            try:
                res = await self.hv.quiesce(
                    vm_id,
                    _METHODS[method],
                    lease_seconds,
                    operation_id,
                    cut=not no_native_snapshot,
                    native_snapshot=at_freeze,
                )
            except e.GuestAgentUnavailable as exc:
                if not best_effort:
                    raise
                warning = f"guest agent did not answer ({exc}): overlays only, crash consistent"
                log.warning("quiesce fallback", extra={"fields": {"vm_id": vm_id}})
                res = await self.hv.quiesce(
                    vm_id,
                    m.QuiesceMethod.OVERLAY,
                    lease_seconds,
                    operation_id,
                    cut=not no_native_snapshot,
                    native_snapshot=at_freeze,
                )
        return QuiesceResult(
            token=res.token,
            expire_time=_dt(res.expires_at),
            consistency=SdkConsistency[res.consistency.name],
            method=_SDK_METHODS[res.method],
            warning=warning,
            memory_state=MemoryState(
                location=f"file://{res.memory_path}",
                size_bytes=res.memory_bytes,
                paused_seconds=max(0.0, time.time() - (res.paused_at or time.time())),
                save_seconds=res.memory_save_s,
            )
            if res.memory_path
            else None,
            native_snapshot=self._native(vm_id, res.native) if res.native is not None else None,
            released=res.released,
        )

    async def renew_quiesce(self, token: str, lease_seconds: float) -> datetime:
        with _contract_errors():
            return _dt((await self.hv.renew_quiesce(token, lease_seconds)).expires_at)

    async def unquiesce(self, token: str, operation_id: str = "") -> UnquiesceResult:
        with _contract_errors():
            if token:
                one = await self.hv.unquiesce(token)
                done = [one] if one is not None else []
            else:
                done = await self.hv.unquiesce_operation(operation_id)
        if not done:
            return UnquiesceResult(frozen_for_seconds=0.0, thawed_now=False)
        # How long the disks were held stable (the guest itself may have been frozen
        # for milliseconds only, see quiesce.py).
        # For pause+memory: how long the VM was paused (the live copy ran before).
        longest = max(time.time() - (d.paused_at or d.started_at) for d in done)
        return UnquiesceResult(frozen_for_seconds=max(0.0, longest), thawed_now=True)

    async def list_quiesces(self, vm_id: str = "") -> Sequence[QuiesceInfo]:
        with _contract_errors():
            records = self.hv.list_quiesces(vm_id or None)
        return [
            QuiesceInfo(
                token=r.token,
                vm_id=r.vm_id,
                operation_id=r.operation_id,
                method=_SDK_METHODS[r.method],
                start_time=_dt(r.started_at) if r.started_at else None,
                expire_time=_dt(r.expires_at),
            )
            for r in sorted(records, key=lambda r: r.vm_id)
        ]

    # --- native snapshots --------------------------------------------------------

    @staticmethod
    def _native(vm_id: str, snap: m.NativeSnapshot) -> NativeSnapshot:
        return NativeSnapshot(
            snapshot_id=snap.snapshot_id,
            vm_id=vm_id,
            disks=snap.disks,
            include_memory=snap.include_memory,
            create_time=_dt(snap.created_at),
            size_bytes=snap.vm_state_size,
            memory_state=MemoryState(
                location=f"file://{snap.memory_path}",
                size_bytes=snap.vm_state_size,
                paused_seconds=snap.memory_paused_s,
                save_seconds=snap.memory_save_s,
            )
            if snap.memory_path
            else None,
        )

    async def take_native_snapshot(
        self, vm_id: str, snapshot_id: str, disks: Sequence[str], include_memory: bool
    ) -> NativeSnapshot:
        with _contract_errors():
            snap = await self.hv.take_native_snapshot(
                vm_id, snapshot_id, list(disks) or None, include_memory
            )
        return self._native(vm_id, snap)

    async def revert_native_snapshot(self, vm_id: str, snapshot_id: str) -> VM:
        with _contract_errors():
            return self._vm(await self.hv.revert_native_snapshot(vm_id, snapshot_id))

    async def delete_native_snapshot(self, vm_id: str, snapshot_id: str) -> None:
        with _contract_errors():
            await self.hv.delete_native_snapshot(vm_id, snapshot_id)

    async def list_native_snapshots(self, vm_id: str) -> Sequence[NativeSnapshot]:
        with _contract_errors():
            if vm_id:
                return [self._native(vm_id, s) for s in await self.hv.list_native_snapshots(vm_id)]
            found = []
            for vm in await self.hv.list_vms():
                try:
                    snaps = await self.hv.list_native_snapshots(vm.vm_id)
                except e.VmNotFound:  # undefined meanwhile
                    continue
                found += [self._native(vm.vm_id, s) for s in snaps]
            return found

    # --- clone to a new VM -------------------------------------------------------

    async def copy_native_disks(
        self, copy_id: str, vm_id: str, snapshot_id: str, disks: Sequence[CloneTarget]
    ) -> Sequence[Volume]:
        with _contract_errors():
            made = await self.hv.copy_native_disks(
                copy_id, vm_id, snapshot_id, [(t.disk, t.name) for t in disks]
            )
        return [
            Volume(c.disk, c.path.as_uri(), c.size_bytes, "qcow2", native_snapshot=True)
            for c in made
        ]

    async def delete_copied_disks(self, copy_id: str) -> None:
        with _contract_errors():
            await self.hv.delete_copied_disks(copy_id)
