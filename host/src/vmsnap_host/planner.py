"""The plan of a take: which group snapshots which disk, and whether to freeze.

Every serving driver is asked ``CanHandle`` in parallel, each under its own
short deadline (``can_handle_timeout_seconds``). A driver that is not serving,
fails or does not answer in time is *unreachable* for this take; it affects
only the disks it could claim. Per disk:

1. The disk has a recorded owner (the driver that took it in an earlier plan)
   that is unreachable: the take fails, UNAVAILABLE, naming the driver and the
   disk — even if the agent could snapshot the disk natively. Never a silent
   change of strategy.
2. Else the highest claim of a driver that answered wins. The hypervisor's
   native strategy competes at ``Priority.HYPERVISOR`` (a driver must say PLUGIN
   or HIGHEST to beat it), but only for a disk whose bytes a native snapshot
   holds (``Volume.native_snapshot``, reported by the agent); for any other disk
   a DEFAULT claim is enough. Ties go to the lower configured order, then the
   name.
3. No claim and the agent can snapshot the disk natively: the hypervisor group.
4. No claim, no native snapshot, and some driver unreachable: UNAVAILABLE naming
   the unreachable drivers (the disk may be theirs) and the disk.
5. No claim, no native snapshot, every driver answered: FAILED_PRECONDITION
   naming the disk — nobody can snapshot it.

A recorded owner that answered but no longer claims its disk (or is outbid)
loses it with a warning on the snapshot: a visible change, decided by a driver
that answered. The plan returns the owners to record (locator → driver) for
every disk a driver takes; the caller commits them with the snapshot. The plan
and the reasons are stored on the snapshot so that an operator can see why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vmsnap_host import checks
from vmsnap_host.decisions import DecisionCache, Key, decision_key
from vmsnap_host.model import Claim, Group, GroupKind, QuiescePolicy
from vmsnap_host.registry import AgentEntry, DriverEntry, Health, guarded
from vmsnap_sdk import (
    VM,
    Capability,
    Operation,
    Priority,
    VMState,
    Volume,
    VolumeDecision,
)
from vmsnap_sdk.errors import FailedPrecondition, Reason, Unavailable, VMSnapError

#: The longest text of a driver's that goes into a plan's error or warning.
MAX_DRIVER_TEXT = 200


@dataclass(frozen=True)
class Plan:
    """Groups in execution order (drivers by (order, name), the hypervisor last),
    warnings to store on the snapshot, and ``owners``: locator → driver name for
    every disk a driver group takes (to record with the snapshot)."""

    groups: tuple[Group, ...]
    warnings: tuple[str, ...] = ()
    owners: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Answer:
    entry: DriverEntry
    #: disk → the driver's decision; None when the driver is unreachable.
    decisions: Mapping[str, VolumeDecision] | None
    problem: str = ""


def _cut(text: str) -> str:
    return text if len(text) <= MAX_DRIVER_TEXT else text[: MAX_DRIVER_TEXT - 1] + "…"


def _native(volume: Volume) -> bool:
    # Volume.native_snapshot is being added to the SDK (compare=False); until then
    # a volume without it is one the agent has not vouched for.
    return bool(getattr(volume, "native_snapshot", False))


def _known(entry: DriverEntry, key: Key | None, cache: DecisionCache | None) -> _Answer | None:
    """A driver's answer without a call (not serving, or cached), else None."""
    if entry.health is not Health.SERVING or entry.info is None:
        return _Answer(entry, None, f"not serving: {_cut(entry.message)}")
    if cache is not None and key is not None:
        known = cache.get(entry.address, entry.generation, key)
        if known is not None:
            return _Answer(entry, known)
    return None


