"""Checks of what drivers and agents return, before the host stores or acts on it.

Pure functions, no I/O. Each takes the peer's name, what the host asked and
what the peer answered, and either returns the answer (ready to store) or
raises :class:`ContractViolation` naming the peer and the rule it broke. A
violating answer fails the operation like any other error: the take is
compensated (DeleteVMSnapshot of the same id) and ends ERROR with this cause.

The rules, by id (the ids of the conformance suite's checks where one exists,
so a vendor can run the same check against its driver):

=================================  =====================================================
rule                               what the answer must be
=================================  =====================================================
take.echoes_id                     the result's vm_snapshot_id is the requested id
take.covers_requested_volumes      exactly the requested disks, each once, each with
                                   the locator of the requested volume
take.handles_present               every volume snapshot has a non-empty handle
take.sizes_valid                   size_bytes is 0 (unknown) or positive
take.tagged_with_vm                vm_id, when set, is the VM's id
take.retry_same_result             a retried take or a poll (GetVMSnapshot) has the same
                                   handle per disk and the same group handle as before
take.size_limits                   handles, group handle, metadata within
                                   :mod:`vmsnap_sdk.limits`
can_handle.one_decision_per_volume one decision per asked disk: none missing, none twice
can_handle.size_limits             reasons within the limits
revert.undo_iff_asked              an undo exactly when it was asked for and the driver
                                   offers REVERT_UNDO
revert.undo_covers_volumes         the undo has the undo id and covers exactly the
                                   reverted volumes (its result passes the take rules)
native.echoes_id                   the native snapshot has the requested id and VM
native.covers_requested_disks      exactly the requested disks, each once
native.memory_as_asked             memory included exactly when it was asked for
native.size_limits                 ids and disk names within the limits
info.size_limits                   GetDriverInfo's name, versions, labels within limits
=================================  =====================================================

A decision about a disk the host did not ask about is ignored (dropped): it
cannot change the plan. A *missing* decision is a violation, not "cannot
handle": reading it as CANT_HANDLE could give a disk the driver owns to the
hypervisor strategy — the silent strategy change the design forbids.

Messages quote nothing large the peer sent (sizes and short, cut excerpts
only), so a cause stays small whatever a driver returned.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from vmsnap_sdk import (
    DriverInfo,
    NativeSnapshot,
    RevertResult,
    SnapshotResult,
    Volume,
    VolumeDecision,
)
from vmsnap_sdk.errors import Internal, Reason
from vmsnap_sdk.limits import (
    MAX_DRIVER_NAME,
    MAX_MESSAGE,
    cut,
    decisions_problem,
    driver_info_problem,
    native_problem,
    result_problem,
)

#: ErrorInfo reason of a violation by a driver / by an agent.
DRIVER_REASON = Reason.DRIVER_CONTRACT_VIOLATION
AGENT_REASON = Reason.AGENT_CONTRACT_VIOLATION

TAKE_ECHOES_ID = "take.echoes_id"
TAKE_COVERS_VOLUMES = "take.covers_requested_volumes"
TAKE_HANDLES_PRESENT = "take.handles_present"
TAKE_SIZES_VALID = "take.sizes_valid"
TAKE_TAGGED_WITH_VM = "take.tagged_with_vm"
TAKE_SAME_RESULT = "take.retry_same_result"
TAKE_SIZE_LIMITS = "take.size_limits"
DECISION_PER_VOLUME = "can_handle.one_decision_per_volume"
DECISION_SIZE_LIMITS = "can_handle.size_limits"
REVERT_UNDO_IFF_ASKED = "revert.undo_iff_asked"
REVERT_UNDO_COVERS = "revert.undo_covers_volumes"
NATIVE_ECHOES_ID = "native.echoes_id"
NATIVE_COVERS_DISKS = "native.covers_requested_disks"
NATIVE_MEMORY_AS_ASKED = "native.memory_as_asked"
NATIVE_SIZE_LIMITS = "native.size_limits"
INFO_SIZE_LIMITS = "info.size_limits"
CLONE_COVERS_TARGETS = "clone.one_volume_per_target"
CLONE_NEW_VOLUMES = "clone.new_volumes"

# Peer-sent text quoted in a message (a disk name, a handle) is cut to this, and
# a peer's name (or "name at address") to _PEER.
_QUOTE = 64
_PEER = 200


class ContractViolation(Internal):
    """A driver or an agent answered, but its answer breaks the contract.

    INTERNAL, so final: the peer has a bug, and asking again gets the same
    answer (the contract makes every call idempotent), so a retry cannot help.
    Final here does *not* mean that nothing happened: the call succeeded on the
    peer's side, so whatever it did (cut a snapshot, reverted volumes) it did.
    A take that fails on a violation must be compensated like any other
    (DeleteVMSnapshot of the same id), and a revert group that answered with a
    violation counts as reverted when the host puts the VM back.

    Made by :meth:`broken`: ``peer`` is the driver's or agent's name, ``rule``
    the rule's id (see the module's table), both also in the ErrorInfo
    metadata; ``detail`` says what was wrong with the answer. The constructor
    keeps VMSnapError's signature, so code that adds context with
    ``type(exc)(message, reason=exc.reason)`` works on it too.
    """

    default_reason = DRIVER_REASON

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        peer: str = "",
        rule: str = "",
        detail: str = "",
        kind: str = "driver",
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.peer = peer
        self.rule = rule
        self.detail = detail
        self.kind = kind

    @classmethod
    def broken(
        cls, peer: str, rule: str, detail: str, *, kind: str = "driver"
    ) -> ContractViolation:
        """The violation of ``rule`` by the ``kind`` (driver or agent) named ``peer``."""
        name = cut(peer, _PEER)
        return cls(
            cut(
                f"{kind} {name} broke the contract ({rule}): {detail}; fix the {kind} "
                "(the vmsnap conformance suite checks this)",
                MAX_MESSAGE,
            ),
            reason=AGENT_REASON if kind == "agent" else DRIVER_REASON,
            metadata={kind: name, "rule": rule},
            peer=peer,
            rule=rule,
            detail=detail,
            kind=kind,
        )


def _quote(text: str) -> str:
    return repr(cut(text, _QUOTE))


def _names(items: Iterable[str]) -> str:
    listed = sorted(items)
    shown = ", ".join(_quote(i) for i in listed[:8])
    return shown + (f" and {len(listed) - 8} more" if len(listed) > 8 else "")


def _violation(peer: str, rule: str, detail: str, kind: str = "driver") -> ContractViolation:
    return ContractViolation.broken(peer, rule, detail, kind=kind)


def _check_disk_set(
    peer: str, asked: Sequence[str], got: Sequence[str], rule: str, what: str, kind: str
) -> None:
    """``got`` names exactly the ``asked`` disks, each once."""
    counts = Counter(got)
    twice = [d for d, n in counts.items() if n > 1]
    if twice:
        raise _violation(peer, rule, f"{what} names disk {_names(twice)} more than once", kind)
    extra = set(counts) - set(asked)
    if extra:
        raise _violation(
            peer, rule, f"{what} has disk {_names(extra)}, which the host did not ask for", kind
        )
    missing = set(asked) - set(counts)
    if missing:
        if not got:
            detail = f"{what} has no disk at all; the host asked for {_names(asked)}"
        else:
            detail = f"{what} misses disk {_names(missing)}, which the host asked for"
        raise _violation(peer, rule, detail, kind)


def check_take_result(
    driver: str,
    snapshot_id: str,
    volumes: Sequence[Volume],
    result: SnapshotResult,
    previous: SnapshotResult | None = None,
    *,
    vm_id: str = "",
) -> SnapshotResult:
    """Check the result of TakeVMSnapshot, or of GetVMSnapshot while polling.

    ``volumes`` are the volumes asked of this driver (its group of the plan);
    ``previous`` the result the host already holds for this id (a retried take
    or an earlier poll), whose handles must not change; ``vm_id`` the VM's id.
    Returns ``result``; raises :class:`ContractViolation`.
    """
    problem = result_problem(result)
    if problem:
        raise _violation(driver, TAKE_SIZE_LIMITS, problem)
    if result.vm_snapshot_id != snapshot_id:
        raise _violation(
            driver,
            TAKE_ECHOES_ID,
            f"the result is for snapshot {_quote(result.vm_snapshot_id)}; the host asked for "
            f"{_quote(snapshot_id)}",
        )
    asked = [v.disk for v in volumes]
    _check_disk_set(
        driver,
        asked,
        [v.disk for v in result.volume_snapshots],
        TAKE_COVERS_VOLUMES,
        "the result",
        "driver",
    )
    locators = {v.disk: v.locator for v in volumes}
    for v in result.volume_snapshots:
        if v.locator != locators[v.disk]:
            raise _violation(
                driver,
                TAKE_COVERS_VOLUMES,
                f"disk {_quote(v.disk)} has locator {_quote(v.locator)}; the requested volume's "
                f"is {_quote(locators[v.disk])}",
            )
        if not v.handle:
            raise _violation(driver, TAKE_HANDLES_PRESENT, f"disk {_quote(v.disk)} has no handle")
        if v.size_bytes < 0:
            raise _violation(
                driver, TAKE_SIZES_VALID, f"disk {_quote(v.disk)} has size_bytes {v.size_bytes}"
            )
    if vm_id and result.vm_id and result.vm_id != vm_id:
        raise _violation(
            driver,
            TAKE_TAGGED_WITH_VM,
            f"the result is tagged with VM {_quote(result.vm_id)}; the snapshot is of VM "
            f"{_quote(vm_id)}",
        )
    if previous is not None:
        _check_same(driver, previous, result)
    return result


def _check_same(driver: str, previous: SnapshotResult, result: SnapshotResult) -> None:
    before = {v.disk: v.handle for v in previous.volume_snapshots}
    for v in result.volume_snapshots:
        if v.disk in before and v.handle != before[v.disk]:
            raise _violation(
                driver,
                TAKE_SAME_RESULT,
                f"disk {_quote(v.disk)} now has handle {_quote(v.handle)}; the same snapshot "
                f"had {_quote(before[v.disk])} before",
            )
    if result.group_handle != previous.group_handle:
        raise _violation(
            driver,
            TAKE_SAME_RESULT,
            f"the group handle is now {_quote(result.group_handle)}; the same snapshot had "
            f"{_quote(previous.group_handle)} before",
        )


def check_decisions(
    driver: str, asked_disks: Sequence[str], decisions: Sequence[VolumeDecision]
) -> list[VolumeDecision]:
    """Check CanHandle's answer; returns one decision per asked disk, in asked order.

    Decisions about disks not asked are dropped; a disk decided twice or not at
    all, or a reason over the limit, raises :class:`ContractViolation`.
    """
    problem = decisions_problem(decisions)
    if problem:
        raise _violation(driver, DECISION_SIZE_LIMITS, problem)
    asked = set(asked_disks)
    relevant = [d for d in decisions if d.disk in asked]
    _check_disk_set(
        driver,
        list(asked_disks),
        [d.disk for d in relevant],
        DECISION_PER_VOLUME,
        "CanHandle's answer",
        "driver",
    )
    by_disk = {d.disk: d for d in relevant}
    return [by_disk[disk] for disk in asked_disks]


def check_revert_result(
    driver: str,
    undo_id: str,
    result: RevertResult,
    *,
    volumes: Sequence[Volume],
    undo_offered: bool,
    vm_id: str = "",
) -> SnapshotResult | None:
    """Check RevertVMSnapshot's answer; returns the undo snapshot, if any.

    ``undo_id`` is the undo_vm_snapshot_id the host sent ("" when it did not ask
    to keep the current state); ``volumes`` the group's volumes;
    ``undo_offered`` whether the driver advertises CAPABILITY_REVERT_UNDO. An
    undo must come back exactly when both hold, and then pass the take rules
    (id, volumes, handles, limits) for ``undo_id``.
    """
    expected = bool(undo_id) and undo_offered
    if result.undo is None:
        if expected:
            raise _violation(
                driver,
                REVERT_UNDO_IFF_ASKED,
                f"the host asked to keep the current state as {_quote(undo_id)} and the driver "
                "offers REVERT_UNDO, but the answer has no undo snapshot",
            )
        return None
    if not expected:
        why = "the host did not ask for one" if not undo_id else "it does not offer REVERT_UNDO"
        raise _violation(
            driver,
            REVERT_UNDO_IFF_ASKED,
            f"the answer has an undo snapshot, but {why}; the host would never delete it",
        )
    try:
        return check_take_result(driver, undo_id, volumes, result.undo, vm_id=vm_id)
    except ContractViolation as exc:
        raise _violation(
            driver, REVERT_UNDO_COVERS, f"the undo snapshot breaks {exc.rule}: {exc.detail}"
        ) from exc


def check_native(
    agent: str,
    snapshot_id: str,
    disks: Sequence[str],
    native: NativeSnapshot,
    *,
    vm_id: str = "",
    include_memory: bool | None = None,
) -> NativeSnapshot:
    """Check a hypervisor agent's native snapshot (TakeNativeSnapshot's answer, or
    the one a Quiesce answered).

    ``disks`` are the disks the host asked for; when it asked for all of them
    (an empty list on the wire), pass the VM's disks. ``include_memory``: what
    was asked (None: not checked).
    """
    problem = native_problem(native)
    if problem:
        raise _violation(agent, NATIVE_SIZE_LIMITS, problem, "agent")
    if native.snapshot_id != snapshot_id:
        raise _violation(
            agent,
            NATIVE_ECHOES_ID,
            f"the native snapshot is {_quote(native.snapshot_id)}; the host asked for "
            f"{_quote(snapshot_id)}",
            "agent",
        )
    if vm_id and native.vm_id and native.vm_id != vm_id:
        raise _violation(
            agent,
            NATIVE_ECHOES_ID,
            f"the native snapshot is of VM {_quote(native.vm_id)}; the host asked for "
            f"{_quote(vm_id)}",
            "agent",
        )
    _check_disk_set(agent, disks, native.disks, NATIVE_COVERS_DISKS, "the native snapshot", "agent")
    if include_memory is not None and native.include_memory != include_memory:
        raise _violation(
            agent,
            NATIVE_MEMORY_AS_ASKED,
            f"the native snapshot {'includes' if native.include_memory else 'lacks'} the "
            f"memory; the host asked for {'it' if include_memory else 'the disks alone'}",
            "agent",
        )
    return native


def check_driver_info(address: str, info: DriverInfo) -> DriverInfo:
    """Check GetDriverInfo's answer against the size limits (before it is kept and listed).

    The driver is named by its address too: its name may be the problem.
    """
    problem = driver_info_problem(info)
    if problem:
        named = info.name if 0 < len(info.name) <= MAX_DRIVER_NAME else ""
        raise _violation(f"{named} at {address}".strip(), INFO_SIZE_LIMITS, problem)
    return info


__all__ = [
    "AGENT_REASON",
    "DECISION_PER_VOLUME",
    "DECISION_SIZE_LIMITS",
    "DRIVER_REASON",
    "INFO_SIZE_LIMITS",
    "NATIVE_COVERS_DISKS",
    "NATIVE_ECHOES_ID",
    "NATIVE_MEMORY_AS_ASKED",
    "NATIVE_SIZE_LIMITS",
    "REVERT_UNDO_COVERS",
    "REVERT_UNDO_IFF_ASKED",
    "TAKE_COVERS_VOLUMES",
    "TAKE_ECHOES_ID",
    "TAKE_HANDLES_PRESENT",
    "TAKE_SAME_RESULT",
    "TAKE_SIZES_VALID",
    "TAKE_SIZE_LIMITS",
    "TAKE_TAGGED_WITH_VM",
    "ContractViolation",
    "check_decisions",
    "check_driver_info",
    "check_native",
    "check_revert_result",
    "check_take_result",
    "cut",
]


def check_clone_result(
    driver: str, targets: Sequence[str], sources: Sequence[str], volumes: Sequence[Volume]
) -> list[Volume]:
    """Check CloneVolumes' answer before the host defines a VM with it: one valid
    volume per target disk (in target order), each a new volume — never a source
    volume, never twice the same (the new VM would write into the source)."""
    _check_disk_set(
        driver, targets, [v.disk for v in volumes], CLONE_COVERS_TARGETS, "the clone", "driver"
    )
    locators = [v.locator for v in volumes]
    shared = sorted(set(locators) & set(sources))
    if shared or len(set(locators)) != len(locators):
        raise _violation(
            driver,
            CLONE_NEW_VOLUMES,
            f"the clone's volumes {_names(shared or locators)} are not new, distinct volumes",
        )
    for v in volumes:
        scheme, sep, rest = v.locator.partition("://")
        if not sep or not scheme or not rest or len(v.locator) > 1024 or v.size_bytes < 0:
            raise _violation(
                driver, CLONE_NEW_VOLUMES, f"the clone of {v.disk} has no valid locator or size"
            )
    by_disk = {v.disk: v for v in volumes}
    return [by_disk[d] for d in targets]
