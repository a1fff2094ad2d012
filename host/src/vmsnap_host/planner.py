"""The plan of a take: which group snapshots which disk, and whether to freeze.

Every serving driver is asked ``CanHandle`` in parallel. Per disk the highest
priority wins; the hypervisor's native strategy competes at
``Priority.HYPERVISOR`` (so a driver must say PLUGIN or HIGHEST to beat it, as
CloudStack's strategy priorities do) and takes every disk no driver won. Ties
between drivers go to the lower configured order, then the name. The plan and
the reasons are stored on the snapshot so that an operator can see why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vmsnap_host.model import Claim, Group, GroupKind, QuiescePolicy
from vmsnap_sdk import (
    VM,
    Capability,
    Operation,
    Priority,
    StorageDriver,
    VMState,
    VolumeDecision,
)
from vmsnap_sdk.errors import FailedPrecondition, VMSnapError


@dataclass(frozen=True)
class Candidate:
    """A serving driver as the planner sees it."""

    name: str
    order: int
    capabilities: frozenset[Capability]
    driver: StorageDriver


@dataclass(frozen=True)
class Plan:
    groups: tuple[Group, ...]
    warnings: tuple[str, ...] = ()


async def _ask(
    candidate: Candidate, vm: VM, options: Mapping[str, str]
) -> Sequence[VolumeDecision]:
    try:
        return await candidate.driver.can_handle(vm, vm.volumes, Operation.TAKE, options)
    except VMSnapError as exc:
        # A driver that cannot answer may own some of these disks: snapshotting
        # them natively instead would silently change the strategy. Fail loudly.
        raise type(exc)(
            f"driver {candidate.name} could not answer CanHandle: {exc.message}",
            reason=exc.reason,
        ) from exc


async def plan_take(
    vm: VM,
    candidates: Sequence[Candidate],
    agent_name: str,
    *,
    include_memory: bool,
    memory_supported: bool,
    options: Mapping[str, str],
    not_serving: Sequence[str] = (),
) -> Plan:
    """Decide the groups of a take (raises FailedPrecondition for an impossible memory plan)."""
    ordered = sorted(candidates, key=lambda c: (c.order, c.name))
    answers = await asyncio.gather(*(_ask(c, vm, options) for c in ordered))
    best: dict[str, tuple[Candidate | None, Claim]] = {
        v.disk: (None, Claim(v.disk, Priority.HYPERVISOR, "hypervisor native strategy"))
        for v in vm.volumes
    }
    for candidate, decisions in zip(ordered, answers, strict=True):
        for decision in decisions:
            if decision.disk not in best:
                continue  # a decision about a disk we did not ask about: ignore
            _, current = best[decision.disk]
            # Strictly greater: among equals the earlier (order, name) keeps the disk,
            # and the hypervisor keeps it against an equal HYPERVISOR claim.
            if decision.priority > current.priority:
                reason = (
                    f"{candidate.name}: {decision.reason}" if decision.reason else candidate.name
                )
                best[decision.disk] = (candidate, Claim(decision.disk, decision.priority, reason))

    claimed = {disk: c for disk, (c, _) in best.items() if c is not None}
    if include_memory:
        if not memory_supported:
            raise FailedPrecondition(
                f"agent {agent_name} cannot include memory in a snapshot; take a disk-only "
                "snapshot (include_memory=false)",
                reason="MEMORY_UNSUPPORTED",
            )
        if claimed:
            owners = sorted({f"{d} by {c.name}" for d, c in claimed.items()})
            raise FailedPrecondition(
                "a memory snapshot is hypervisor-only, but these disks are claimed by storage "
                f"drivers: {', '.join(owners)}; take a disk-only snapshot (include_memory=false)",
                reason="MEMORY_NEEDS_HYPERVISOR",
            )

    groups: list[Group] = []
    for candidate in ordered:
        claims = tuple(best[v.disk][1] for v in vm.volumes if claimed.get(v.disk) is candidate)
        if claims:
            groups.append(Group(GroupKind.DRIVER, candidate.name, claims))
    native = tuple(best[v.disk][1] for v in vm.volumes if v.disk not in claimed)
    if native or include_memory:
        groups.append(Group(GroupKind.HYPERVISOR, agent_name, native))
    warnings = tuple(
        f"driver {name} was not serving and was not asked; disks it would claim went to "
        "the hypervisor strategy"
        for name in not_serving
    )
    return Plan(tuple(groups), warnings)


def needs_freeze(
    groups: Sequence[Group],
    policy: QuiescePolicy,
    vm_state: VMState,
    capabilities: Mapping[str, frozenset[Capability]],
    include_memory: bool = False,
) -> bool:
    """Whether the take must freeze the VM (DESIGN.md, "Take, step by step", 3)."""
    if vm_state is not VMState.RUNNING:
        return False  # nothing writes to the disks of a stopped VM
    if include_memory:
        # One hypervisor group (plan_take's rule): the hypervisor pauses the VM while
        # it saves RAM and disks together, and a guest frozen first would be saved
        # frozen (and come back frozen on revert).
        return False
    if policy is not QuiescePolicy.OFF or len(groups) > 1:
        return True  # the guest asked for, or two owners cannot cut at one instant
    if not groups:
        return False
    group = groups[0]
    if group.kind is GroupKind.HYPERVISOR:
        return False  # a native snapshot cuts all its disks atomically
    consistent = Capability.CONSISTENT_GROUP in capabilities.get(group.owner, frozenset())
    return len(group.disks) > 1 and not consistent
