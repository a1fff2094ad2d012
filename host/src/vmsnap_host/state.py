"""The one state machine of VM snapshots and operations (docs/design.md, "State machine").

Every change of a snapshot's state is a compare-and-set in the catalog: the
store's :meth:`~vmsnap_host.store.Store.w_move` writes ``state = to`` (and any
other columns) ``WHERE id = ? AND state IN (from-states)`` in one statement, and
the from-states come from :data:`MOVES`, the table below — never from what a
caller read earlier. A move the table does not allow raises
:class:`IllegalMove` (a bug); a move whose row is no longer in an allowed
from-state when the statement runs raises :class:`StaleMove`: the work that
asked for it is out of date (another operation or recovery moved the snapshot
first), so it is logged and the work stops without applying anything.

Snapshot states and allowed moves::

    ALLOCATED ──► CREATING ──► READY ◄──► REVERTING
        │            │           │
        └──► ERROR ◄─┘           ▼
               └──────────► EXPUNGING ──► REMOVED

and REVERTING ──► ERROR: a revert found the snapshot's own data gone on its
owner (SNAPSHOT_LOST, executor/revert.py), so the snapshot can no longer restore.

An operation is open until it is finished once: finishing is a compare-and-set
on ``done = false`` (``Store.w_finish``), and every journal write of an
operation is refused once it is done, so a stale worker can neither reopen nor
overwrite the outcome that recovery or another worker recorded.
"""

from __future__ import annotations

from collections.abc import Mapping

from vmsnap_host.model import SnapshotState

S = SnapshotState

#: Allowed moves: to-state → the states it may be entered from.
MOVES: Mapping[SnapshotState, frozenset[SnapshotState]] = {
    S.CREATING: frozenset({S.ALLOCATED}),
    S.READY: frozenset({S.CREATING, S.REVERTING}),
    S.REVERTING: frozenset({S.READY}),
    S.EXPUNGING: frozenset({S.READY, S.ERROR}),
    S.REMOVED: frozenset({S.EXPUNGING}),
    S.ERROR: frozenset({S.ALLOCATED, S.CREATING, S.REVERTING}),
}


class IllegalMove(Exception):
    """A move the table does not allow: a bug in the caller."""


class StaleMove(Exception):
    """The row was no longer in an allowed from-state when the move ran."""

    def __init__(self, snapshot_id: str, to: SnapshotState, allowed: frozenset[SnapshotState]):
        names = ", ".join(sorted(s.name for s in allowed))
        super().__init__(
            f"snapshot {snapshot_id} was not in {{{names}}} any more; refused the move to {to.name}"
        )
        self.snapshot_id = snapshot_id
        self.to = to


class OperationClosed(Exception):
    """A write for an operation that was finished already (by recovery, or twice)."""

    def __init__(self, operation_id: str) -> None:
        super().__init__(f"operation {operation_id} is finished already; refused the write")
        self.operation_id = operation_id


class CancelRequested(Exception):
    """A commit that must not land once the operation was asked to stop
    (CancelOperation): refused, and the work rolls back or settles instead."""

    def __init__(self, operation_id: str) -> None:
        super().__init__(f"operation {operation_id} was cancelled; refused the write")
        self.operation_id = operation_id


class LeaseLost(Exception):
    """A write of an operation whose VM lease another replica holds now (the lease
    ran out and was taken over): refused, the work stops, the new owner resolves it."""

    def __init__(self, vm_id: str, owner: str, fence: int) -> None:
        super().__init__(f"{owner} lost the lease of VM {vm_id} (fence {fence}); refused the write")
        self.vm_id = vm_id
        self.owner = owner
        self.fence = fence


def sources(
    to: SnapshotState, only: frozenset[SnapshotState] | None = None
) -> frozenset[SnapshotState]:
    """The from-states of a move to ``to`` (narrowed to ``only`` when given)."""
    allowed = MOVES.get(to, frozenset())
    if not allowed:
        raise IllegalMove(f"no state may move to {to.name}")
    if only is None:
        return allowed
    if not only <= allowed:
        bad = ", ".join(sorted(s.name for s in only - allowed))
        raise IllegalMove(f"{bad} may not move to {to.name}")
    return only


__all__ = [
    "MOVES",
    "CancelRequested",
    "IllegalMove",
    "LeaseLost",
    "OperationClosed",
    "StaleMove",
    "sources",
]
