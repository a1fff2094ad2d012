"""Two-way reconciliation: what drivers and agents hold against what the catalog says.

One pass (:meth:`Reconciler.run_once`):

1. **List the peers first**: every serving driver that offers ``LIST``
   (``ListVMSnapshots``, every page, bounded), every serving agent's native
   snapshots, and the freezes each agent holds (``ListQuiesces``).
2. **Then read the catalog.** Reading after listing is what makes deleting safe:
   the host writes a record (a snapshot row, or a kept state) *before* the
   object it names can exist, so an object listed before the read whose record
   the read does not show as live was not being made by anyone.
3. Compare, and act:

   * an object this host made (see below) with no live record — no snapshot in
     ALLOCATED, CREATING, READY, REVERTING or EXPUNGING with its id, no kept
     state with its id — is an **orphan**; older than
     ``host.orphan_grace_seconds`` it is deleted, younger it is kept and
     reported. EXPUNGING counts as live: its deletes are owed, and the cleanup
     retries them anyway;
   * a READY snapshot whose object a peer no longer lists (the peer listed
     everything, without error) is **marked**: ``missing`` says which peer lost
     what, and a revert to it cannot restore those disks; a mark is cleared when
     every object is listed again;
   * a freeze whose operation is finished, or unknown to the catalog, is thawed.

Objects of **another installation** sharing an array or an agent are never
touched: an object counts as this host's only when the catalog has a record of
its id, or of the snapshot id it starts with (kept states are named
``<snapshot id>-<suffix>``, e.g. ``<id>-keep-<op>``). Snapshot ids are random
UUIDs minted by this host and catalog rows are never purged, so a record is
proof that this host made the object; another installation's objects (or ones
made by hand on the array) have no record and are only counted in a FOREIGN
finding. When the object names a VM and that record names another, it is left
alone too.

Age: a listed object's own create time when the peer gives one; otherwise (or
as well) the time this reconciler first saw it orphaned, kept **in memory**: a
restarted host waits one more grace period before deleting such an object.

Every finding goes into the report of the pass and into the catalog's
``findings`` table (also in a dry run, with WOULD_* actions and nothing
changed). A finding that repeats one recorded less than an hour ago (the same
kind, peer, object, snapshot and action: a young orphan seen every pass, a
foreign object) is in the report but not written again, so the table grows
with events, not with passes. A peer whose listing fails or is cut short is a
PEER_ERROR finding; the pass goes on with the others, and nothing is marked
missing on a peer that was not listed completely.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from vmsnap_host import metrics
from vmsnap_host.adopt import ADOPTED_FROM
from vmsnap_host.config import Settings
from vmsnap_host.model import GroupKind, SnapshotState
from vmsnap_host.registry import Health, Registry
from vmsnap_host.store import Store
from vmsnap_host.store.store import ReadyRef
from vmsnap_sdk import Capability, Page, QuiesceInfo, SnapshotResult
from vmsnap_sdk.errors import Unimplemented, VMSnapError

log = logging.getLogger("vmsnap.host.reconcile")

_T = TypeVar("_T")

#: States whose objects must exist (or are being made, reverted or deleted).
LIVE_STATES = frozenset(
    {
        SnapshotState.ALLOCATED,
        SnapshotState.CREATING,
        SnapshotState.READY,
        SnapshotState.REVERTING,
        SnapshotState.EXPUNGING,
    }
)

#: ListVMSnapshots page size asked of drivers (the contract allows 1..1000).
PAGE_SIZE = 500
#: At most this many objects are read from one peer in one pass; past it the
#: listing counts as incomplete (nothing is marked missing on that peer).
MAX_OBJECTS_PER_PEER = 100_000
_MAX_PAGES = MAX_OBJECTS_PER_PEER // PAGE_SIZE + 1
#: At most this many freezes are read from one agent.
MAX_FREEZES_PER_AGENT = 10_000
#: Limits of a finding's fields (the findings table's column sizes).
MAX_DETAIL = 1024
_MAX_ID = {"object_id": 255, "vm_id": 128, "vm_snapshot_id": 64, "peer": 128}
#: Deletes and thaws running at once.
_PARALLEL_ACTIONS = 8
#: An identical finding is written to the catalog again after this long.
REPEAT_SECONDS = 3600.0
_MAX_REMEMBERED = 100_000
_WRITE_BATCH = 200


class Kind(enum.StrEnum):
    """What a finding is about (the proto's ``Finding.kind``)."""

    #: An object this host made whose catalog record is gone, failed or removed.
    ORPHAN = "ORPHAN"
    #: Objects whose ids this catalog never recorded: another installation's or
    #: made by hand; counted, never touched.
    FOREIGN = "FOREIGN"
    #: A READY snapshot whose object a peer no longer holds.
    MISSING = "MISSING"
    #: A snapshot marked missing whose objects are all listed again.
    FOUND = "FOUND"
    #: A freeze whose operation is finished or unknown to the catalog.
    STALE_FREEZE = "STALE_FREEZE"
    #: A peer that could not be listed completely.
    PEER_ERROR = "PEER_ERROR"


class Action(enum.StrEnum):
    """What the pass did about a finding (the proto's ``Finding.action``)."""

    DELETED = "DELETED"
    WOULD_DELETE = "WOULD_DELETE"
    DELETE_FAILED = "DELETE_FAILED"
    #: Left alone: a young orphan, a foreign object, a freeze the host does not own.
    KEPT = "KEPT"
    MARKED = "MARKED"
    WOULD_MARK = "WOULD_MARK"
    CLEARED = "CLEARED"
    WOULD_CLEAR = "WOULD_CLEAR"
    THAWED = "THAWED"
    WOULD_THAW = "WOULD_THAW"
    THAW_FAILED = "THAW_FAILED"
    #: Nothing to do (a peer error; a snapshot that was marked in an earlier pass).
    NONE = "NONE"


@dataclass(frozen=True)
class Finding:
    """One thing a pass found, and what it did about it."""

    kind: str
    peer: str = ""
    object_id: str = ""
    vm_id: str = ""
    vm_snapshot_id: str = ""
    action: str = Action.NONE.value
    detail: str = ""
    time: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Finding:
        """A finding as :meth:`Store.findings` returns it."""
        stamp = row.get("time")
        return cls(
            kind=str(row.get("kind", "")),
            peer=str(row.get("peer", "")),
            object_id=str(row.get("object_id", "")),
            vm_id=str(row.get("vm_id", "")),
            vm_snapshot_id=str(row.get("vm_snapshot_id", "")),
            action=str(row.get("action", "")),
            detail=str(row.get("detail", "")),
            time=datetime.fromtimestamp(float(stamp), UTC) if stamp is not None else None,
        )


@dataclass(frozen=True)
class Report:
    """What one pass found and did, in the order it found it."""

    findings: tuple[Finding, ...]
    dry_run: bool = False
    start_time: datetime | None = None

    def of_kind(self, kind: Kind) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind.value]


