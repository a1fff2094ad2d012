"""The invariants, as functions of what was observed: each returns its violations.

They read nothing themselves (the runner and the freeze monitor gather the
observations from the processes), so that a unit test can feed each one a
fabricated fault and see it reported (tests/chaos/test_checks.py).

A disk's content is the bytes read back from the regions the harness writes
(:data:`Content`); None means unknown or not checkable, and is never a violation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vmsnap_host.client import Operation, VMSnapshot, VMSnapshotState

Content = bytes

FREEZE = "freeze"
SETTLED = "settled"
READY = "ready"
ORPHANS = "orphans"
ONE_SIDE = "one_side"
NOT_RUNNING = "not_running"

#: The invariants in report order, with what each promises.
INVARIANTS: dict[str, str] = {
    FREEZE: "no VM frozen past its lease or after its operation ended",
    SETTLED: "no operation unfinished, no snapshot ALLOCATED/CREATING/REVERTING/EXPUNGING",
    READY: "every acknowledged READY snapshot is still READY and a revert to it restores "
    "every disk's bytes",
    ORPHANS: "after a reconcile pass, no object on an array or the agent without a live record",
    ONE_SIDE: "every interrupted revert left all disks on one side (snapshot or before)",
    NOT_RUNNING: "no array overwrote a disk of a VM while the VM was RUNNING",
}

TRANSITIONAL = frozenset(
    {
        VMSnapshotState.ALLOCATED,
        VMSnapshotState.CREATING,
        VMSnapshotState.REVERTING,
        VMSnapshotState.EXPUNGING,
    }
)
#: Records whose objects may exist on an array or the agent.
LIVE = TRANSITIONAL | {VMSnapshotState.READY}


@dataclass(frozen=True)
class Violation:
    invariant: str
    #: What it is about: a VM, a snapshot, an operation or an array object.
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.invariant}] {self.subject}: {self.detail}"


def dedupe(violations: Iterable[Violation]) -> list[Violation]:
    """One violation per invariant and subject (e.g. per snapshot), first seen first.

    A snapshot that fails to restore during the run and again at the end is one
    broken snapshot; the detail says how many times it was seen.
    """
    first: dict[tuple[str, str], Violation] = {}
    seen: dict[tuple[str, str], int] = {}
    for v in violations:
        key = (v.invariant, v.subject)
        first.setdefault(key, v)
        seen[key] = seen.get(key, 0) + 1
    return [
        v
        if seen[k] == 1
        else Violation(v.invariant, v.subject, f"{v.detail} (seen {seen[k]} times)")
        for k, v in first.items()
    ]


def digest(content: Content | None) -> str:
    """A short name for a content in reports."""
    if content is None:
        return "unknown"
    return hashlib.sha256(content).hexdigest()[:10]


def plan_text(snapshot: VMSnapshot | None) -> str:
    """Which driver or agent took each disk of a snapshot, for a report."""
    if snapshot is None:
        return "plan unknown"
    return ", ".join(
        f"{disk}: {g.kind.name.lower()} {g.owner}" for g in snapshot.groups for disk in g.disks
    )


def compared(expected: Mapping[str, Content | None], actual: Mapping[str, Content | None]) -> int:
    """How many disks a check really compared (both sides known)."""
    return sum(1 for d, want in expected.items() if want is not None and actual.get(d) is not None)


# --- freezes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Freeze:
    """A freeze in force, as the agent reports it (times in unix seconds)."""

    vm_id: str
    operation_id: str
    expire_time: float
    token: str = ""

    @property
    def key(self) -> str:
        return f"{self.vm_id}/{self.token or self.operation_id or self.expire_time}"


def check_freezes(
    freezes: Iterable[Freeze],
    *,
    now: float,
    ended: Mapping[str, float],
    grace: float,
    lease_trusted: bool = True,
    idle: bool = False,
) -> list[Violation]:
    """Freezes that outlived their lease, or the operation that took them.

    ``ended`` maps an operation id to when it was seen done (unix seconds).
    ``lease_trusted`` is False while the agent is down or just restarted: a dead
    agent can thaw nothing, neither by its lease nor at the host's request (it
    resolves expired leases at start-up), so its freezes are no verdict then.
    ``idle``: no operation runs at all, so any freeze is one too many.
    """
    found = []
    for f in freezes:
        if not lease_trusted:
            continue
        if now > f.expire_time + grace:
            found.append(
                Violation(
                    FREEZE,
                    f.key,
                    f"frozen {now - f.expire_time:.1f} s past its lease "
                    f"(operation {f.operation_id or '?'})",
                )
            )
        elif f.operation_id in ended and now > ended[f.operation_id] + grace:
            found.append(
                Violation(
                    FREEZE,
                    f.key,
                    f"still frozen {now - ended[f.operation_id]:.1f} s after operation "
                    f"{f.operation_id} ended",
                )
            )
        elif idle:
            found.append(
                Violation(
                    FREEZE,
                    f.key,
                    f"frozen while no operation runs (operation {f.operation_id or '?'})",
                )
            )
    return found


# --- no disk overwritten under a running guest ----------------------------------------


@dataclass(frozen=True)
class Power:
    """A VM's power state from ``mono`` on (the sim agent's power journal)."""

    mono: float
    vm_id: str
    state: str


@dataclass(frozen=True)
class Overwrite:
    """An array asked to replace a disk's data (an emulator's overwrites journal),
    at ``mono``; ``disk`` is the disk's locator."""

    mono: float
    call: str
    disk: str


