"""The Element emulator's block map answers changed and allocated blocks exactly.

What the SolidFire driver's GetMetadataDelta / GetMetadataAllocated rest on (an
emulator-only view: the real Element API has no such call). Exact means: a block
rewritten with the bytes it had is no change, a block overwritten with zeros is
one, and the cost follows the blocks written, not the volume's size.
"""

from __future__ import annotations

from pathlib import Path

from vmsnap_emulators.blockstore import LayerStore, VolumeDevice

BS = 64 * 1024
GIB = 1 << 30


def test_changed_and_allocated_blocks_are_exact(tmp_path: Path) -> None:
    store = LayerStore(tmp_path, {}, BS)
    head = store.create(None)
    dev = VolumeDevice(store, head, GIB)
    dev.write(0, b"a" * BS)
    dev.write(10 * BS, b"b" * BS)
    s1, dev.head = store.freeze(dev.head)
    dev.write(0, b"a" * BS)  # the same bytes again: no change
    dev.write(10 * BS, bytes(BS))  # zeros over data: a change
    dev.write(20 * BS + 5, b"c")  # one byte: its block
    s2, dev.head = store.freeze(dev.head)
    assert store.changed_blocks(s1, s2) == [10, 20]
    assert store.changed_blocks(s2, s1) == [10, 20]
    assert store.changed_blocks(s1, s1) == []
    assert store.allocated_blocks(s1) == [0, 10]
    assert store.allocated_blocks(s2) == [0, 20]
    # A 1 GiB volume holds only what was written (thin).
    assert store.blocks.count() <= 3


def test_delta_across_a_rollback_branch(tmp_path: Path) -> None:
    store = LayerStore(tmp_path, {}, BS)
    dev = VolumeDevice(store, store.create(None), 16 * BS)
    dev.write(0, b"x" * BS)
    s1, dev.head = store.freeze(dev.head)
    dev.write(BS, b"y" * BS)
    s2, dev.head = store.freeze(dev.head)
    dev.head = store.create(s1)  # rollback to s1, then a different write
    dev.write(2 * BS, b"z" * BS)
    s3, dev.head = store.freeze(dev.head)
    assert store.changed_blocks(s2, s3) == [1, 2]
    assert store.changed_blocks(s1, s3) == [2]
