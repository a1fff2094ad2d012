"""Snapshots are metadata only: their cost does not grow with the data written.

Asserts on the store's own counters (bytes and map records written, block count), never on
wall time.
"""

from __future__ import annotations

import os

import pytest

from vmsnap_emulators.pytest_fixtures import element_client
from vmsnap_emulators.testing import EmulatorProcess

# verify=False, as drivers do against arrays with self-signed certificates.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

MiB = 1 << 20


def _fill(emu: EmulatorProcess, vid: int, size: int) -> None:
    chunk = 8 * MiB
    for off in range(0, size, chunk):
        emu.write_volume(vid, off, os.urandom(min(chunk, size - off)))


def test_snapshot_copies_nothing_whatever_the_volume_size(
    fresh_element_emulator: EmulatorProcess,
) -> None:
    emu = fresh_element_emulator
    sdk = element_client(emu)
    acc = sdk.add_account("bench").account_id
    small = sdk.create_volume("small", acc, 2 * MiB).volume_id
    big = sdk.create_volume("big", acc, 16 * MiB).volume_id
    _fill(emu, small, 2 * MiB)
    _fill(emu, big, 16 * MiB)

    costs = {}
    for vid in (small, big):
        before = emu.emulator_info()
        sdk.create_snapshot(vid)
        grp = sdk.create_group_snapshot([vid])
        sdk.rollback_to_group_snapshot(grp.group_snapshot_id, True)
        after = emu.emulator_info()
        costs[vid] = {k: after["stats"][k] - before["stats"][k] for k in after["stats"]}
        assert after["block_count"] == before["block_count"]
    for cost in costs.values():
        assert cost["block_bytes_written"] == 0
        assert cost["map_records_written"] == 0
    assert costs[small] == costs[big]


def test_deleting_snapshots_frees_unshared_blocks(fresh_element_emulator: EmulatorProcess) -> None:
    emu = fresh_element_emulator
    sdk = element_client(emu)
    acc = sdk.add_account("gc").account_id
    vid = sdk.create_volume("gc", acc, 4 * MiB).volume_id
    block = emu.emulator_info()["block_size"]
    blocks = 4 * MiB // block
    _fill(emu, vid, 4 * MiB)
    sid = sdk.create_snapshot(vid).snapshot_id
    _fill(emu, vid, 4 * MiB)  # every block rewritten: the snapshot keeps the old ones
    assert emu.emulator_info()["block_count"] == 2 * blocks
    sdk.delete_snapshot(sid)
    info = emu.emulator_info()
    assert info["block_count"] == blocks
    assert info["layer_count"] == 1  # chain merged back into the volume's head
    # Overwriting with zeros frees blocks too (volumes are thin).
    emu.write_volume(vid, 0, bytes(4 * MiB))
    sdk.delete_volume(vid)
    sdk.purge_deleted_volume(vid)
    assert emu.emulator_info()["block_count"] == 0
