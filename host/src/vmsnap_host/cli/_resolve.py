"""Which snapshot a command line means: a full id, a unique id prefix, or ``VM/NAME``.

Resolved here, in the client, from the list calls every host already offers:
no new host call to version, authorize and audit, it works against any host
of this contract, and a caller sees only what its listing shows it (another
project's snapshots never match). The cost is one listing per command, of one
VM for ``VM/NAME`` and of every snapshot for a prefix; a full id (32 hex
digits, what tables show with ``--no-trunc`` and in pipes) costs nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmsnap_host.client import HostClient, VMSnapshot, VMSnapshotState

FULL_ID = re.compile(r"[0-9a-f]{32}")
#: Candidates named in an ambiguity error.
SHOWN = 8


@dataclass
class Unresolved(Exception):
    """The reference names no snapshot (``ambiguous`` False) or several (True)."""

    message: str
    ambiguous: bool = False

    def __str__(self) -> str:
        return self.message


async def resolve(host: HostClient, ref: str) -> str:
    """The full id of the snapshot ``ref`` names; :class:`Unresolved` when none or several."""
    if FULL_ID.fullmatch(ref):
        return ref
    if not ref.strip():
        raise Unresolved("give a snapshot id, a prefix of it, or VM/NAME", ambiguous=True)
    vm_id, slash, name = ref.partition("/")
    if slash:
        return await _by_name(host, vm_id, name, ref)
    return await _by_prefix(host, ref)


async def _by_name(host: HostClient, vm_id: str, name: str, ref: str) -> str:
    if not vm_id or not name:
        raise Unresolved(f"{ref!r}: expected VM/NAME, e.g. web/before-upgrade")
    snapshots = await host.all_vm_snapshots(vm_id)
    matches = [s for s in snapshots if s.name == name]
    if not matches:
        names = ", ".join(s.name for s in snapshots[:SHOWN]) or "none"
        raise Unresolved(
            f"VM {vm_id} has no snapshot named {name!r} (its snapshots: {names}); "
            f"see `vmsnap snapshot list {vm_id}`"
        )
    # Names are unique among a VM's live snapshots; the newest is the one meant.
    return matches[-1].id


async def _by_prefix(host: HostClient, prefix: str) -> str:
    lowered = prefix.lower()
    snapshots = await host.all_vm_snapshots(show_removed=True)
    matches = [s for s in snapshots if s.id.startswith(lowered)]
    live = [s for s in matches if s.state is not VMSnapshotState.REMOVED]
    chosen = live or matches
    if len(chosen) == 1:
        return chosen[0].id
    if not chosen:
        raise Unresolved(
            f"no snapshot id starts with {prefix!r}; name one as VM/NAME or by id "
            "(see `vmsnap snapshot list`)"
        )
    raise Unresolved(
        f"{prefix!r} is the start of {len(chosen)} snapshot ids: {_candidates(chosen)}; "
        "give more characters, or VM/NAME",
        ambiguous=True,
    )


def _candidates(snapshots: list[VMSnapshot]) -> str:
    shown = ", ".join(f"{s.id} ({s.vm_id}/{s.name})" for s in snapshots[:SHOWN])
    more = len(snapshots) - SHOWN
    return shown + (f" and {more} more" if more > 0 else "")
