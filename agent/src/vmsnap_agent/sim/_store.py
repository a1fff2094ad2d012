"""The sim agent's durable state: one small JSON file per VM, replaced atomically
when (and only when) that VM changes.

Layout of ``<state dir>`` (version 2), documented because tests of other
components read it to see what the "hypervisor" is doing (read it with
:func:`load_state`, :func:`load_vm` or ``vmsnap_agent.sim.frozen``)::

    vms/<key>.json         one VM:
      {"version": 2,
       "vm": {
          "id": ..., "name": ..., "memory_mib": ..., "state": "STOPPED" | "RUNNING",
          "clean_shutdown": true,
          "volumes": [{"disk": "vda", "locator": "...", "size_bytes": 0, "format": "raw"}],
          "freeze": null,               # written null: the freeze is in freezes/
          "reverting": null | {         # a revert of file disks past its commit point
            "snapshot_id": ..., "disks": ["vdb"], "state": "STOPPED" | "RUNNING"
          }}}
    freezes/<key>.json     the VM's freeze page: 4 KiB, JSON padded with spaces,
      {"crc": "<CRC-32 of the record's bytes, 8 hex digits>",
       "record": {"version": 2, "vm_id": ...,
                  "freeze": null | {"token": ..., "method": "OVERLAY" | ...,
                     "consistency": "CRASH" | ..., "operation_id": ...,
                     "frozen_at": <unix seconds>, "expire_at": <unix seconds>, ...}}}
      (absent, or "freeze": null <=> thawed; a file an older agent wrote is the
      record alone, without the page around it)
    snapshots/<key>.json   the native snapshots of one VM (absent when it has none):
      {"version": 2, "vm_id": ..., "snapshots": {"<snapshot id>": {native snapshot record}}}
    disks/, native/        the bytes of file:// disks and their native copies (``_disks``)

``<key>`` is the VM id itself (a valid id is 1..128 characters of
``[A-Za-z0-9._-]`` starting with a letter or a digit), otherwise ``%`` and a hash
of it (:func:`vm_key`);
the id inside the file is what counts. Files whose name starts with a dot are
temporary.

A change of one VM serializes that VM only (compact JSON) and writes one file:
a temporary file that is fsynced, then renamed over the old one, before the
change is acknowledged. A reader, or the agent after a SIGKILL, sees the old or
the new file, never half of one, and every acknowledged change. The directory
is fsynced when a file is created or removed (a VM defined or undefined, its
first or last native snapshot), not when one is replaced: after a power cut (not
a SIGKILL) a replaced file may come back as its previous version.

A freeze is the running guest's state, not the VM's: a freeze, renewal or thaw
writes only the VM's freeze page, before the call is answered but never
fsynced (docs/design.md, "Freeze records are runtime state"). The page is
mapped (``mmap``, shared) by the VM's first freeze since the agent started, in
the writer thread; every later freeze, renewal or thaw is a copy into it on the
event loop, with no system call. A SIGKILL of the agent loses nothing the agent
answered (the page cache keeps what was copied); one in the middle of a copy
leaves a page whose CRC does not match, read as no freeze (the call was not
answered, so no caller relies on it: a Quiesce's caller thaws by operation, a
RenewQuiesce's or Unquiesce's finds the freeze ended). A crash of the machine
ends every freeze with the guests it ran, so a freeze page it left behind is
stale at best, torn at worst. The agent drops a freeze page it cannot read at
start-up (with a warning), and a thawed or stale one (its lease has run out:
thawed at start-up). A VM file written by an older agent with its freeze inside
is moved to a freeze page at start-up.

Undefining a VM removes its VM file, then its snapshot file; a snapshot file
left without a VM file (a crash in between) is deleted at start-up.

Version 1 was a single ``state.json`` holding every VM, rewritten whole on every
change; an agent starting on one converts it (:class:`Store`) and removes it.

Times are wall-clock unix seconds because a lease must be judged again after a
restart, when monotonic clocks mean nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import mmap
import os
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("vmsnap_agent.sim")

#: The version 1 layout: one file for everything (converted at start-up).
STATE_FILE = "state.json"
VMS_DIR = "vms"
SNAPSHOTS_DIR = "snapshots"
FREEZES_DIR = "freezes"
VERSION = 2
OLD_VERSION = 1

# What the SDK accepts as a VM id: every valid id is its own file name.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass
class FreezeRecord:
    """A freeze in force on one VM."""

    token: str
    method: str
    consistency: str
    operation_id: str
    frozen_at: float
    expire_at: float
    # PAUSE_AND_SAVE_MEMORY: the guest's RAM counter as saved at the pause (-1: none).
    saved_ram: int = -1
    adopted_by: str = ""


@dataclass
class PendingRevert:
    """A revert of a VM's file disks past its commit point.

    Recorded only once the snapshot's copy of every one of ``disks`` lies, whole
    and fsynced, under the disk's temporary name (``_disks.temp_of``): an agent
    that restarts with this set renames those into place and finishes the revert.
    """

    snapshot_id: str
    disks: list[str]
    # The VM's state once reverted (RUNNING after a memory snapshot).
    state: str


@dataclass
class SnapshotRecord:
    """A native snapshot (the sim keeps the record, and the VM state it captured)."""

    snapshot_id: str
    vm_id: str
    disks: list[str]
    include_memory: bool
    create_time: float
    size_bytes: int = 0
    # A memory snapshot: the guest's RAM counter it saved (-1: none); "state" says
    # whether it was saved by a pause (kept beside the disks, like a state file).
    ram_counter: int = -1
    memory_location: str = ""


@dataclass
class VolumeRecord:
    disk: str
    locator: str
    size_bytes: int = 0
    format: str = "raw"


@dataclass
class VMRecord:
    """A simulated VM."""

    id: str
    name: str
    memory_mib: int
    state: str = "STOPPED"
    volumes: list[VolumeRecord] = field(default_factory=list)
    # False after a forced stop: the disks were left as a power cut leaves them.
    clean_shutdown: bool = True
    freeze: FreezeRecord | None = None
    reverting: PendingRevert | None = None
    # The simulated guest's RAM: a counter that ticks 10 times a second while the
    # VM runs unpaused (ram_base at ram_since); lost at a stop, back with a memory
    # snapshot's revert. What a test reads to prove a memory snapshot.
    ram_base: int = 0
    ram_since: float = 0.0


def _vm_to_json(vm: VMRecord) -> dict[str, Any]:
    # vars() instead of asdict(): no deep copy, this is on every freeze and thaw.
    data = dict(vars(vm))
    data["volumes"] = [vars(v) for v in vm.volumes]
    data["freeze"] = None  # in its own file (_freeze_to_json)
    data["reverting"] = vars(vm.reverting) if vm.reverting is not None else None
    return data


def _vm_from_json(raw: dict[str, Any]) -> VMRecord:
    freeze = raw.get("freeze")
    return VMRecord(
        id=raw["id"],
        name=raw["name"],
        memory_mib=raw["memory_mib"],
        state=raw["state"],
        volumes=[VolumeRecord(**v) for v in raw["volumes"]],
        clean_shutdown=raw.get("clean_shutdown", True),
        freeze=FreezeRecord(**freeze) if freeze else None,
        reverting=PendingRevert(**raw["reverting"]) if raw.get("reverting") else None,
        ram_base=raw.get("ram_base", 0),
        ram_since=raw.get("ram_since", 0.0),
    )


def _freeze_to_json(vm: VMRecord) -> dict[str, Any]:
    """The VM's freeze record: its freeze, or null once thawed."""
    freeze = vars(vm.freeze) if vm.freeze is not None else None
    return {"version": VERSION, "vm_id": vm.id, "freeze": freeze}


