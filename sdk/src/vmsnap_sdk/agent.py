"""The hypervisor agent: subclass :class:`HypervisorAgent`.

Domain interface for one hypervisor host, served by the SDK's server adapter
and reached by the host through :class:`vmsnap_sdk.AgentClient`. A freeze is
always under a lease: an agent must thaw by itself when the lease runs out.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime

from vmsnap_sdk._errors import Unimplemented
from vmsnap_sdk._types import (
    VM,
    AgentInfo,
    CloneTarget,
    NativeSnapshot,
    NativeSnapshotAtFreeze,
    Page,
    QuiesceInfo,
    QuiesceMethod,
    QuiesceResult,
    UnquiesceResult,
    VMPage,
    Volume,
)


class HypervisorAgent(abc.ABC):
    """Base class of a hypervisor agent."""

    @abc.abstractmethod
    async def get_info(self) -> AgentInfo:
        """Name, hypervisor kind, version, quiesce methods."""

    @abc.abstractmethod
    async def describe_vm(self, vm_id: str) -> VM:
        """The VM with state and disks; NotFound when unknown."""

    @abc.abstractmethod
    async def list_vms(self, page: Page) -> VMPage:
        """All VMs, paged."""

    async def define_vm(self, vm: VM) -> VM:
        """Define a VM (STOPPED)."""
        raise Unimplemented("DefineVM is not offered by this agent")

    async def undefine_vm(self, vm_id: str) -> None:
        """Remove a stopped VM's definition (idempotent)."""
        raise Unimplemented("UndefineVM is not offered by this agent")

    @abc.abstractmethod
    async def start_vm(self, vm_id: str) -> VM:
        """Start (idempotent)."""

    @abc.abstractmethod
    async def stop_vm(self, vm_id: str, force: bool) -> VM:
        """Stop (idempotent)."""

    @abc.abstractmethod
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
        """Freeze under a lease; thaw by yourself when it runs out.

        ``no_native_snapshot``: the caller takes no native snapshot under this
        freeze, so nothing need be prepared for one inside it (a hint: ignoring it
        is correct; refusing a later take_native_snapshot under the freeze with
        FailedPrecondition(VM_FROZEN) is allowed).

        ``native_snapshot``: the disk-only native snapshot the caller would take
        under this freeze. Taking it inside the freeze and answering it in
        ``QuiesceResult.native_snapshot`` saves the caller its take_native_snapshot
        call; ignoring it is correct (the caller then calls take_native_snapshot).
        With GUEST_FREEZE_AND_CUT, an agent that took it and holds nothing else may
        end the freeze in the same call and answer ``released=True``. Never given
        with ``no_native_snapshot`` or PAUSE_AND_SAVE_MEMORY (the adapter refuses
        those). The adapter passes it only to an agent whose quiesce accepts it."""

    @abc.abstractmethod
    async def renew_quiesce(self, token: str, lease_seconds: float) -> datetime:
        """Extend the lease; NotFound when the token is unknown or already thawed."""

    @abc.abstractmethod
    async def unquiesce(self, token: str, operation_id: str = "") -> UnquiesceResult:
        """Thaw; idempotent (unknown token → thawed_now=False).

        Exactly one of the two is set (the server adapter enforces it). With
        ``operation_id`` (and an empty ``token``) thaw every freeze that the
        quiesce of that operation made: how a host that lost the token (it
        crashed before recording it) still ends its freezes. None held by the
        operation is fine: thawed_now=False. ``thawed_now`` is True when at
        least one was thawed by this call, ``frozen_for_seconds`` the longest.
        """

    async def list_quiesces(self, vm_id: str = "") -> Sequence[QuiesceInfo]:
        """The freezes in force on a VM (every VM when ``vm_id`` is empty), each
        with the ``operation_id`` its quiesce was given; a freeze stays listed
        until it is fully undone (overlays committed), even past its lease."""
        raise Unimplemented("ListQuiesces is not offered by this agent")

    @abc.abstractmethod
    async def take_native_snapshot(
        self, vm_id: str, snapshot_id: str, disks: Sequence[str], include_memory: bool
    ) -> NativeSnapshot:
        """A hypervisor-native snapshot; idempotent on snapshot_id."""

    @abc.abstractmethod
    async def revert_native_snapshot(self, vm_id: str, snapshot_id: str) -> VM:
        """Revert to a native snapshot."""

    @abc.abstractmethod
    async def delete_native_snapshot(self, vm_id: str, snapshot_id: str) -> None:
        """Delete a native snapshot (idempotent)."""

    @abc.abstractmethod
    async def list_native_snapshots(self, vm_id: str) -> Sequence[NativeSnapshot]:
        """Native snapshots of a VM (all VMs when vm_id is empty)."""

    async def copy_native_disks(
        self, copy_id: str, vm_id: str, snapshot_id: str, disks: Sequence[CloneTarget]
    ) -> Sequence[Volume]:
        """New disks holding a native snapshot's bytes, one per ``disks`` entry in
        order (AgentInfo.copy_native_disks). Idempotent on ``copy_id``."""
        raise Unimplemented("CopyNativeDisks is not offered by this agent")

    async def delete_copied_disks(self, copy_id: str) -> None:
        """Delete the disks made for ``copy_id`` (idempotent)."""
        raise Unimplemented("DeleteCopiedDisks is not offered by this agent")