@dataclass(frozen=True)
class _Object:
    id: str
    vm_id: str
    create_time: datetime | None
    #: The driver's listed result, handed back to DeleteVMSnapshot.
    result: SnapshotResult | None = None


@dataclass
class _Listing:
    kind: GroupKind
    peer: str
    objects: dict[str, _Object] = field(default_factory=dict)
    #: Every page was read without error and nothing was cut.
    complete: bool = False
    freezes: list[QuiesceInfo] = field(default_factory=list)
    freezes_listed: bool = False


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, VMSnapError):
        return f"{exc.code.name}: {exc.message}"
    if isinstance(exc, TimeoutError):
        return "no answer within host.call_timeout_seconds"
    return f"unexpected {type(exc).__name__}"


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _base_id(object_id: str) -> str:
    """The snapshot id an object id starts with (kept states: ``<id>-<suffix>``)."""
    return object_id.split("-", 1)[0]


class Reconciler:
    """Compares every driver's and agent's objects with the catalog and repairs.

    ``clock`` (epoch seconds) is for tests. One pass runs at a time: a pass asked
    for while another runs waits for it and then runs on fresh listings.
    """

    def __init__(
        self,
        store: Store,
        registry: Registry,
        settings: Settings,
        host_owner: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.host_owner = host_owner
        self._clock = clock
        self._lock = asyncio.Lock()
        # (peer kind, peer, object id) → when a pass first saw it orphaned.
        self._first_seen: dict[tuple[str, str, str], float] = {}
        # finding key → when it was last written to the catalog.
        self._recorded: dict[tuple[str, ...], float] = {}

    async def run_once(self, dry_run: bool = False) -> Report:
        """One pass; with ``dry_run`` nothing is deleted, marked or thawed (the
        findings say what would be, and are recorded)."""
        async with self._lock:
            return await self._pass(dry_run)

    # --- the pass -----------------------------------------------------------------

    async def _pass(self, dry_run: bool) -> Report:
        now = self._clock()
        started = datetime.fromtimestamp(now, UTC)
        findings: list[Finding] = []
        # READY before the listing: only these can be judged missing (a snapshot
        # that became READY during the listing may have been cut after its peer
        # was listed).
        # (With no peer to list, nothing can be judged missing: no READY row read.)
        peers = self._listable()
        ready_before = (
            await asyncio.to_thread(self.store.snapshot_ids_in, [SnapshotState.READY])
            if peers
            else set()
        )
        listings = await self._list_peers(peers, findings)
        # --- the catalog, read after every listing -----------------------------
        ids: set[str] = set()
        for listing in listings:
            for oid in listing.objects:
                ids.add(oid)
                ids.add(_base_id(oid))
        states = await asyncio.to_thread(self.store.snapshot_states, sorted(ids))
        kept = {k.id for k in await self.store.read(self.store.kept_states)}
        # Only a complete listing can show an object missing, or listed again.
        ready_now = (
            await asyncio.to_thread(self.store.ready_refs, ready_before)
            if any(lst.complete for lst in listings)
            else []
        )
        freeze_ops = sorted(
            {f.operation_id for lst in listings for f in lst.freezes if f.operation_id}
        )
        done = (await self.store.read(self.store.operations_done, freeze_ops)) if freeze_ops else {}

        actions: list[Awaitable[Finding]] = []
        orphans: set[tuple[str, str, str]] = set()
        for listing in listings:
            await self._orphans(listing, states, kept, now, dry_run, findings, actions, orphans)
        self._forget_unseen(listings, orphans)
        self._missing(ready_now, listings, dry_run, findings, actions)
        for listing in listings:
            self._freezes(listing, done, now, dry_run, findings, actions)
        findings.extend(await self._act(actions))
        stamped = tuple(
            replace(
                f,
                peer=_cut(f.peer, _MAX_ID["peer"]),
                object_id=_cut(f.object_id, _MAX_ID["object_id"]),
                vm_id=_cut(f.vm_id, _MAX_ID["vm_id"]),
                vm_snapshot_id=_cut(f.vm_snapshot_id, _MAX_ID["vm_snapshot_id"]),
                detail=_cut(f.detail, MAX_DETAIL),
                time=started,
            )
            for f in findings
        )
        written = await self._record(stamped, now)
        for f in stamped:
            metrics.FINDINGS.labels(kind=f.kind).inc()
        # Logged when something new was found (repeats are in the report only).
        (log.info if written else log.debug)(
            "reconcile pass",
            extra={
                "fields": {
                    "owner": self.host_owner,
                    "dry_run": dry_run,
                    "findings": len(stamped),
                    "new_findings": written,
                    "actions": sorted({f.action for f in stamped}),
                }
            },
        )
        return Report(stamped, dry_run, started)

    # --- listing ------------------------------------------------------------------

    async def _with_deadline(self, call: Awaitable[_T]) -> _T:
        return await asyncio.wait_for(call, self.settings.call_timeout_seconds)

    def _listable(self) -> list[tuple[GroupKind, str]]:
        """The peers this pass lists: serving drivers that can list, serving agents."""
        peers = []
        for d in self.registry.drivers():
            if d.health is not Health.SERVING or d.info is None:
                continue  # not listed: nothing on it is judged this pass
            if Capability.LIST not in d.info.capabilities:
                continue
            peers.append((GroupKind.DRIVER, d.name))
        for a in self.registry.agents():
            if a.health is Health.SERVING and a.name:
                peers.append((GroupKind.HYPERVISOR, a.name))
        return peers

    async def _list_peers(
        self, peers: list[tuple[GroupKind, str]], findings: list[Finding]
    ) -> list[_Listing]:
        work: list[Awaitable[_Listing]] = [
            self._list_driver(name, findings)
            if kind is GroupKind.DRIVER
            else self._list_agent(name, findings)
            for kind, name in peers
        ]
        return list(await asyncio.gather(*work))

    async def _list_driver(self, name: str, findings: list[Finding]) -> _Listing:
        listing = _Listing(GroupKind.DRIVER, name)
        malformed = 0
        try:
            driver = self.registry.driver(name)
            token = ""
            tokens: set[str] = set()
            for _ in range(_MAX_PAGES):
                page = await self._with_deadline(
                    driver.list_snapshots(Page(size=PAGE_SIZE, token=token), vm_id="")
                )
                for result in page.snapshots:
                    if len(listing.objects) >= MAX_OBJECTS_PER_PEER:
                        break
                    oid = result.vm_snapshot_id
                    if not oid or len(oid) > _MAX_ID["object_id"]:
                        malformed += 1
                        continue
                    listing.objects[oid] = _Object(oid, result.vm_id, result.create_time, result)
                token = page.next_token
                if not token:
                    listing.complete = len(listing.objects) < MAX_OBJECTS_PER_PEER
                    break
                if token in tokens or len(listing.objects) >= MAX_OBJECTS_PER_PEER:
                    break
                tokens.add(token)
        except Exception as exc:  # noqa: BLE001 - one peer's failure is its finding, never the pass's
            listing.complete = False
            findings.append(self._peer_error("driver", name, f"ListVMSnapshots: {_describe(exc)}"))
            return listing
        if not listing.complete:
            findings.append(
                self._peer_error(
                    "driver",
                    name,
                    f"ListVMSnapshots was cut short after {len(listing.objects)} snapshots "
                    f"(at most {MAX_OBJECTS_PER_PEER}, or a page token repeated)",
                )
            )
        if malformed:
            findings.append(
                self._peer_error(
                    "driver",
                    name,
                    f"ListVMSnapshots returned {malformed} entries without a valid id",
                )
            )
            listing.complete = False
        return listing

    async def _list_agent(self, name: str, findings: list[Finding]) -> _Listing:
        listing = _Listing(GroupKind.HYPERVISOR, name)
        try:
            agent = self.registry.agent(name)
        except VMSnapError as exc:  # removed since the pass began
            findings.append(self._peer_error("agent", name, _describe(exc)))
            return listing
        try:
            natives = await self._with_deadline(agent.list_native_snapshots(""))
        except Exception as exc:  # noqa: BLE001 - one peer's failure is its finding
            findings.append(
                self._peer_error("agent", name, f"ListNativeSnapshots: {_describe(exc)}")
            )
        else:
            malformed = 0
            for native in list(natives)[:MAX_OBJECTS_PER_PEER]:
                oid = native.snapshot_id
                if not oid or len(oid) > _MAX_ID["object_id"] or not native.vm_id:
                    malformed += 1
                    continue
                listing.objects[oid] = _Object(oid, native.vm_id, native.create_time)
            listing.complete = len(natives) <= MAX_OBJECTS_PER_PEER and not malformed
            if not listing.complete:
                findings.append(
                    self._peer_error(
                        "agent",
                        name,
                        f"ListNativeSnapshots returned {len(natives)} snapshots "
                        f"({malformed} without an id or VM; at most {MAX_OBJECTS_PER_PEER} read)",
                    )
                )
        # Freezes in force; an agent that does not offer ListQuiesces is simply not
        # checked for stale freezes.
        try:
            freezes = await self._with_deadline(agent.list_quiesces(""))
        except Unimplemented:
            return listing
        except Exception as exc:  # noqa: BLE001 - one peer's failure is its finding
            findings.append(self._peer_error("agent", name, f"ListQuiesces: {_describe(exc)}"))
            return listing
        listing.freezes = list(freezes)[:MAX_FREEZES_PER_AGENT]
        listing.freezes_listed = True
        return listing

    @staticmethod
    def _peer_error(kind: str, name: str, detail: str) -> Finding:
        return Finding(
            Kind.PEER_ERROR.value,
            peer=name,
            action=Action.NONE.value,
            detail=f"{kind} {name}: {detail}; nothing on it is marked missing this pass",
        )

    # --- orphans ------------------------------------------------------------------

    async def _orphans(
        self,
        listing: _Listing,
        states: Mapping[str, SnapshotState],
        kept: set[str],
        now: float,
        dry_run: bool,
        findings: list[Finding],
        actions: list[Awaitable[Finding]],
        orphans: set[tuple[str, str, str]],
    ) -> None:
        grace = self.settings.orphan_grace_seconds
        foreign: list[str] = []
        for obj in listing.objects.values():
            state = states.get(obj.id)
            if obj.id in kept or (state is not None and state in LIVE_STATES):
                continue
            base = _base_id(obj.id)
            if state is None and states.get(base) is SnapshotState.REVERTING:
                continue  # a revert in flight keeps states named after its snapshot
            record_id = obj.id if state is not None else base
            if record_id not in states:
                foreign.append(obj.id)
                continue
            record = await self.store.read(self.store.get_snapshot, record_id)
            if record is not None and obj.vm_id and record.vm_id != obj.vm_id:
                foreign.append(obj.id)
                continue
            vm_id = obj.vm_id or (record.vm_id if record is not None else "")
            key = (listing.kind.name, listing.peer, obj.id)
            orphans.add(key)
            first = self._first_seen.setdefault(key, now)
            created = _epoch(obj.create_time)
            age = max(now - first, now - created if created is not None else 0.0)
            why = (
                f"record {record_id} is {states[record_id].name}"
                if record_id == obj.id
                else f"no kept state has this id (snapshot {record_id} is {states[record_id].name})"
            )
            base_finding = Finding(
                Kind.ORPHAN.value,
                peer=listing.peer,
                object_id=obj.id,
                vm_id=vm_id,
                vm_snapshot_id=record_id,
            )
            if age < grace:
                findings.append(
                    _with(
                        base_finding,
                        Action.KEPT,
                        f"{why}; orphaned for {age:.0f} s, deleted once older than "
                        f"{grace:.0f} s (host.orphan_grace_seconds)",
                    )
                )
            elif dry_run:
                findings.append(
                    _with(base_finding, Action.WOULD_DELETE, f"{why}; orphaned for {age:.0f} s")
                )
            else:
                actions.append(self._delete(listing, obj, base_finding, why))
        if foreign:
            shown = ", ".join(sorted(foreign)[:5])
            findings.append(
                Finding(
                    Kind.FOREIGN.value,
                    peer=listing.peer,
                    action=Action.KEPT.value,
                    detail=(
                        f"{len(foreign)} objects that this host's catalog never recorded (made by "
                        f"another installation or by hand; e.g. {shown}): left alone"
                    ),
                )
            )

    async def _delete(self, listing: _Listing, obj: _Object, finding: Finding, why: str) -> Finding:
        try:
            if listing.kind is GroupKind.DRIVER:
                driver = self.registry.driver(listing.peer)
                await self._with_deadline(driver.delete_snapshot(obj.id, obj.result))
            else:
                agent = self.registry.agent(listing.peer)
                await self._with_deadline(agent.delete_native_snapshot(obj.vm_id, obj.id))
        except Exception as exc:  # noqa: BLE001 - reported; retried next pass
            return _with(
                finding,
                Action.DELETE_FAILED,
                f"{why}; delete failed ({_describe(exc)}): retried next pass",
            )
        self._first_seen.pop((listing.kind.name, listing.peer, obj.id), None)
        return _with(finding, Action.DELETED, why)

    def _forget_unseen(
        self, listings: Sequence[_Listing], orphans: set[tuple[str, str, str]]
    ) -> None:
        """Keep first-seen times only of objects this pass saw orphaned (or of peers
        not listed completely: an object missing from a partial list may still be
        there), so that the memory stays as large as the orphans are and an object
        that stopped being an orphan starts its wait anew."""
        complete = {(lst.kind.name, lst.peer) for lst in listings if lst.complete}
        for key in list(self._first_seen):
            if key[:2] in complete and key not in orphans:
                del self._first_seen[key]
        if len(self._first_seen) > _MAX_REMEMBERED:
            # Forgetting makes an object wait longer, never less: safe to drop the newest.
            for key, _ in sorted(self._first_seen.items(), key=lambda kv: -kv[1])[
                : len(self._first_seen) - _MAX_REMEMBERED
            ]:
                del self._first_seen[key]

    # --- READY snapshots whose objects are gone -------------------------------------

    def _missing(
        self,
        ready: Iterable[ReadyRef],
        listings: Sequence[_Listing],
        dry_run: bool,
        findings: list[Finding],
        actions: list[Awaitable[Finding]],
    ) -> None:
        by_peer = {(lst.kind, lst.peer): lst for lst in listings if lst.complete}
        for snap in ready:
            if ADOPTED_FROM in snap.parameters:
                # Adopted objects carry no host tag, so ListVMSnapshots never lists
                # them: their absence there says nothing (not checked yet).
                continue
            gone: list[str] = []
            losers: set[str] = set()
            verified = True
            for held in snap.objects:
                listing = by_peer.get((held.kind, held.owner))
                if listing is None:
                    verified = False
                    continue
                oid = held.object_id
                if oid not in listing.objects:
                    losers.add(held.owner)
                    who = "driver" if held.kind is GroupKind.DRIVER else "agent"
                    gone.append(
                        f"{who} {held.owner} no longer holds {oid} ({', '.join(held.disks)})"
                    )
            base = Finding(
                Kind.MISSING.value,
                peer=", ".join(sorted(losers)),
                object_id=snap.id,
                vm_id=snap.vm_id,
                vm_snapshot_id=snap.id,
            )
            if gone:
                cause = _cut(
                    "; ".join(gone) + ": a revert to this snapshot cannot restore those disks",
                    MAX_DETAIL,
                )
                if snap.missing:
                    findings.append(_with(base, Action.NONE, f"marked earlier: {snap.missing}"))
                elif dry_run:
                    findings.append(_with(base, Action.WOULD_MARK, cause))
                else:
                    actions.append(
                        self._set_missing(snap, cause, _with(base, Action.MARKED, cause))
                    )
            elif snap.missing and verified:
                found = Finding(
                    Kind.FOUND.value,
                    peer=", ".join(sorted({o.owner for o in snap.objects})),
                    object_id=snap.id,
                    vm_id=snap.vm_id,
                    vm_snapshot_id=snap.id,
                )
                detail = f"every object is listed again (was: {snap.missing})"
                if dry_run:
                    findings.append(_with(found, Action.WOULD_CLEAR, detail))
                else:
                    actions.append(
                        self._set_missing(snap, "", _with(found, Action.CLEARED, detail))
                    )

    async def _set_missing(self, snap: ReadyRef, cause: str, finding: Finding) -> Finding:
        try:
            await self.store.write(self.store.w_set_missing(snap.id, cause))
        except Exception as exc:  # noqa: BLE001 - reported; the next pass tries again
            log.warning(
                "could not record a missing mark",
                extra={"fields": {"snapshot": snap.id, "error": type(exc).__name__}},
            )
            return _with(
                finding,
                Action.NONE,
                f"{finding.detail}; the catalog refused the write ({type(exc).__name__}): "
                "tried again next pass",
            )
        return finding

    # --- freezes ------------------------------------------------------------------

    def _freezes(
        self,
        listing: _Listing,
        done: Mapping[str, bool],
        now: float,
        dry_run: bool,
        findings: list[Finding],
        actions: list[Awaitable[Finding]],
    ) -> None:
        if not listing.freezes_listed:
            return
        for freeze in listing.freezes:
            op = freeze.operation_id
            expired = (expire := _epoch(freeze.expire_time)) is not None and expire <= now
            if op and done.get(op) is False:
                continue  # its operation is running and thaws it
            if op:
                why = (
                    f"operation {op} is finished"
                    if op in done
                    else f"operation {op} is unknown to the catalog"
                )
            elif expired:
                why = "no operation holds it and its lease ran out (the agent did not undo it)"
            else:
                # Not made by this host's operations (the host always names one):
                # a freeze someone else holds, with a lease that ends it.
                findings.append(
                    _freeze_finding(
                        listing.peer,
                        freeze,
                        Action.KEPT,
                        "no operation of this host holds it; left to its lease",
                        kind=Kind.FOREIGN,
                    )
                )
                continue
            if dry_run:
                findings.append(_freeze_finding(listing.peer, freeze, Action.WOULD_THAW, why))
            else:
                actions.append(self._thaw(listing.peer, freeze, why))

    async def _thaw(self, peer: str, freeze: QuiesceInfo, why: str) -> Finding:
        try:
            result = await self._with_deadline(self.registry.agent(peer).unquiesce(freeze.token))
        except Exception as exc:  # noqa: BLE001 - reported; retried next pass
            return _freeze_finding(
                peer, freeze, Action.THAW_FAILED, f"{why}; thaw failed ({_describe(exc)})"
            )
        how = (
            f"thawed after {result.frozen_for_seconds:.1f} s frozen"
            if result.thawed_now
            else "the agent had thawed it already"
        )
        return _freeze_finding(peer, freeze, Action.THAWED, f"{why}; {how}")

    # --- acting and recording -----------------------------------------------------

    async def _act(self, actions: Sequence[Awaitable[Finding]]) -> list[Finding]:
        limit = asyncio.Semaphore(_PARALLEL_ACTIONS)

        async def bounded(action: Awaitable[Finding]) -> Finding:
            async with limit:
                return await action

        return list(await asyncio.gather(*(bounded(a) for a in actions)))

    async def _record(self, findings: Sequence[Finding], now: float) -> int:
        """Write the findings not written in the last hour; how many were written."""
        for key, when in list(self._recorded.items()):
            if now - when >= REPEAT_SECONDS:
                del self._recorded[key]
        steps = []
        for f in findings:
            key = (f.kind, f.peer, f.object_id, f.vm_snapshot_id, f.action)
            if key in self._recorded:
                continue
            if len(self._recorded) < _MAX_REMEMBERED:
                self._recorded[key] = now
            steps.append(
                self.store.w_add_finding(
                    f.kind,
                    peer=f.peer,
                    object_id=f.object_id,
                    vm_id=f.vm_id,
                    vm_snapshot_id=f.vm_snapshot_id,
                    action=f.action,
                    detail=f.detail,
                )
            )
        for start in range(0, len(steps), _WRITE_BATCH):
            await self.store.write(*steps[start : start + _WRITE_BATCH])
        return len(steps)


def _with(finding: Finding, action: Action, detail: str) -> Finding:
    return replace(finding, action=action.value, detail=detail)


def _freeze_finding(
    peer: str, freeze: QuiesceInfo, action: Action, why: str, kind: Kind = Kind.STALE_FREEZE
) -> Finding:
    return Finding(
        kind.value,
        peer=peer,
        object_id=freeze.token,
        vm_id=freeze.vm_id,
        action=action.value,
        detail=f"freeze of VM {freeze.vm_id} by operation {freeze.operation_id or '(none)'}: {why}",
    )


__all__ = ["LIVE_STATES", "Action", "Finding", "Kind", "Reconciler", "Report"]
