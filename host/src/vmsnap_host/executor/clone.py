"""Clone: a new VM whose disks are new volumes cloned from a READY snapshot.

The steps (docs/design.md, "Clone to a new VM"): journal every driver that
will be asked (and the clone id it is asked with) before the first
CloneVolumes; clone group by group, each answer checked against the contract;
journal that the new VM is about to be defined, define it STOPPED on the agent;
finish. The source VM and the snapshot are never touched.

On any failure, or after a host restart (recovery resumes the operation here):
DeleteClonedVolumes(clone id) on every journaled driver — by the id alone, so
volumes of a call whose answer was lost are found too — and UndefineVM of the
new VM when its definition had started; then the operation ends with the cause.
A delete that cannot be done now (a driver down) leaves the operation open: it
is retried on the reconcile interval until nothing is left behind.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import asdict

from vmsnap_host import checks
from vmsnap_host.config import Settings
from vmsnap_host.executor.errors import OperationFailed, as_error, error_info
from vmsnap_host.executor.freeze import with_deadline
from vmsnap_host.model import ErrorInfo, GroupKind, OperationRecord, Snapshot, SnapshotState
from vmsnap_host.registry import Registry
from vmsnap_host.state import LeaseLost, OperationClosed, StaleMove
from vmsnap_host.store import Store
from vmsnap_sdk import VM, CloneRequest, CloneTarget, VMState, Volume
from vmsnap_sdk.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    Internal,
    NotFound,
    Reason,
    TransientError,
    VMSnapError,
)

log = logging.getLogger("vmsnap.host.executor")

_NOT_NAME = re.compile(r"[^A-Za-z0-9-]")


def clone_id(operation_id: str, index: int) -> str:
    """The clone id of the operation's ``index``-th driver group: short, because
    arrays build paths and names from it (ONTAP: /vmsnap-clones/<id>/...)."""
    return f"{operation_id[:24]}-{index}"


def copy_id(operation_id: str, index: int) -> str:
    """The copy id of the operation's ``index``-th hypervisor group."""
    return f"{operation_id[:24]}-n{index}"


def target_name(new_vm_id: str, disk: str) -> str:
    """The new volume's name on its array: ``<new VM>-<disk>`` in [A-Za-z0-9-], ≤ 63."""
    return _NOT_NAME.sub("-", f"{new_vm_id}-{disk}")[:63]


