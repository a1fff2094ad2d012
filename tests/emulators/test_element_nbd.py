"""The Element emulator's NBD export (the stand-in for iSCSI), driven by qemu-io/qemu-img.

Bytes written over NBD are in the volume (read back through the data endpoint),
bytes written through the endpoint are read over NBD, and a snapshot + rollback
is visible over NBD: the export follows the volume's head.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.tools import missing
from vmsnap_emulators.testing import EmulatorProcess, start_emulator

pytestmark = pytest.mark.skipif(
    missing("qemu-io", "qemu-utils") is not None,
    reason="needs qemu-io (apt-get install qemu-utils)",
)

MiB = 1 << 20


@pytest.fixture(scope="module")
def element_nbd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with start_emulator(
        "element",
        tmp_path_factory.mktemp("element-nbd"),
        extra_args=["--nbd-listen", "127.0.0.1:0"],
        durable=False,
    ) as emu:
        yield emu


def _rpc(emu: EmulatorProcess, method: str, params: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"method": method, "params": params, "id": 1}).encode()
    _, data = emu.request("POST", "/json-rpc/12.3", body)
    reply: dict[str, Any] = json.loads(data)
    assert "error" not in reply, reply
    result: dict[str, Any] = reply["result"]
    return result


def _volume(emu: EmulatorProcess, name: str, size: int = 8 * MiB) -> int:
    account = _rpc(emu, "AddAccount", {"username": f"acct-{name}"})["accountID"]
    created = _rpc(
        emu,
        "CreateVolume",
        {"name": name, "accountID": account, "totalSize": size, "enable512e": True},
    )
    return int(created["volumeID"])


def _url(emu: EmulatorProcess, volume_id: int) -> str:
    return f"{emu.info['nbd']['url']}{volume_id}"


def _qemu_io(url: str, *commands: str) -> str:
    args = ["qemu-io", "-f", "raw"]
    for c in commands:
        args += ["-c", c]
    done = subprocess.run([*args, url], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "failed" not in done.stdout, done.stdout
    return done.stdout


def test_listen_info_reports_the_nbd_port(element_nbd: EmulatorProcess) -> None:
    nbd = element_nbd.info["nbd"]
    assert nbd["host"] == "127.0.0.1" and nbd["port"] > 0
    assert nbd["url"] == f"nbd://127.0.0.1:{nbd['port']}/"
    on_disk = json.loads((element_nbd.data_dir / "listen.json").read_text())
    assert on_disk["nbd"] == nbd


def test_qemu_img_sees_the_volume_size(element_nbd: EmulatorProcess) -> None:
    vol = _volume(element_nbd, "size")
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", _url(element_nbd, vol)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert json.loads(out)["virtual-size"] == 8 * MiB


def test_nbd_writes_land_in_the_volume_and_back(element_nbd: EmulatorProcess) -> None:
    vol = _volume(element_nbd, "rw")
    url = _url(element_nbd, vol)
    # Unaligned on purpose: spans a block boundary of the store (64 KiB).
    _qemu_io(url, f"write -P 0x5a {64 * 1024 - 512} 4096", "flush")
    assert element_nbd.read_volume(vol, 64 * 1024 - 512, 4096) == b"\x5a" * 4096
    assert element_nbd.read_volume(vol, 0, 512) == bytes(512)
    element_nbd.write_volume(vol, 2 * MiB, b"\xa5" * 8192)
    _qemu_io(url, f"read -P 0xa5 {2 * MiB} 8192", f"read -P 0 {3 * MiB} 4096")


def test_snapshot_and_rollback_are_visible_over_nbd(
    element_nbd: EmulatorProcess, tmp_path: Path
) -> None:
    vol = _volume(element_nbd, "snap")
    url = _url(element_nbd, vol)
    _qemu_io(url, "write -P 0x11 0 1M")
    snap = _rpc(element_nbd, "CreateSnapshot", {"volumeID": vol, "name": "s1"})["snapshotID"]
    _qemu_io(url, "write -P 0x22 0 1M")
    assert element_nbd.read_snapshot(snap, 0, 4096) == b"\x11" * 4096
    _rpc(
        element_nbd,
        "RollbackToSnapshot",
        {"volumeID": vol, "snapshotID": snap, "saveCurrentState": False},
    )
    _qemu_io(url, "read -P 0x11 0 1M")
    image = tmp_path / "copy.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(image)],
        check=True,
        timeout=60,
    )
    assert image.read_bytes()[:4096] == b"\x11" * 4096


def test_long_lived_connection_follows_the_head(element_nbd: EmulatorProcess) -> None:
    """A raw client that stays connected reads the rolled-back bytes after a rollback."""
    vol = _volume(element_nbd, "live")
    element_nbd.write_volume(vol, 0, b"\x01" * 4096)
    snap = _rpc(element_nbd, "CreateSnapshot", {"volumeID": vol})["snapshotID"]
    with socket.create_connection(("127.0.0.1", element_nbd.info["nbd"]["port"]), 10) as s:
        _raw_handshake(s, str(vol))
        _raw_write(s, 0, b"\x02" * 4096)
        assert element_nbd.read_volume(vol, 0, 4096) == b"\x02" * 4096
        _rpc(
            element_nbd,
            "RollbackToSnapshot",
            {"volumeID": vol, "snapshotID": snap, "saveCurrentState": False},
        )
        assert _raw_read(s, 0, 4096) == b"\x01" * 4096
        # Deleted while connected: EIO, the connection stays usable for DISC.
        _rpc(element_nbd, "DeleteVolume", {"volumeID": vol})
        assert _raw_request(s, 0, 0, 4096)[0] == 5
        s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 9, 0, 0))


def test_unknown_export_is_refused(element_nbd: EmulatorProcess) -> None:
    done = subprocess.run(
        ["qemu-io", "-f", "raw", "-c", "read 0 512", _url(element_nbd, 999999)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "999999" in done.stderr


# --- a minimal raw NBD client (fixed newstyle, OPT_GO, simple replies) ----------------


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "connection closed"
        buf += chunk
    return buf


def _raw_handshake(s: socket.socket, name: str) -> None:
    magic, opt, flags = struct.unpack(">QQH", _recv(s, 18))
    assert (magic, opt) == (0x4E42444D41474943, 0x49484156454F5054) and flags & 1
    s.sendall(struct.pack(">I", 3))
    data = struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)
    s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, len(data)) + data)
    while True:
        _, _, kind, length = struct.unpack(">QIII", _recv(s, 20))
        _recv(s, length)
        if kind == 1:  # ACK: transmission starts
            return
        assert kind == 3, f"option reply {kind:#x}"


def _raw_request(
    s: socket.socket, cmd: int, offset: int, length: int, data: bytes = b""
) -> tuple[int, bytes]:
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, cmd, 7, offset, length) + data)
    magic, error, cookie = struct.unpack(">IIQ", _recv(s, 16))
    assert magic == 0x67446698 and cookie == 7
    if cmd == 0 and error == 0:
        return 0, _recv(s, length)
    return error, b""


def _raw_read(s: socket.socket, offset: int, length: int) -> bytes:
    error, data = _raw_request(s, 0, offset, length)
    assert error == 0
    return data


def _raw_write(s: socket.socket, offset: int, data: bytes) -> None:
    assert _raw_request(s, 1, offset, len(data), data)[0] == 0


def test_nbd_listens_on_loopback_only(tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("x")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmsnap_emulators",
            "element",
            "--data",
            str(tmp_path / "d"),
            "--user",
            "u",
            "--password-file",
            str(password),
            "--nbd-listen",
            "0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "loopback" in done.stderr, done.stderr
