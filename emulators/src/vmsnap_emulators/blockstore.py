"""Copy-on-write block store: volume bytes as layered maps of content-addressed blocks.

Why this shape: on a real SolidFire array a snapshot is metadata only. Here too, taking a
snapshot must not copy data nor rewrite a map whose size grows with the volume.

* A **block** is ``block_size`` bytes stored once under its SHA-256 (``blocks/ab/abcd...``);
  identical blocks are shared. An all-zero block is never stored: the :data:`ZERO` digest
  stands for it (volumes are thin).
* A **layer** maps block index -> digest for the blocks written while it was current, on top
  of a parent layer (``None`` = all zeros). Its entries live in an append-only log file
  (``layers/<id>.log``, fixed 40-byte records), so a write appends a few records instead of
  rewriting the whole map.
* A volume's data is its **head** layer (the only writable kind). A snapshot **freezes** the
  head: the head becomes the snapshot's layer and the volume gets a new empty head on top.
  That is O(1) whatever the amount of data written. Rollback points a new empty head at the
  snapshot's layer, also O(1).
* The **layer table** (layer id -> parent id) is owned by the caller's metadata file, so that
  heads, snapshots and the layers they point to are committed in one atomic write.
* Deletes run :meth:`LayerStore.collect`: unreachable layers are dropped, a layer that no
  snapshot or head names and that has exactly one child is merged into that child (this
  bounds chain length), then unreferenced blocks are swept (mark-and-sweep, no refcounts to
  keep consistent across crashes).

:class:`VolumeDevice` is the byte-level read/write view of one volume (what an NBD export
would serve later).
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .atomicio import atomic_write_bytes, fsync, fsync_dir

DEFAULT_BLOCK_SIZE = 64 * 1024
ZERO = bytes(32)
_RECORD = struct.Struct("<Q32s")


@dataclass
class StoreStats:
    """Counters of physical work, for tests that prove snapshots copy nothing."""

    blocks_written: int = 0
    block_bytes_written: int = 0
    blocks_deduplicated: int = 0
    map_records_written: int = 0
    blocks_swept: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class BlockStore:
    """Immutable content-addressed blocks on disk."""

    def __init__(self, root: Path, block_size: int, stats: StoreStats) -> None:
        self.root = root
        self.block_size = block_size
        self.stats = stats
        self._zero = bytes(block_size)
        self._dirty_dirs: set[Path] = set()
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: bytes) -> Path:
        name = digest.hex()
        return self.root / name[:2] / name

    def put(self, data: bytes) -> bytes:
        """Store one full block and return its digest (:data:`ZERO` for zeros)."""
        if len(data) != self.block_size:
            raise ValueError("partial block")
        if data == self._zero:
            return ZERO
        digest = hashlib.sha256(data).digest()
        path = self._path(digest)
        if path.exists():
            self.stats.blocks_deduplicated += 1
            return digest
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            fsync(f.fileno())
        os.replace(tmp, path)
        # Directory fsyncs are batched per write request (see sync()).
        self._dirty_dirs.add(path.parent)
        self.stats.blocks_written += 1
        self.stats.block_bytes_written += len(data)
        return digest

    def sync(self) -> None:
        """Make the renames of blocks put since the last sync durable."""
        for d in self._dirty_dirs:
            fsync_dir(d)
        self._dirty_dirs.clear()

    def get(self, digest: bytes) -> bytes:
        if digest == ZERO:
            return self._zero
        with self._path(digest).open("rb") as f:
            return f.read()

    def count(self) -> int:
        return sum(1 for d in self.root.iterdir() if d.is_dir() for _ in d.iterdir())

    def sweep(self, live: set[bytes]) -> int:
        """Delete every block (and stray temp file) whose digest is not in ``live``."""
        live_names = {d.hex() for d in live}
        removed = 0
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                if f.name not in live_names:
                    f.unlink(missing_ok=True)
                    removed += 1
        self.stats.blocks_swept += removed
        return removed


@dataclass
class _Layer:
    parent: str | None
    entries: dict[int, bytes] = field(default_factory=dict)


class LayerStore:
    """Block maps chained by parent; see the module docstring for the model.

    Not thread-safe: the owner serializes calls (the emulators hold one state lock).
    """

    def __init__(
        self, root: Path, table: dict[str, str | None], block_size: int = DEFAULT_BLOCK_SIZE
    ) -> None:
        self.stats = StoreStats()
        self.blocks = BlockStore(root / "blocks", block_size, self.stats)
        self.block_size = block_size
        self._logs = root / "layers"
        self._logs.mkdir(parents=True, exist_ok=True)
        self._layers: dict[str, _Layer] = {}
        for layer_id, parent in table.items():
            self._layers[layer_id] = _Layer(parent, self._load_log(layer_id))
        # Crash leftovers: logs of layers the committed table no longer names.
        for f in self._logs.iterdir():
            if f.suffix != ".log" or f.stem not in self._layers:
                f.unlink(missing_ok=True)

    # -- persistence -------------------------------------------------------------------
    def table(self) -> dict[str, str | None]:
        """The layer table to commit with the caller's metadata."""
        return {k: v.parent for k, v in self._layers.items()}

    def _log_path(self, layer_id: str) -> Path:
        return self._logs / f"{layer_id}.log"

    def _load_log(self, layer_id: str) -> dict[int, bytes]:
        entries: dict[int, bytes] = {}
        try:
            raw = self._log_path(layer_id).read_bytes()
        except FileNotFoundError:
            return entries
        # A torn record at the tail (crash mid-append) is ignored: its write was never acked.
        usable = len(raw) - len(raw) % _RECORD.size
        for idx, digest in _RECORD.iter_unpack(raw[:usable]):
            entries[idx] = digest
        return entries

    # -- structure ---------------------------------------------------------------------
    def create(self, parent: str | None) -> str:
        """A new empty layer on top of ``parent``."""
        if parent is not None and parent not in self._layers:
            raise KeyError(parent)
        layer_id = uuid.uuid4().hex
        self._layers[layer_id] = _Layer(parent)
        return layer_id

    def freeze(self, head: str) -> tuple[str, str]:
        """Freeze ``head`` for a snapshot: return (snapshot layer, new head layer).

        An empty head with a parent needs no new layer: the snapshot shares the parent,
        which keeps chains short when snapshots are taken with no writes in between.
        """
        layer = self._layers[head]
        if not layer.entries and layer.parent is not None:
            return layer.parent, head
        return head, self.create(head)

    def exists(self, layer_id: str) -> bool:
        return layer_id in self._layers

    def chain_length(self, layer_id: str | None) -> int:
        n = 0
        while layer_id is not None:
            n += 1
            layer_id = self._layers[layer_id].parent
        return n

    # -- data --------------------------------------------------------------------------
    def resolve(self, layer_id: str | None, idx: int) -> bytes:
        while layer_id is not None:
            layer = self._layers[layer_id]
            digest = layer.entries.get(idx)
            if digest is not None:
                return digest
            layer_id = layer.parent
        return ZERO

    def read_block(self, layer_id: str, idx: int) -> bytes:
        return self.blocks.get(self.resolve(layer_id, idx))

    def write_blocks(self, head: str, blocks: dict[int, bytes]) -> None:
        """Store full blocks and map them in ``head`` (durable when this returns)."""
        records = [(idx, self.blocks.put(data)) for idx, data in sorted(blocks.items())]
        self.blocks.sync()
        payload = b"".join(_RECORD.pack(idx, digest) for idx, digest in records)
        path = self._log_path(head)
        created = not path.exists()
        with path.open("ab") as f:
            f.write(payload)
            f.flush()
            fsync(f.fileno())
        if created:
            fsync_dir(self._logs)
        self._layers[head].entries.update(records)
        self.stats.map_records_written += len(records)

    def mapped_blocks(self, layer_id: str | None) -> int:
        """Number of non-zero blocks visible through ``layer_id`` (walks the chain)."""
        seen: dict[int, bytes] = {}
        while layer_id is not None:
            layer = self._layers[layer_id]
            for idx, digest in layer.entries.items():
                seen.setdefault(idx, digest)
            layer_id = layer.parent
        return sum(1 for d in seen.values() if d != ZERO)

    def block_map(self, layer_id: str | None) -> dict[int, bytes]:
        """Block index -> digest of every block mapped through ``layer_id`` (the
        volume's view: the newest layer wins). Zero digests stay in: a block written
        with zeros differs from its parent's data."""
        seen: dict[int, bytes] = {}
        while layer_id is not None:
            layer = self._layers[layer_id]
            for idx, digest in layer.entries.items():
                seen.setdefault(idx, digest)
            layer_id = layer.parent
        return seen

    def allocated_blocks(self, layer_id: str | None) -> list[int]:
        """Sorted indexes of the non-zero blocks visible through ``layer_id``."""
        return sorted(i for i, d in self.block_map(layer_id).items() if d != ZERO)

    def changed_blocks(self, base: str | None, target: str | None) -> list[int]:
        """Sorted indexes of the blocks whose bytes differ between two layers.

        Cost: proportional to the mapped entries of both chains, never to the volume's
        size; the shared part of the chains is skipped, since a layer both see holds
        the same entries for both. Content addressing makes this exact: a block
        rewritten with the bytes it had is not a change.
        """
        shared: set[str] = set()
        layer_id = base
        while layer_id is not None:
            shared.add(layer_id)
            layer_id = self._layers[layer_id].parent
        common = target
        while common is not None and common not in shared:
            common = self._layers[common].parent
        # Only blocks mapped above the common ancestor, on either side, can differ.
        candidates: set[int] = set()
        for top in (base, target):
            layer_id = top
            while layer_id is not None and layer_id != common:
                candidates.update(self._layers[layer_id].entries)
                layer_id = self._layers[layer_id].parent
        return sorted(i for i in candidates if self.resolve(base, i) != self.resolve(target, i))

    # -- garbage collection ------------------------------------------------------------
    def collect(self, roots: set[str]) -> list[str]:
        """Drop layers unreachable from ``roots`` and merge pass-through layers.

        ``roots`` are all heads and snapshot layers. Returns the ids of removed layers: the
        caller commits the new :meth:`table` first, then calls :meth:`purge` with them (a
        crash in between leaves only garbage that the next start removes).
        """
        live: set[str] = set()
        for root in roots:
            layer_id: str | None = root
            while layer_id is not None and layer_id not in live:
                live.add(layer_id)
                layer_id = self._layers[layer_id].parent
        removed = [k for k in self._layers if k not in live]
        for k in removed:
            del self._layers[k]
        merged = True
        while merged:
            merged = False
            children: dict[str, list[str]] = {}
            for k, layer in self._layers.items():
                if layer.parent is not None:
                    children.setdefault(layer.parent, []).append(k)
            for k, kids in children.items():
                if k not in roots and len(kids) == 1:
                    self._merge_into_child(k, kids[0])
                    removed.append(k)
                    merged = True
                    break
        return removed

    def _merge_into_child(self, parent_id: str, child_id: str) -> None:
        parent = self._layers.pop(parent_id)
        child = self._layers[child_id]
        merged = dict(parent.entries)
        merged.update(child.entries)
        # Rewriting the child's log before the table commit is safe: until then the child
        # still points at the parent, and the merged entries resolve to the same bytes.
        payload = b"".join(_RECORD.pack(i, d) for i, d in sorted(merged.items()))
        atomic_write_bytes(self._log_path(child_id), payload)
        child.entries = merged
        child.parent = parent.parent
        self.stats.map_records_written += len(merged)

    def purge(self, removed: list[str]) -> None:
        """After the table without ``removed`` is committed: delete their logs, sweep blocks."""
        for k in removed:
            self._log_path(k).unlink(missing_ok=True)
        self.sweep()

    def sweep(self) -> int:
        live: set[bytes] = set()
        for layer in self._layers.values():
            live.update(layer.entries.values())
        return self.blocks.sweep(live)


class VolumeDevice:
    """Byte-addressed read/write view of one volume's head layer."""

    def __init__(self, store: LayerStore, head: str, size: int) -> None:
        self.store = store
        self.head = head
        self.size = size

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(
                f"range [{offset}, {offset + length}) outside volume of {self.size} bytes"
            )

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        bs = self.store.block_size
        out = bytearray()
        pos = offset
        end = offset + length
        while pos < end:
            idx, within = divmod(pos, bs)
            take = min(bs - within, end - pos)
            block = self.store.read_block(self.head, idx)
            out += block[within : within + take]
            pos += take
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        bs = self.store.block_size
        blocks: dict[int, bytes] = {}
        pos = offset
        end = offset + len(data)
        while pos < end:
            idx, within = divmod(pos, bs)
            take = min(bs - within, end - pos)
            chunk = data[pos - offset : pos - offset + take]
            if take == bs:
                blocks[idx] = chunk
            else:
                # Partial block: read-modify-write (the old block stays shared by snapshots).
                old = bytearray(self.store.read_block(self.head, idx))
                old[within : within + take] = chunk
                blocks[idx] = bytes(old)
            pos += take
        if blocks:
            self.store.write_blocks(self.head, blocks)