async def _ask(
    entry: DriverEntry,
    vm: VM,
    options: Mapping[str, str],
    timeout: float,
    cache: DecisionCache | None,
    key: Key | None,
) -> _Answer:
    """One driver's CanHandle (``_known`` had no answer); never raises (but for
    cancellation)."""
    generation = entry.generation  # the state this answer is asked in
    try:
        async with asyncio.timeout(timeout):
            decisions = await guarded(entry).can_handle(vm, vm.volumes, Operation.TAKE, options)
    except TimeoutError:
        return _Answer(entry, None, f"no CanHandle answer within {timeout:g} s")
    except VMSnapError as exc:
        return _Answer(entry, None, f"CanHandle failed: {exc.code.name}: {_cut(exc.message)}")
    except Exception as exc:  # noqa: BLE001 — isolation: a broken driver fails only its own disks
        return _Answer(entry, None, f"CanHandle failed: {_cut(f'{type(exc).__name__}: {exc}')}")
    try:
        # Decisions about disks not asked are dropped; duplicates, missing disks or
        # oversize reasons break the contract: that driver's disks fail like a down one.
        checked = checks.check_decisions(entry.name, [v.disk for v in vm.volumes], decisions)
    except checks.ContractViolation as exc:
        return _Answer(entry, None, _cut(exc.message))
    best = {d.disk: d for d in checked}
    if cache is not None and key is not None and entry.generation == generation:
        cache.put(entry.address, generation, key, best)
    return _Answer(entry, best)


def _disk(v: Volume) -> str:
    return f"disk {v.disk} ({v.locator})"