class CloneVM:
    def __init__(self, store: Store, registry: Registry, settings: Settings) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings

    async def run(self, op: OperationRecord, snap: Snapshot) -> None:
        """Make the new VM: done, or compensated and OperationFailed raised (a
        VMSnapError when the compensation must be retried later)."""
        try:
            await self._run(op, snap)
        except (StaleMove, OperationClosed, LeaseLost):
            raise  # another worker owns the operation now: it compensates
        except Exception as exc:  # noqa: BLE001 - every failure is compensated
            await self.fail(op, as_error(exc, "clone"))

    async def _run(self, op: OperationRecord, snap: Snapshot) -> None:
        new_vm_id = str(op.params["new_vm_id"])
        if snap.state is not SnapshotState.READY:
            raise FailedPrecondition(
                f"snapshot {snap.id} is {snap.state.name} now; only a READY snapshot can be cloned",
                reason=Reason.SNAPSHOT_STATE,
            )
        agent = self.registry.agent(str(op.params["agent"]))
        timeout = self.settings.call_timeout_seconds
        try:
            await with_deadline(agent.describe_vm(new_vm_id), timeout, "DescribeVM")
        except NotFound:
            pass
        else:
            raise AlreadyExists(
                f"VM {new_vm_id} was defined on agent {op.params['agent']} meanwhile; "
                "choose another id",
                reason=Reason.VM_ID_IN_USE,
            )
        groups = [g for g in snap.groups if g.kind is GroupKind.DRIVER]
        native = [g for g in snap.groups if g.kind is GroupKind.HYPERVISOR]
        owners = [g.owner for g in groups]
        # Journaled before the first CloneVolumes (CopyNativeDisks): after a crash,
        # recovery knows every driver (agent) that may hold volumes of this clone.
        await self.store.write(
            self.store.w_journal(
                op.id,
                f"cloning {len(groups)} groups",
                10,
                clone_drivers=owners,
                copy_agents=[g.owner for g in native],
            )
        )
        parameters = {str(k): str(v) for k, v in dict(op.params.get("parameters", {})).items()}
        cloned: dict[str, Volume] = {}
        for index, group in enumerate(groups):
            if group.result is None:
                raise Internal(f"driver {group.owner} has no stored result of snapshot {snap.id}")
            targets = tuple(CloneTarget(d, target_name(new_vm_id, d)) for d in group.disks)
            request = CloneRequest(
                clone_id=clone_id(op.id, index),
                vm_snapshot_id=snap.id,
                snapshot=group.result,
                new_vm_id=new_vm_id,
                targets=targets,
                parameters=parameters,
            )
            made = await with_deadline(
                self.registry.driver(group.owner).clone_volumes(request),
                self.settings.take_timeout_seconds,
                f"CloneVolumes on driver {group.owner}",
            )
            sources = [v.locator for v in group.result.volume_snapshots]
            for volume in checks.check_clone_result(group.owner, group.disks, sources, made):
                cloned[volume.disk] = volume
            await self.store.write(
                self.store.w_journal(
                    op.id,
                    f"cloned {index + 1} of {len(groups)} groups",
                    10 + 70 * (index + 1) // max(len(groups), 1),
                    volumes={d: v.locator for d, v in cloned.items()},
                )
            )
        for index, group in enumerate(native):
            # Hypervisor-native disks: copied by the agent that holds the snapshot
            # (admission made sure the new VM is defined on it).
            targets = tuple(CloneTarget(d, target_name(new_vm_id, d)) for d in group.disks)
            made = await with_deadline(
                self.registry.agent(group.owner).copy_native_disks(
                    copy_id(op.id, index), snap.vm_id, snap.id, targets
                ),
                self.settings.take_timeout_seconds,
                f"CopyNativeDisks on agent {group.owner}",
            )
            sources = [v.locator for v in group.result.volume_snapshots] if group.result else []
            for volume in checks.check_clone_result(group.owner, group.disks, sources, made):
                cloned[volume.disk] = volume
        source = await self._source_vm(snap)
        disks = [d for g in snap.groups for d in g.disks]
        if source is not None:
            order = [v.disk for v in source.volumes if v.disk in cloned]
            disks = order + [d for d in disks if d not in order]
        volumes = tuple(
            Volume(
                disk=d,
                locator=cloned[d].locator,
                size_bytes=cloned[d].size_bytes,
                format=(src.format if source and (src := source.volume(d)) else "raw"),
            )
            for d in disks
        )
        new_vm = VM(
            id=new_vm_id,
            name=str(op.params.get("name") or new_vm_id),
            state=VMState.STOPPED,
            volumes=volumes,
            memory_mib=source.memory_mib if source is not None else 0,
        )
        await self.store.write(
            self.store.w_journal(op.id, "defining the new VM", 90, defining=True)
        )
        await with_deadline(agent.define_vm(new_vm), timeout, "DefineVM")
        steps = [self.store.w_finish(op.id, None, "done")]
        if op.project:
            # The new VM is its source's project's, from the moment it exists for the caller.
            steps.insert(0, self.store.w_set_vm_project(new_vm_id, op.project))
        await self.store.write(*steps)
        log.info(
            "VM cloned from a snapshot",
            extra={"fields": {"snapshot": snap.id, "new_vm": new_vm_id, "disks": disks}},
        )

    async def _source_vm(self, snap: Snapshot) -> VM | None:
        """The source VM as its agent describes it now (memory, disk order and
        formats for the new VM); None when it is gone."""
        try:
            agent = self.registry.agent(snap.agent)
            return await with_deadline(
                agent.describe_vm(snap.vm_id), self.settings.call_timeout_seconds, "DescribeVM"
            )
        except VMSnapError:
            return None

    async def fail(self, op: OperationRecord, cause: VMSnapError) -> None:
        """Compensate, then end the operation with ``cause``; raises OperationFailed.
        The cause is journaled first: a compensation that cannot finish now (a
        driver down) raises and leaves the operation open, and the retry on the
        reconcile interval ends it with the same cause."""
        info = error_info(cause)
        await self.store.write(
            self.store.w_journal(op.id, "compensating", 95, failure=asdict(info))
        )
        await self._compensate_and_finish(op, info)
        raise OperationFailed(cause)

    async def _compensate_and_finish(self, op: OperationRecord, info: ErrorInfo) -> None:
        await self.compensate(op)
        await self.store.write(self.store.w_finish(op.id, info, "failed"))
        log.warning(
            "clone failed; compensated",
            extra={"fields": {"operation": op.id, "error": info.message}},
        )

    async def roll_back(self, op: OperationRecord) -> None:
        """A clone interrupted by a host restart: undo it, end it HOST_RESTARTED."""
        cause = Aborted(
            f"the host restarted while cloning (step {op.step or 'queued'}); the clone was "
            "rolled back (its volumes deleted, no new VM left): clone again with a new "
            "request_id",
            reason=Reason.HOST_RESTARTED,
        )
        current = (await self.store.read(self.store.get_operation, op.id)) or op
        failure = current.journal.get("failure")
        if isinstance(failure, dict):
            # Failed before the restart, compensation unfinished: the first cause stays.
            await self._compensate_and_finish(current, ErrorInfo(**failure))
            return
        try:
            await self.fail(current, cause)
        except OperationFailed:
            return

    async def compensate(self, op: OperationRecord) -> None:
        """Delete every cloned volume and the new VM's definition, from the journal."""
        current = (await self.store.read(self.store.get_operation, op.id)) or op
        journal = current.journal
        if journal.get("defining"):
            agent = self.registry.agent(str(op.params["agent"]))
            await self._retry(
                lambda: agent.undefine_vm(str(op.params["new_vm_id"])),
                f"UndefineVM {op.params['new_vm_id']} on agent {op.params['agent']}",
            )
        for index, owner in enumerate(journal.get("copy_agents", [])):
            cid = copy_id(op.id, index)
            agent_name = str(owner)
            await self._retry(
                lambda a=agent_name, c=cid: self.registry.agent(a).delete_copied_disks(c),
                f"DeleteCopiedDisks {cid} on agent {agent_name}",
            )
        for index, owner in enumerate(journal.get("clone_drivers", [])):
            cid = clone_id(op.id, index)
            driver_name = str(owner)
            await self._retry(
                lambda d=driver_name, c=cid: self.registry.driver(d).delete_cloned_volumes(c),
                f"DeleteClonedVolumes {cid} on driver {driver_name}",
            )

    async def _retry(self, call: object, what: str) -> None:
        assert callable(call)
        for attempt in range(3):
            try:
                await with_deadline(call(), self.settings.call_timeout_seconds, what)
                return
            except (TransientError, Aborted):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.1 * 2**attempt)


__all__ = ["CloneVM", "clone_id", "copy_id", "target_name"]