#: A freeze page is at least this long (one memory page); a longer record (never
#: seen: ids are bounded) gets a file of whole pages.
FREEZE_PAGE = 4096
_PAGE_HEAD = b'{"crc":"'
_PAGE_BODY = b'","record":'


def _page(record: bytes) -> bytes:
    """A freeze page's bytes: JSON holding the record and the CRC-32 of its exact
    bytes, so that a record cut short or mixed with the one before (a SIGKILL
    in the middle of the copy, a power cut) is known torn."""
    return b"%s%08x%s%s}" % (_PAGE_HEAD, zlib.crc32(record), _PAGE_BODY, record)


def _unpage(raw: bytes) -> bytes:
    """The record a freeze page holds (raises ValueError when it is torn); a whole
    file an older agent renamed into place is its own record."""
    raw = raw.rstrip(b" ")
    if not raw.startswith(_PAGE_HEAD):
        return raw
    start = len(_PAGE_HEAD) + 8 + len(_PAGE_BODY)
    record = raw[start:-1]
    try:
        crc = int(raw[len(_PAGE_HEAD) : len(_PAGE_HEAD) + 8], 16)
    except ValueError:
        crc = -1
    if raw[start - len(_PAGE_BODY) : start] != _PAGE_BODY or zlib.crc32(record) != crc:
        raise ValueError("a torn freeze page")
    return record