async def plan_take(
    vm: VM,
    drivers: Sequence[DriverEntry],
    agent: AgentEntry,
    owners: Mapping[str, str],
    *,
    include_memory: bool,
    options: Mapping[str, str],
    can_handle_timeout: float,
    cache: DecisionCache | None = None,
) -> Plan:
    """Decide the groups of a take of ``vm`` (as ``agent`` described it).

    ``drivers``: every registered driver entry, whatever its health
    (``Registry.drivers()``: tie-break order); serving ones are asked CanHandle
    through their guard, in parallel, each within ``can_handle_timeout`` seconds.
    ``agent``: the VM's agent entry (its name owns the hypervisor group; its info
    says whether memory snapshots are possible). ``owners``: the recorded owner
    of each volume, locator → driver name (``Store.volume_owners`` of the VM's
    locators). ``options``: the request's parameters, passed to CanHandle.
    ``cache``: answers to reuse and to keep (:mod:`vmsnap_host.decisions`).

    Raises FailedPrecondition (a memory plan that cannot be, or a disk nobody can
    snapshot) or Unavailable (a disk whose owner, or possible owner, is
    unreachable), with messages naming the disks and drivers.
    """
    if include_memory and not (agent.info and agent.info.memory_snapshots):
        raise FailedPrecondition(
            f"agent {agent.name} cannot include memory in a snapshot; take a disk-only "
            "snapshot (include_memory=false)",
            reason=Reason.MEMORY_UNSUPPORTED,
        )
    ordered = sorted(drivers, key=lambda e: (e.order, e.name, e.address))
    key = decision_key(vm, Operation.TAKE, options) if cache is not None else None
    # Answers known without a call first: a take whose every answer is cached plans
    # without a task or a loop turn (most takes of a VM after its first).
    known = [_known(e, key, cache) for e in ordered]
    asking = [e for e, a in zip(ordered, known, strict=True) if a is None]
    asked = iter(
        await asyncio.gather(
            *(_ask(e, vm, options, can_handle_timeout, cache, key) for e in asking)
        )
        if asking
        else ()
    )
    answers = [a if a is not None else next(asked) for a in known]
    answered = [a for a in answers if a.decisions is not None]
    unreachable = [a for a in answers if a.decisions is None]
    by_name = {a.entry.name: a for a in answers if a.entry.name}

    taken: dict[str, tuple[DriverEntry, Claim]] = {}  # disk → driver and claim
    native: list[Claim] = []
    warnings: list[str] = []
    owner_down: list[str] = []  # what to say, per disk
    missing: set[str] = set()  # recorded owners that are unreachable
    maybe_theirs: list[str] = []
    nobody: list[Volume] = []
    for v in vm.volumes:
        owner = owners.get(v.locator, "")
        floor = Priority.HYPERVISOR if _native(v) else Priority.CANT_HANDLE
        winner: tuple[DriverEntry, VolumeDecision] | None = None
        for a in answered:  # in (order, name) order: among equals the first keeps it
            assert a.decisions is not None
            d = a.decisions.get(v.disk)
            if d is not None and d.priority > (winner[1].priority if winner else floor):
                winner = (a.entry, d)
        owner_answer = by_name.get(owner)
        if owner and (owner_answer is None or owner_answer.decisions is None):
            why = owner_answer.problem if owner_answer else "not registered under that name"
            owner_down.append(
                f"{_disk(v)}: driver {owner} snapshotted it before and is not reachable ({why})"
            )
            missing.add(owner)
            continue
        if winner is not None:
            entry, d = winner
            reason = f"{entry.name}: {_cut(d.reason)}" if d.reason else entry.name
            taken[v.disk] = (entry, Claim(v.disk, d.priority, reason))
            if owner and owner != entry.name:
                warnings.append(
                    f"{_disk(v)} was snapshotted by driver {owner} before; it now goes to "
                    f"driver {entry.name}, which claims it at a higher priority"
                )
        elif _native(v):
            native.append(
                Claim(v.disk, Priority.HYPERVISOR, f"{agent.name}: hypervisor native strategy")
            )
            if owner:
                warnings.append(
                    f"{_disk(v)} was snapshotted by driver {owner} before; {owner} no longer "
                    "claims it, it goes to the hypervisor native strategy"
                )
        elif unreachable:
            maybe_theirs.append(_disk(v))
        else:
            nobody.append(v)

    if owner_down or maybe_theirs:
        down = "; ".join(f"{a.entry.label}: {a.problem}" for a in unreachable)
        parts = list(owner_down)
        if maybe_theirs:
            parts.append(
                f"{', '.join(maybe_theirs)}: no serving driver claims it and agent "
                f"{agent.name} cannot snapshot it natively; an unreachable driver may own it "
                f"({down})"
            )
        names = missing | (
            {a.entry.name or a.entry.address for a in unreachable} if maybe_theirs else set()
        )
        raise Unavailable(
            f"cannot plan a snapshot of VM {vm.id}: {'; '.join(parts)}. Retry when the "
            "driver is back; a driver that is gone for good must be removed first "
            "(vmsnap drivers remove NAME), then its disks go to whoever claims them",
            reason=Reason.DRIVER_UNREACHABLE,
            metadata={"drivers": ",".join(sorted(names))},
        )
    if nobody:
        raise FailedPrecondition(
            "; ".join(
                f"no registered driver claims {_disk(v)} and agent {agent.name} cannot "
                "snapshot it natively"
                for v in nobody
            )
            + ": register the driver for that array",
            reason=Reason.NO_STRATEGY,
        )
    if include_memory and taken and not (agent.info and agent.info.memory_with_array_disks):
        # An agent that can pause the VM and save its memory to a file lets the
        # drivers cut their disks meanwhile; an older one cannot.
        claimed = sorted(f"{d} by {e.name}" for d, (e, _) in taken.items())
        raise FailedPrecondition(
            f"agent {agent.name} keeps memory only in hypervisor-native snapshots, but these "
            f"disks are claimed by storage drivers: {', '.join(claimed)}; upgrade the agent "
            "(memory_with_array_disks) or take a disk-only snapshot (include_memory=false)",
            reason=Reason.MEMORY_NEEDS_HYPERVISOR,
        )

    groups: list[Group] = []
    for entry in ordered:
        claims = tuple(
            taken[v.disk][1] for v in vm.volumes if v.disk in taken and taken[v.disk][0] is entry
        )
        if claims:
            groups.append(Group(GroupKind.DRIVER, entry.name, claims))
    if native or include_memory:
        groups.append(Group(GroupKind.HYPERVISOR, agent.name, tuple(native)))
    for a in unreachable:
        warnings.append(
            f"driver {a.entry.label} was not reachable ({a.problem}); no disk of this VM is "
            "recorded as its, and every disk was claimed by a driver that answered or is "
            "held by a native snapshot"
        )
    recorded = {v.locator: taken[v.disk][0].name for v in vm.volumes if v.disk in taken}
    return Plan(tuple(groups), tuple(warnings), recorded)


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
        # Hypervisor alone: it pauses the VM while it saves RAM and disks together.
        # With arrays: the VM paused with its RAM saved (never a guest freeze: the
        # guest would be saved frozen, and come back frozen on revert) while the
        # drivers cut.
        return any(g.kind is GroupKind.DRIVER for g in groups)
    if policy is not QuiescePolicy.OFF or len(groups) > 1:
        return True  # the guest asked for, or two owners cannot cut at one instant
    if not groups:
        return False
    group = groups[0]
    if group.kind is GroupKind.HYPERVISOR:
        return False  # a native snapshot cuts all its disks atomically
    consistent = Capability.CONSISTENT_GROUP in capabilities.get(group.owner, frozenset())
    return len(group.disks) > 1 and not consistent