def check_not_running(
    overwrites: Iterable[Overwrite],
    power: Iterable[Power],
    owners: Mapping[str, tuple[str, str]],
) -> list[Violation]:
    """Overwrites of a disk whose VM was RUNNING then. ``owners`` maps a disk's
    locator to (VM id, disk name); overwrites of anything else (a kept state, a
    snapshot's own copy) are not a VM's disk. A VM with no power entry before an
    overwrite was never started. Both journals use one clock (CLOCK_MONOTONIC):
    the agent writes a start before it takes effect and a stop once durable, the
    emulator an overwrite when asked, so an overlap is never missed."""
    timeline: dict[str, list[Power]] = {}
    for p in sorted(power, key=lambda p: p.mono):
        timeline.setdefault(p.vm_id, []).append(p)
    found = []
    for o in overwrites:
        owner = owners.get(o.disk)
        if owner is None:
            continue
        vm_id, disk = owner
        before = [p for p in timeline.get(vm_id, []) if p.mono <= o.mono]
        if before and before[-1].state == "RUNNING":
            found.append(
                Violation(
                    NOT_RUNNING,
                    f"{vm_id}/{disk}",
                    f"{o.call} overwrote it while {vm_id} was RUNNING (started "
                    f"{o.mono - before[-1].mono:.3f} s before)",
                )
            )
    return found


# --- nothing transitional -----------------------------------------------------------------


def check_settled(
    operations: Iterable[Operation], snapshots: Iterable[VMSnapshot]
) -> list[Violation]:
    found = [
        Violation(
            SETTLED,
            f"operation {op.id}",
            f"{op.type.name} of {op.vm_snapshot_id} on VM {op.vm_id} still running "
            f"(step {op.step!r}, {op.progress_percent} %)",
        )
        for op in operations
        if not op.done
    ]
    found += [
        Violation(
            SETTLED,
            f"snapshot {s.id}",
            f"{s.name} of VM {s.vm_id} is {s.state.name}",
        )
        for s in snapshots
        if s.state in TRANSITIONAL
    ]
    return found


# --- acknowledged READY snapshots --------------------------------------------------------


def check_still_ready(
    acknowledged: Iterable[str],
    deleted: set[str],
    states: Mapping[str, VMSnapshotState],
) -> list[Violation]:
    """Every acknowledged READY snapshot the harness did not delete is READY."""
    found = []
    for snapshot_id in acknowledged:
        if snapshot_id in deleted:
            continue
        state = states.get(snapshot_id)
        if state is not VMSnapshotState.READY:
            what = state.name if state is not None else "gone from the catalog"
            found.append(
                Violation(READY, f"snapshot {snapshot_id}", f"acknowledged READY, now {what}")
            )
    return found


def check_restored(
    snapshot_id: str,
    expected: Mapping[str, Content | None],
    actual: Mapping[str, Content | None],
    *,
    when: str,
    plan: str = "",
) -> list[Violation]:
    """After a successful revert every disk holds what it held at the take."""
    wrong = [
        f"{disk} holds {digest(actual.get(disk))}, not {digest(want)}"
        for disk, want in sorted(expected.items())
        if want is not None and actual.get(disk) is not None and actual[disk] != want
    ]
    if not wrong:
        return []
    return [
        Violation(
            READY,
            f"snapshot {snapshot_id}",
            f"revert {when} succeeded but did not restore: "
            + "; ".join(wrong)
            + (f" (plan: {plan})" if plan else ""),
        )
    ]


def check_revert_failed(snapshot_id: str, outcome: str, *, when: str) -> list[Violation]:
    """A revert to a READY snapshot on a healthy stack must succeed."""
    return [
        Violation(READY, f"snapshot {snapshot_id}", f"revert {when} did not succeed: {outcome}")
    ]


# --- one side --------------------------------------------------------------------------


def check_one_side(
    label: str,
    before: Mapping[str, Content | None],
    target: Mapping[str, Content | None],
    actual: Mapping[str, Content | None],
) -> list[Violation]:
    """After a revert that did not succeed, all disks at the snapshot or all as before."""
    sides: dict[str, list[str]] = {}
    strangers = []
    for disk in sorted(actual):
        got, want, was = actual[disk], target.get(disk), before.get(disk)
        if got is None or want is None:
            continue
        at_target, at_before = got == want, was is not None and got == was
        if at_target and at_before:
            continue  # the snapshot and the state before agree on this disk
        if at_target:
            sides.setdefault("snapshot", []).append(disk)
        elif at_before:
            sides.setdefault("before", []).append(disk)
        elif was is None:
            sides.setdefault("not the snapshot", []).append(disk)
        else:
            strangers.append(disk)
    found = [
        Violation(
            ONE_SIDE,
            label,
            f"{disk} holds {digest(actual[disk])}: neither the snapshot's "
            f"{digest(target.get(disk))} nor the content before {digest(before.get(disk))}",
        )
        for disk in strangers
    ]
    if "snapshot" in sides and len(sides) > 1:
        found.append(
            Violation(
                ONE_SIDE,
                label,
                "disks on both sides: "
                + "; ".join(f"{side}: {', '.join(disks)}" for side, disks in sorted(sides.items())),
            )
        )
    return found


# --- orphans ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    """A snapshot object that an array (through its driver) or the agent holds."""

    where: str
    vm_snapshot_id: str
    vm_id: str = ""


def check_orphans(objects: Iterable[StoredObject], live: set[str]) -> list[Violation]:
    """Objects whose catalog record is not live (absent, ERROR or REMOVED)."""
    return [
        Violation(
            ORPHANS,
            f"{o.where}: {o.vm_snapshot_id}",
            f"object of VM {o.vm_id or '?'} with no live catalog record",
        )
        for o in objects
        if o.vm_snapshot_id not in live
    ]


def live_ids(snapshots: Iterable[VMSnapshot]) -> set[str]:
    return {s.id for s in snapshots if s.state in LIVE}