def _freeze_from_file(path: Path, vm_id: str) -> FreezeRecord | None:
    """The freeze a file records for ``vm_id``; None when there is none (no file,
    or thawed). Raises ValueError (or KeyError, TypeError) for a torn one."""
    try:
        data = json.loads(_unpage(path.read_bytes()))
    except FileNotFoundError:
        return None
    if data.get("version") != VERSION or data.get("vm_id") != vm_id:
        raise ValueError(f"not a freeze record of VM {vm_id}: {path}")
    freeze = data["freeze"]
    return FreezeRecord(**freeze) if freeze is not None else None


def _snapshots_from_json(raw: dict[str, Any]) -> dict[str, SnapshotRecord]:
    return {k: SnapshotRecord(**s) for k, s in raw.items()}


@dataclass
class State:
    vms: dict[str, VMRecord] = field(default_factory=dict)
    snapshots: dict[str, dict[str, SnapshotRecord]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """All of it in one document (the version 1 shape; for readers and tests)."""
        return {
            "version": OLD_VERSION,
            "vms": {k: asdict(v) for k, v in self.vms.items()},
            "snapshots": {
                vm: {k: asdict(s) for k, s in snaps.items()} for vm, snaps in self.snapshots.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        """A version 1 ``state.json``."""
        if data.get("version") != OLD_VERSION:
            raise ValueError(f"unsupported sim state version {data.get('version')!r}")
        vms = {vm_id: _vm_from_json(raw) for vm_id, raw in data.get("vms", {}).items()}
        snapshots = {
            vm: _snapshots_from_json(snaps) for vm, snaps in data.get("snapshots", {}).items()
        }
        return cls(vms=vms, snapshots=snapshots)


def vm_key(vm_id: str) -> str:
    """The file name stem of a VM's files."""
    if _PLAIN_KEY.fullmatch(vm_id):
        return vm_id
    return "%" + hashlib.sha256(vm_id.encode("utf-8")).hexdigest()[:40]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Temp file + fsync + rename (the caller fsyncs the directory when it must);
    without ``durable``, no fsync: readers and a SIGKILLed agent still see the old
    or the new file, a machine crash may leave either, or neither, or a torn one."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    if data.get("version") != VERSION:
        raise ValueError(f"unsupported sim state version {data.get('version')!r} in {path}")
    return data


def _files(directory: Path) -> list[Path]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [directory / n for n in names if n.endswith(".json") and not n.startswith(".")]


def _torn(path: Path, vm_id: str) -> bool:
    """Whether a freeze file cannot be read (a thawed page can)."""
    try:
        _freeze_from_file(path, vm_id)
    except (ValueError, KeyError, TypeError):
        return True
    return False


def _with_freeze(state_dir: Path, vm: VMRecord) -> VMRecord:
    """``vm`` with the freeze its freeze file records (a VM file an older agent
    wrote keeps the freeze inside, and no freeze file). A torn freeze file reads
    as no freeze: only a machine crash tears one, and it ended the freeze."""
    try:
        freeze = _freeze_from_file(state_dir / FREEZES_DIR / f"{vm_key(vm.id)}.json", vm.id)
    except (ValueError, KeyError, TypeError):
        vm.freeze = None
        return vm
    if freeze is not None:
        vm.freeze = freeze
    return vm


def load_vm(state_dir: Path | str, vm_id: str) -> VMRecord | None:
    """One VM as last recorded (reads its files only), or None."""
    state_dir = Path(state_dir)
    if (state_dir / STATE_FILE).exists():  # not converted yet: no agent started on it
        return load_state(state_dir).vms.get(vm_id)
    data = _read_json(state_dir / VMS_DIR / f"{vm_key(vm_id)}.json")
    return _with_freeze(state_dir, _vm_from_json(data["vm"])) if data is not None else None


def load_state(state_dir: Path | str) -> State:
    """The state in ``state_dir``, either layout (empty when there is none yet).

    Safe to call while an agent runs on the directory; snapshot files left
    without their VM (an undefine interrupted by a crash) are left out.
    """
    state_dir = Path(state_dir)
    try:
        old = json.loads((state_dir / STATE_FILE).read_bytes())
    except FileNotFoundError:
        pass
    else:
        return State.from_json(old)
    state = State()
    for path in _files(state_dir / VMS_DIR):
        data = _read_json(path)
        if data is not None:  # None: undefined since the listing
            vm = _with_freeze(state_dir, _vm_from_json(data["vm"]))
            state.vms[vm.id] = vm
    for path in _files(state_dir / SNAPSHOTS_DIR):
        data = _read_json(path)
        if data is not None and data["vm_id"] in state.vms and data["snapshots"]:
            state.snapshots[data["vm_id"]] = _snapshots_from_json(data["snapshots"])
    return state


class Store:
    """Loads the state once (converting a version 1 ``state.json``), then saves
    the one VM, or the one VM's snapshots, that changed."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.vms_dir = state_dir / VMS_DIR
        self.snapshots_dir = state_dir / SNAPSHOTS_DIR
        self.freezes_dir = state_dir / FREEZES_DIR
        state_dir.mkdir(parents=True, exist_ok=True)
        created = False
        for d in (self.vms_dir, self.snapshots_dir, self.freezes_dir):
            if not d.is_dir():
                d.mkdir()
                created = True
        if created:
            _fsync_dir(state_dir)
        self._tidy()
        if (state_dir / STATE_FILE).exists():
            self.state = load_state(state_dir)
            self._convert()
        else:
            self.state = load_state(state_dir)
        # The files that exist now: saving one of them needs no directory fsync.
        self._vm_files = {vm_key(v) for v in self.state.vms}
        self._snapshot_files = {vm_key(v) for v in self.state.snapshots}
        self._drop_orphans()
        self._settle_freezes()
        # Files are written and fsynced in one writer thread, never on the event
        # loop: in the order they were asked (the last save of a VM lands last).
        self._writer = concurrent.futures.ThreadPoolExecutor(1, "sim-state-writer")
        self._pending: list[concurrent.futures.Future[Any]] = []
        # Each VM's freeze page, mapped (see save_freeze), and how many times it
        # was (re)mapped or dropped: a mapping made for an older request is not kept.
        self._pages: dict[str, mmap.mmap] = {}
        self._page_asked: dict[str, int] = {}

    # --- saving -----------------------------------------------------------------

    def _submit(self, work: Any, *args: Any) -> None:
        self._pending.append(self._writer.submit(work, *args))

    async def flush(self) -> None:
        """Wait until every save asked so far is durable; raise the first that failed.
        The agent calls it before it answers a call that changed something."""
        pending, self._pending = self._pending, []
        first: BaseException | None = None
        for future in pending:
            try:
                self._mapped(await asyncio.wrap_future(future))
            except Exception as exc:  # noqa: BLE001 - every one is awaited, the first raised
                first = first or exc
        if first is not None:
            raise first

    def flush_blocking(self) -> None:
        """:meth:`flush` for code without a running loop (start-up, close)."""
        pending, self._pending = self._pending, []
        for future in pending:
            self._mapped(future.result())

    def close(self) -> None:
        self.flush_blocking()
        self._writer.shutdown(wait=True)
        for page in self._pages.values():
            page.close()
        self._pages.clear()

    def save_vm(self, vm_id: str) -> None:
        """Make the VM's file what memory holds now (removed when the VM is not
        defined), in the writer thread: durable after :meth:`flush`."""
        key = vm_key(vm_id)
        vm = self.state.vms.get(vm_id)
        if vm is None:
            self._submit(self._remove, self.vms_dir, key, self._vm_files)
            return
        data = {"version": VERSION, "vm": _vm_to_json(vm)}
        self._submit(self._write, self.vms_dir, key, _dumps(data).encode("utf-8"), self._vm_files)

    def save_snapshots(self, vm_id: str) -> None:
        """Make the VM's snapshot file what memory holds (removed when it has none)."""
        key = vm_key(vm_id)
        snaps = self.state.snapshots.get(vm_id)
        if not snaps:
            self._submit(self._remove, self.snapshots_dir, key, self._snapshot_files)
            return
        data = {
            "version": VERSION,
            "vm_id": vm_id,
            "snapshots": {k: vars(s) for k, s in snaps.items()},
        }
        self._submit(
            self._write, self.snapshots_dir, key, _dumps(data).encode("utf-8"), self._snapshot_files
        )

    def save_freeze(self, vm_id: str) -> None:
        """Make the VM's freeze page what memory holds (its freeze, or none), never
        fsynced (see the module's docstring). Once the page is mapped, a copy into
        it: no system call, nothing for the event loop to wait on, and what a
        SIGKILL keeps the moment the copy ends (the page cache holds it). The first
        freeze of a VM since the agent started maps it in the writer thread (after
        every save asked before): after :meth:`flush`, a SIGKILL loses nothing. The
        page of a VM no longer defined is unmapped and removed there too."""
        key = vm_key(vm_id)
        vm = self.state.vms.get(vm_id)
        if vm is None:
            self._remap(key, self._drop_page, self.freezes_dir / f"{key}.json")
            return
        data = _page(_dumps(_freeze_to_json(vm)).encode("utf-8"))
        page = self._pages.get(key)
        if page is not None and len(data) <= len(page):
            page[:] = data.ljust(len(page), b" ")
            return
        self._remap(key, self._map_page, key, self.freezes_dir / f"{key}.json", data)

    def _remap(self, key: str, work: Any, *args: Any) -> None:
        """Ask the writer thread to map or drop ``key``'s page; until then (flush) its
        freezes are written there too, in order, not into a page it replaces."""
        old = self._pages.pop(key, None)
        asked = self._page_asked[key] = self._page_asked.get(key, 0) + 1
        self._submit(work, *args, old, asked)

    def _mapped(self, done: Any) -> None:
        """On the loop, once the writer mapped a page: keep it, unless it was asked
        for before the last map or drop of its VM's page (then unmapped)."""
        if not isinstance(done, tuple):
            return
        key, page, asked = done
        if self._page_asked.get(key) == asked:
            self._pages[key] = page
        else:
            page.close()

    @staticmethod
    def _map_page(
        key: str, path: Path, data: bytes, old: mmap.mmap | None, asked: int
    ) -> tuple[str, mmap.mmap, int]:
        if old is not None:
            old.close()
        size = -(-len(data) // FREEZE_PAGE) * FREEZE_PAGE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, size)
            page = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        page[:] = data.ljust(size, b" ")
        return key, page, asked

    @staticmethod
    def _drop_page(path: Path, old: mmap.mmap | None, asked: int) -> None:
        if old is not None:
            old.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    @staticmethod
    def _write(directory: Path, key: str, data: bytes, existing: set[str]) -> None:
        _write_atomic(directory / f"{key}.json", data)
        if key not in existing:
            _fsync_dir(directory)
            existing.add(key)

    @staticmethod
    def _remove(directory: Path, key: str, existing: set[str]) -> None:
        if key not in existing:
            return
        with contextlib.suppress(FileNotFoundError):
            (directory / f"{key}.json").unlink()
        _fsync_dir(directory)
        existing.discard(key)

    # --- start-up ---------------------------------------------------------------

    def _tidy(self) -> None:
        """Remove temporary files a crash left behind (those of disks: ``SimAgent``)."""
        for d in (self.dir, self.vms_dir, self.snapshots_dir, self.freezes_dir):
            for name in os.listdir(d):
                if name.startswith(".") and name.endswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        (d / name).unlink()

    def _convert(self) -> None:
        """Version 1 -> 2: write every VM's files, then remove ``state.json``.

        Until ``state.json`` is gone it is the truth: a crash part way through
        converts again at the next start.
        """
        keep_vms = {vm_key(v) for v in self.state.vms}
        keep_snaps = {vm_key(v) for v, s in self.state.snapshots.items() if s}
        for d, keep in ((self.vms_dir, keep_vms), (self.snapshots_dir, keep_snaps)):
            for path in _files(d):
                if path.stem not in keep:
                    path.unlink()
        for vm_id in self.state.vms:
            vm = self.state.vms[vm_id]
            _write_atomic(
                self.vms_dir / f"{vm_key(vm_id)}.json",
                _dumps({"version": VERSION, "vm": _vm_to_json(vm)}).encode("utf-8"),
            )
        for vm_id, snaps in list(self.state.snapshots.items()):
            if not snaps or vm_id not in self.state.vms:
                del self.state.snapshots[vm_id]
                continue
            _write_atomic(
                self.snapshots_dir / f"{vm_key(vm_id)}.json",
                _dumps(
                    {
                        "version": VERSION,
                        "vm_id": vm_id,
                        "snapshots": {k: vars(s) for k, s in snaps.items()},
                    }
                ).encode("utf-8"),
            )
        _fsync_dir(self.vms_dir)
        _fsync_dir(self.snapshots_dir)
        (self.dir / STATE_FILE).unlink()
        _fsync_dir(self.dir)
        log.info(
            "converted the state to one file per VM",
            extra={"fields": {"vms": len(self.state.vms), "from": STATE_FILE}},
        )

    def _settle_freezes(self) -> None:
        """Freeze files whose VM is gone, or that a machine crash tore, are removed
        (the crash ended those freezes); a freeze an older agent kept in the VM's
        file moves to a freeze file, and the VM's file is written without it."""
        # The loaded state says which files hold a freeze: a VM whose freeze file
        # exists but gave no freeze (load_state's _with_freeze) has a torn one.
        vms = {vm_key(v): vm for v, vm in self.state.vms.items()}
        for path in _files(self.freezes_dir):
            vm = vms.get(path.stem)
            if vm is not None and vm.freeze is not None:
                continue
            if vm is not None and _torn(path, vm.id):
                log.warning(
                    "a freeze record could not be read: left by a machine crash, which "
                    "ended the freeze; removed",
                    extra={"fields": {"path": str(path)}},
                )
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for vm in self.state.vms.values():
            if vm.freeze is None:
                continue
            key = vm_key(vm.id)
            path = self.freezes_dir / f"{key}.json"
            if path.exists():
                continue
            # Written by an older agent: the freeze file first, then the VM's file
            # without it (a crash in between leaves both: the freeze file wins).
            _write_atomic(path, _page(_dumps(_freeze_to_json(vm)).encode("utf-8")), durable=False)
            data = {"version": VERSION, "vm": _vm_to_json(vm)}
            _write_atomic(self.vms_dir / f"{key}.json", _dumps(data).encode("utf-8"))

    def _drop_orphans(self) -> None:
        """Delete snapshot files whose VM is gone (an undefine cut short)."""
        removed = False
        for path in _files(self.snapshots_dir):
            if path.stem not in self._snapshot_files:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                removed = True
        if removed:
            _fsync_dir(self.snapshots_dir)
