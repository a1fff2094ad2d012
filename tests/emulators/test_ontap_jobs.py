"""ONTAP's asynchronous job model and restart persistence."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from netapp_ontap.error import NetAppRestError
from netapp_ontap.resources import Job, Snapshot, Volume

from vmsnap_emulators.pytest_fixtures import ontap_client
from vmsnap_emulators.testing import EmulatorProcess, start_emulator

# verify=False, as drivers do against arrays with self-signed certificates.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

MiB = 1 << 20


@pytest.fixture
def slow_ontap(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Jobs stay queued 0.1 s and running 0.1 s, so their states can be observed."""
    with start_emulator(
        "ontap", tmp_path_factory.mktemp("ontap") / "data", extra_args=["--job-delay", "0.1"]
    ) as emu:
        yield emu


def _wait(job: Job) -> str:
    for _ in range(200):
        job.get(fields="state,message")
        if job.state in ("success", "failure"):
            return str(job.state)
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_job_states_and_sdk_polling(slow_ontap: EmulatorProcess) -> None:
    conn = ontap_client(slow_ontap)
    vol = Volume(name="jobs", svm={"name": "svm0"}, size=64 * MiB)
    response = vol.post(poll=False, connection=conn)
    assert response.http_response.status_code == 202
    assert response.is_job
    job = Job(uuid=response.http_response.json()["job"]["uuid"])
    job.set_connection(conn)
    job.get()
    assert job.state in ("queued", "running")
    assert _wait(job) == "success"
    job.get()
    assert job.description.startswith("POST /api/storage/volumes")

    # poll=True (the default): the SDK follows the job until it ends.
    snap = Snapshot(vol.uuid, name="s1")
    snap.set_connection(conn)
    snap.post()
    assert Snapshot.count_collection(vol.uuid, connection=conn) == 1


def test_failed_job_is_reported(slow_ontap: EmulatorProcess) -> None:
    conn = ontap_client(slow_ontap)
    vol = Volume(name="fails", svm={"name": "svm0"}, size=64 * MiB)
    vol.post(connection=conn)
    # Both pass the synchronous checks; the second one fails when its job runs.
    first = Snapshot(vol.uuid, name="twin")
    first.post(poll=False, connection=conn)
    second = Snapshot(vol.uuid, name="twin")
    second.set_connection(conn)
    with pytest.raises(NetAppRestError, match=r"Job failed: .*already exists"):
        second.post()
    jobs = list(Job.get_collection(state="failure", fields="message,code,error", connection=conn))
    assert len(jobs) == 1 and jobs[0].code == 1638407
    assert jobs[0].error.code == "1638407"


def test_return_timeout(slow_ontap: EmulatorProcess) -> None:
    vol_body = json.dumps({"name": "rt", "svm": {"name": "svm0"}, "size": 64 * MiB}).encode()
    status, data = slow_ontap.request(
        "POST", "/api/storage/volumes?return_timeout=15&return_records=true", vol_body
    )
    body = json.loads(data)
    assert status == 201 and body["records"][0]["name"] == "rt" and "job" in body
    status, data = slow_ontap.request(
        "POST", "/api/storage/volumes?return_timeout=0", vol_body.replace(b"rt", b"r2")
    )
    assert status == 202
    vol_uuid = body["records"][0]["uuid"]
    snap = json.dumps({"name": "s"}).encode()
    slow_ontap.request("POST", f"/api/storage/volumes/{vol_uuid}/snapshots", snap)
    status, data = slow_ontap.request(
        "POST", f"/api/storage/volumes/{vol_uuid}/snapshots?return_timeout=15", snap
    )
    assert status == 400 and json.loads(data)["error"]["code"] == "1638407"


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "sigkill"])
def test_state_and_files_survive_restart(
    fresh_ontap_emulator: EmulatorProcess, crash: bool
) -> None:
    emu = fresh_ontap_emulator
    conn = ontap_client(emu)
    vol = Volume(name="keep", svm={"name": "svm0"}, size=64 * MiB)
    vol.post(connection=conn)
    disk = emu.export_dir() / "keep" / "disk.raw"
    disk.write_bytes(b"v1" * 1000)
    snap = Snapshot(vol.uuid, name="s1", comment="vmsnap:1")
    snap.post(connection=conn)
    disk.write_bytes(b"v2" * 1000)
    cert = emu.cert

    emu.restart(crash=crash)
    conn = ontap_client(emu)
    assert emu.cert == cert
    again = Volume.find(name="keep", connection=conn)
    assert again is not None and again.uuid == vol.uuid
    snaps = list(Snapshot.get_collection(vol.uuid, fields="comment", connection=conn))
    assert [(s.name, s.comment) for s in snaps] == [("s1", "vmsnap:1")]
    assert disk.read_bytes() == b"v2" * 1000
    Volume(uuid=vol.uuid).patch(connection=conn, **{"restore_to.snapshot.name": "s1"})
    assert disk.read_bytes() == b"v1" * 1000
    assert {j.state for j in Job.get_collection(fields="state", connection=conn)} == {"success"}


def test_crash_leftovers_are_removed_at_start(fresh_ontap_emulator: EmulatorProcess) -> None:
    emu = fresh_ontap_emulator
    vol = Volume(name="left", svm={"name": "svm0"}, size=64 * MiB)
    vol.post(connection=ontap_client(emu))
    emu.kill()
    meta = emu.data_dir / "ontap"
    junk = [
        meta / "snapshots" / vol.uuid / "half-copied-snapshot",
        emu.export_dir() / f".restore-{vol.uuid}",
        meta / ".state.json.abc123.tmp",
    ]
    for path in junk[:2]:
        path.mkdir(parents=True)
    junk[2].write_text("{")
    emu.start()
    assert [p for p in junk if p.exists()] == []
    assert Volume.find(name="left", connection=ontap_client(emu)) is not None
