"""The emulators' overwrites journal (``VMSNAP_EMULATOR_OVERWRITES=1``): each call
that replaced a volume's or a disk file's data, asked through the vendors' own
SDKs, for the chaos harness's "not_running" invariant (vmsnap_emulators/overwrites.py)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from vmsnap_emulators import overwrites
from vmsnap_emulators.pytest_fixtures import element_client, ontap_client
from vmsnap_emulators.testing import start_emulator

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

MiB = 1 << 20


def _journal(data: Path) -> list[dict[str, object]]:
    (path,) = data.rglob(overwrites.FILE)
    return overwrites.read(path)


def test_element_rollbacks_are_journaled_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(overwrites.ENV, "1")
    before = time.monotonic()
    with start_emulator("element", tmp_path / "data", durable=False) as emu:
        sdk = element_client(emu)
        account = int(sdk.add_account(f"a{uuid.uuid4().hex[:6]}").account_id)
        one = int(sdk.create_volume(f"v{uuid.uuid4().hex[:6]}", account, MiB).volume_id)
        two = int(sdk.create_volume(f"v{uuid.uuid4().hex[:6]}", account, MiB).volume_id)
        snap = int(sdk.create_snapshot(one).snapshot_id)
        group = int(sdk.create_group_snapshot([one, two]).group_snapshot_id)
        assert not list((tmp_path / "data").rglob(overwrites.FILE))  # takes overwrite nothing
        sdk.rollback_to_snapshot(one, snap, False)
        sdk.rollback_to_group_snapshot(group, False)
    entries = _journal(tmp_path / "data")
    assert [(e["call"], e["volumes"]) for e in entries] == [
        ("RollbackToSnapshot", [one]),
        ("RollbackToGroupSnapshot", [one, two]),
    ]
    assert before <= float(str(entries[0]["mono"])) <= float(str(entries[1]["mono"]))


def test_ontap_restores_and_overwriting_clones_are_journaled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from netapp_ontap import config
    from netapp_ontap.resources import FileClone, Snapshot, Volume

    monkeypatch.setenv(overwrites.ENV, "1")
    with start_emulator("ontap", tmp_path / "data", durable=False) as emu:
        monkeypatch.setattr(config, "CONNECTION", ontap_client(emu))
        vol = Volume(name=f"v_{uuid.uuid4().hex[:6]}", svm={"name": "svm0"}, size=64 * MiB)
        vol.post()
        (emu.export_dir() / vol.name / "disk.raw").write_bytes(b"A" * 4096)
        Snapshot(vol.uuid, name="s1").post()
        FileClone(volume={"uuid": vol.uuid}, source_path="disk.raw", destination_path="copy").post()
        FileClone(
            volume={"uuid": vol.uuid},
            source_path="copy",
            destination_path="disk.raw",
            overwrite_destination=True,
        ).post()
        Volume(uuid=vol.uuid).patch(**{"restore_to.snapshot.name": "s1"})
    entries = _journal(tmp_path / "data")
    assert [(e["call"], e["volume"], e.get("path")) for e in entries] == [
        ("file clone", vol.name, "disk.raw"),  # the clone into a new file is not one
        ("SnapRestore", vol.name, None),
    ]


def test_no_journal_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(overwrites.ENV, raising=False)
    with start_emulator("element", tmp_path / "data", durable=False) as emu:
        sdk = element_client(emu)
        account = int(sdk.add_account(f"a{uuid.uuid4().hex[:6]}").account_id)
        one = int(sdk.create_volume(f"v{uuid.uuid4().hex[:6]}", account, MiB).volume_id)
        sdk.rollback_to_snapshot(one, int(sdk.create_snapshot(one).snapshot_id), False)
    assert not list((tmp_path / "data").rglob(overwrites.FILE))
