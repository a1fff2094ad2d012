"""DiscoverSnapshots and AdoptSnapshot: array snapshots made elsewhere, into the catalog.

Discovery plans the VM as a take would (which driver owns each disk), then asks
each owning driver with CAPABILITY_LIST_UNMANAGED for the snapshots of its disks
that no vmsnap host made. It only reads: nothing on any array changes. Each
array object (an Element group snapshot) is one candidate set, named
``<driver>/<object id>``; a set already adopted by a live catalog snapshot is
not offered again.

Adopting a set that holds every disk of the VM records a READY snapshot with one
driver group whose result is the listed object (its handles, group handle and
metadata): revert and delete go to the driver like for any snapshot, and the
driver finds the object from that result (the contract of
ListUnmanagedSnapshots). Its consistency is CRASH when one array cut every disk
at one instant (a consistency group), else UNSPECIFIED. The snapshot is neither
the VM's current one nor anybody's parent: it was not cut from the VM's history
as the catalog knows it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from vmsnap_host.model import (
    Claim,
    Group,
    GroupKind,
    OperationRecord,
    OperationType,
    Snapshot,
    SnapshotState,
)
from vmsnap_host.planner import plan_take
from vmsnap_host.registry import Health, Registry
from vmsnap_host.store import Store
from vmsnap_sdk import VM, Capability, Consistency, Page, Priority, UnmanagedSnapshot
from vmsnap_sdk.errors import FailedPrecondition, NotFound, Reason

#: Snapshot.parameters key naming the discovered set a snapshot was adopted from.
ADOPTED_FROM = "vmsnap.adopted_from"
#: Most unmanaged snapshots read from one driver in one discovery.
MAX_LISTED = 5000


@dataclass(frozen=True)
class DiscoveredSet:
    id: str
    driver: str
    snapshot: UnmanagedSnapshot
    complete: bool

    @property
    def consistency(self) -> Consistency:
        if self.snapshot.consistent_group:
            return Consistency.CRASH
        return Consistency.UNSPECIFIED


@dataclass(frozen=True)
class Discovery:
    vm: VM
    agent: str
    sets: tuple[DiscoveredSet, ...]
    unsupported_drivers: tuple[str, ...]


class Adopter:
    def __init__(self, store: Store, registry: Registry, can_handle_timeout: float) -> None:
        self.store = store
        self.registry = registry
        self.can_handle_timeout = can_handle_timeout

    async def _adopted(self, vm_id: str) -> set[str]:
        """Set ids live snapshots of the VM were adopted from."""
        out: set[str] = set()
        after = 0
        while True:
            page = await self.store.read(self.store.list_snapshots, vm_id, after, 500, False)
            out |= {
                s.parameters[ADOPTED_FROM]
                for _, s in page
                if ADOPTED_FROM in s.parameters and s.state is not SnapshotState.ERROR
            }
            if len(page) < 500:
                return out
            after = page[-1][0]

    async def discover(self, vm_id: str) -> Discovery:
        agent_entry, vm = await self.registry.find_vm(vm_id)
        plan = await plan_take(
            vm,
            self.registry.drivers(),
            agent_entry,
            (await self.store.read(self.store.volume_owners, [v.locator for v in vm.volumes])),
            include_memory=False,
            options={},
            can_handle_timeout=self.can_handle_timeout,
        )
        all_disks = {v.disk for v in vm.volumes}
        by_disk = {v.disk: v for v in vm.volumes}
        adopted = await self._adopted(vm_id)
        sets: list[DiscoveredSet] = []
        unsupported: list[str] = []
        for group in plan.groups:
            if group.kind is not GroupKind.DRIVER:
                continue
            entry = self.registry.driver_entry(group.owner)
            if entry is None or entry.health is not Health.SERVING:
                continue  # the plan fails first for a driver that is down
            if Capability.LIST_UNMANAGED not in self.registry.capabilities(group.owner):
                unsupported.append(group.owner)
                continue
            driver = self.registry.driver(group.owner)
            volumes = [by_disk[d] for d in group.disks]
            token, listed = "", 0
            while listed < MAX_LISTED:
                page = await driver.list_unmanaged_snapshots(volumes, Page(size=500, token=token))
                listed += len(page.snapshots)
                for u in page.snapshots:
                    set_id = f"{group.owner}/{u.id}"
                    if set_id in adopted:
                        continue
                    disks = {v.disk for v in u.volume_snapshots}
                    sets.append(DiscoveredSet(set_id, group.owner, u, disks == all_disks))
                token = page.next_token
                if not token:
                    break
        sets.sort(
            key=lambda s: s.snapshot.create_time.timestamp() if s.snapshot.create_time else 0,
            reverse=True,
        )
        return Discovery(vm, agent_entry.name, tuple(sets), tuple(unsupported))

    async def prepare(
        self,
        request_id: str,
        vm_id: str,
        set_id: str,
        name: str,
        description: str,
        owner: str,
    ) -> tuple[Snapshot, OperationRecord]:
        """The READY snapshot and the done ADOPT operation to commit (the caller
        checks names, bounds and request ids, and commits)."""
        found = await self.discover(vm_id)
        chosen = next((s for s in found.sets if s.id == set_id), None)
        if chosen is None:
            raise NotFound(
                f"no discovered set {set_id} of VM {vm_id} (it is gone, adopted already, or "
                "holds a disk of another VM); list them with DiscoverSnapshots",
                reason=Reason.DISCOVERED_SET_NOT_FOUND,
            )
        if not chosen.complete:
            held = sorted(v.disk for v in chosen.snapshot.volume_snapshots)
            missing = sorted({v.disk for v in found.vm.volumes} - set(held))
            raise FailedPrecondition(
                f"set {set_id} holds disks {', '.join(held)} of VM {vm_id}, not "
                f"{', '.join(missing)}: a revert to it could not restore the whole VM",
                reason=Reason.SET_INCOMPLETE,
            )
        snap_id = uuid.uuid4().hex
        u = chosen.snapshot
        why = f"adopted from {set_id}" + (f" ({u.name})" if u.name else "")
        group = Group(
            kind=GroupKind.DRIVER,
            owner=chosen.driver,
            claims=tuple(Claim(v.disk, Priority.PLUGIN, why) for v in u.volume_snapshots),
            result=u.as_result(snap_id, vm_id),
        )
        snap = Snapshot(
            id=snap_id,
            vm_id=vm_id,
            name=name,
            state=SnapshotState.READY,
            agent=found.agent,
            description=description,
            consistency=chosen.consistency,
            groups=(group,),
            parameters={ADOPTED_FROM: set_id},
            warnings=(
                "adopted: made on the array outside vmsnap"
                + (f" at {u.create_time.isoformat()}" if u.create_time else "")
                + "; the VM was not frozen by vmsnap for it",
            ),
        )
        op = OperationRecord(
            id=uuid.uuid4().hex,
            type=OperationType.ADOPT,
            vm_id=vm_id,
            vm_snapshot_id=snap_id,
            request_id=request_id,
            done=True,
            progress=100,
            step="adopted",
            params={"name": name, "set_id": set_id},
            owner=owner,
        )
        return snap, op


__all__ = ["ADOPTED_FROM", "Adopter", "DiscoveredSet", "Discovery"]
