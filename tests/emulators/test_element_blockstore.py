"""Copy-on-write block store, in process (no server)."""

from __future__ import annotations

from pathlib import Path

from vmsnap_emulators.blockstore import LayerStore, VolumeDevice

BS = 4096


def test_partial_writes_snapshots_and_merge(tmp_path: Path) -> None:
    store = LayerStore(tmp_path, {}, block_size=BS)
    head = store.create(None)
    dev = VolumeDevice(store, head, 10 * BS)
    dev.write(BS - 10, b"x" * 20)  # straddles two blocks
    assert dev.read(BS - 12, 24) == b"\0\0" + b"x" * 20 + b"\0\0"

    snap, dev.head = store.freeze(dev.head)
    same, _ = store.freeze(dev.head)  # nothing written since: shares the snapshot's layer
    assert same == snap
    dev.write(0, b"y" * BS)
    assert VolumeDevice(store, snap, 10 * BS).read(0, 4) == b"\0" * 4
    assert dev.read(0, 4) == b"yyyy"

    removed = store.collect({dev.head})  # the snapshot is gone: its layer merges into head
    assert removed == [snap]
    store.purge(removed)
    assert store.chain_length(dev.head) == 1
    assert dev.read(BS, 10) == b"x" * 10 and dev.read(0, 4) == b"yyyy"


def test_reload_ignores_torn_log_tail(tmp_path: Path) -> None:
    store = LayerStore(tmp_path, {}, block_size=BS)
    head = store.create(None)
    VolumeDevice(store, head, 4 * BS).write(0, b"a" * BS)
    table = store.table()
    with (tmp_path / "layers" / f"{head}.log").open("ab") as f:
        f.write(b"\x01\x02\x03")  # a crash in the middle of appending a record
    reloaded = LayerStore(tmp_path, table, block_size=BS)
    assert VolumeDevice(reloaded, head, 4 * BS).read(0, BS) == b"a" * BS


def test_identical_blocks_are_stored_once(tmp_path: Path) -> None:
    store = LayerStore(tmp_path, {}, block_size=BS)
    dev = VolumeDevice(store, store.create(None), 8 * BS)
    dev.write(0, b"z" * (8 * BS))
    assert store.blocks.count() == 1
    assert store.stats.blocks_deduplicated == 7
