"""Both emulators under concurrent clients (the host fans out to drivers in parallel)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from netapp_ontap.resources import Snapshot, Volume

from vmsnap_emulators.pytest_fixtures import element_client, ontap_client
from vmsnap_emulators.testing import EmulatorProcess

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

MiB = 1 << 20


def test_parallel_element_clients(element_emulator: EmulatorProcess) -> None:
    def worker(i: int) -> bool:
        sdk = element_client(element_emulator)
        acc = sdk.add_account(f"par-{os.getpid()}-{i}").account_id
        vid = sdk.create_volume(f"par-{i}", acc, 2 * MiB).volume_id
        ok = True
        for round_ in range(3):
            data = bytes([i * 16 + round_]) * 100_000
            element_emulator.write_volume(vid, 12345, data)
            sid = sdk.create_snapshot(vid, attributes={"round": round_}).snapshot_id
            element_emulator.write_volume(vid, 12345, b"\xff" * 100_000)
            sdk.rollback_to_snapshot(vid, sid, False)
            ok &= element_emulator.read_volume(vid, 12345, 100_000) == data
        return ok

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(worker, range(4)))


def test_parallel_ontap_clients(ontap_emulator: EmulatorProcess) -> None:
    def worker(i: int) -> int:
        conn = ontap_client(ontap_emulator)
        vol = Volume(name=f"par_{i}", svm={"name": "svm0"}, size=64 * MiB)
        vol.post(connection=conn)
        (ontap_emulator.export_dir() / f"par_{i}" / "disk").write_bytes(b"x" * 4096)
        for n in range(3):
            Snapshot(vol.uuid, name=f"s{n}").post(connection=conn)
        return int(Snapshot.count_collection(vol.uuid, connection=conn))

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(worker, range(4))) == [3, 3, 3, 3]
