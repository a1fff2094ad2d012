"""Element emulator restarts: state, bytes and the TLS certificate survive."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from vmsnap_emulators.datadir import DataDirBusyError
from vmsnap_emulators.element.offline import open_element_data
from vmsnap_emulators.pytest_fixtures import element_client
from vmsnap_emulators.testing import EmulatorError, EmulatorProcess, start_emulator

# verify=False, as drivers do against arrays with self-signed certificates.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

MiB = 1 << 20


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "sigkill"])
def test_state_and_bytes_survive_restart(
    fresh_element_emulator: EmulatorProcess, crash: bool
) -> None:
    emu = fresh_element_emulator
    sdk = element_client(emu)
    acc = sdk.add_account("tenant").account_id
    vid = sdk.create_volume("disk-1", acc, 2 * MiB, attributes={"vm": "a"}).volume_id
    emu.write_volume(vid, 4096, b"before" * 1000)
    sid = sdk.create_snapshot(vid, name="s1", attributes={"vmsnap": "1"}).snapshot_id
    gid = sdk.create_group_snapshot([vid], name="g1").group_snapshot_id
    emu.write_volume(vid, 4096, b"after!" * 1000)
    cert_before = Path(emu.cert).read_bytes()

    assert emu.restart(crash=crash).running
    sdk = element_client(emu)
    vol = sdk.list_volumes(volume_ids=[vid]).volumes[0]
    assert (vol.name, vol.attributes) == ("disk-1", {"vm": "a"})
    snaps = sdk.list_snapshots(volume_id=vid).snapshots
    assert (snaps[0].snapshot_id, snaps[0].name) == (sid, "s1")
    assert sdk.list_group_snapshots(group_snapshot_id=gid).group_snapshots[0].name == "g1"
    assert emu.read_volume(vid, 4096, 6000) == b"after!" * 1000
    assert emu.read_snapshot(sid, 4096, 6000) == b"before" * 1000
    assert Path(emu.cert).read_bytes() == cert_before
    listen = json.loads((emu.data_dir / "listen.json").read_text())
    assert listen["port"] == emu.port and listen["pid"] == emu.pid
    # IDs keep counting after a restart instead of being reused.
    assert sdk.create_volume("disk-2", acc, MiB).volume_id == vid + 1


def test_second_process_on_same_data_dir_is_refused(
    fresh_element_emulator: EmulatorProcess,
) -> None:
    with pytest.raises(EmulatorError, match="another emulator"):
        start_emulator("element", fresh_element_emulator.data_dir)


@pytest.mark.parametrize("kind", ["element", "ontap"])
def test_sigterm_is_graceful(tmp_path: Path, kind: str) -> None:
    emu = start_emulator(kind, tmp_path / "data")
    assert emu.stop() == 0
    assert "stopped" in emu.stderr_tail()


def test_password_never_logged(fresh_element_emulator: EmulatorProcess) -> None:
    emu = fresh_element_emulator
    emu.request("POST", "/json-rpc/12.3", b"{}", password="wrong-secret")
    element_client(emu).add_account("x", initiator_secret="chapsecret12")
    emu.stop()
    log = emu.stderr_tail(1 << 20)
    assert "POST /json-rpc/12.3" in log
    for secret in (emu.password, "wrong-secret", "chapsecret12"):
        assert secret not in log


def test_offline_access_when_the_emulator_is_stopped(
    fresh_element_emulator: EmulatorProcess,
) -> None:
    emu = fresh_element_emulator
    sdk = element_client(emu)
    acc = sdk.add_account("offline").account_id
    vid = sdk.create_volume("disk", acc, MiB).volume_id
    emu.write_volume(vid, 0, b"online")
    with pytest.raises(DataDirBusyError), open_element_data(emu.data_dir):
        pass
    emu.stop()
    with open_element_data(emu.data_dir) as state:
        dev = state.device(vid)
        assert dev.read(0, 6) == b"online"
        dev.write(0, b"offline")
    emu.start()
    assert emu.read_volume(vid, 0, 7) == b"offline"


def test_tls_certificate_verifies_and_bad_handshakes_are_quiet(
    fresh_element_emulator: EmulatorProcess,
) -> None:
    emu = fresh_element_emulator
    status, _ = emu.request("GET", "/emulator/info")  # verifies against emu.cert
    assert status == 200
    with pytest.raises(urllib.error.URLError):  # default CAs do not trust it
        urllib.request.urlopen(
            emu.url + "/emulator/info", timeout=10, context=ssl.create_default_context()
        )
    assert emu.request("GET", "/emulator/info")[0] == 200
    emu.stop()
    assert "Traceback" not in emu.stderr_tail(1 << 20)
