"""Start an emulator as a real subprocess and talk to its emulator-only endpoints.

No pytest here (see :mod:`vmsnap_emulators.pytest_fixtures` for fixtures): drivers' tests,
benchmarks and demo scripts can use :func:`start_emulator` directly::

    with start_emulator("element", tmp_path / "el") as emu:
        sdk = ElementFactory.create(emu.host, emu.user, emu.password, port=emu.port, ...)
        emu.write_volume(1, 0, b"A" * 4096)
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import selectors
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

START_TIMEOUT = 30.0


class EmulatorError(RuntimeError):
    """The emulator did not start, or an emulator-only endpoint returned an error."""


class EmulatorProcess:
    """A running ``vmsnap-emulator`` subprocess bound to a data directory.

    Attributes: ``kind`` (``element``/``ontap``), ``url`` (``https://127.0.0.1:PORT``),
    ``host``, ``port``, ``user``, ``password``, ``cert`` (PEM to verify TLS, or use
    ``verify=False``), ``data_dir``, ``info`` (the parsed ``listen.json``).
    """

    def __init__(
        self,
        kind: str,
        data_dir: Path,
        *,
        user: str = "admin",
        password: str | None = None,
        extra_args: list[str] | None = None,
        durable: bool = True,
    ) -> None:
        self.kind = kind
        self.data_dir = data_dir
        self.user = user
        self.password = password or secrets.token_urlsafe(12)
        self.extra_args = list(extra_args or [])
        if not durable:
            self.extra_args.append("--no-fsync")
        self.info: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, port: int = 0) -> EmulatorProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pw_file = self.data_dir.parent / f".{self.data_dir.name}.password"
        fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.password)
        self._stderr = (self.data_dir.parent / f"{self.data_dir.name}.stderr.log").open("ab")
        cmd = [
            sys.executable,
            "-m",
            "vmsnap_emulators",
            self.kind,
            "--listen",
            f"127.0.0.1:{port}",
            "--data",
            str(self.data_dir),
            "--user",
            self.user,
            "--password-file",
            str(pw_file),
            "--log-level",
            "INFO",
            *self.extra_args,
        ]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr)
        self.info = json.loads(self._read_first_line())
        return self

    def _read_first_line(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self._proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_TIMEOUT
        buf = b""
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                self.kill()
                raise EmulatorError(f"{self.kind} emulator did not start: {self.stderr_tail()}")
            chunk = os.read(self._proc.stdout.fileno(), 4096)
            if not chunk:
                self._proc.wait()
                message = (
                    f"{self.kind} emulator exited with {self._proc.returncode}: "
                    f"{self.stderr_tail()}"
                )
                self._cleanup()  # close the pipe and the log file before raising
                raise EmulatorError(message)
            buf += chunk
        sel.close()
        return buf.split(b"\n", 1)[0].decode()

    def stderr_tail(self, limit: int = 4000) -> str:
        path = self.data_dir.parent / f"{self.data_dir.name}.stderr.log"
        try:
            return path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait: returns the exit code (0 on a graceful shutdown)."""
        proc = self._proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._cleanup()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown code runs."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._cleanup()

    def restart(self, *, crash: bool = False) -> EmulatorProcess:
        """Stop (or kill, with ``crash``) and start again on the same data dir."""
        if crash:
            self.kill()
        else:
            self.stop()
        return self.start()

    def _cleanup(self) -> None:
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- connection facts --------------------------------------------------------------
    @property
    def url(self) -> str:
        return str(self.info["url"])

    @property
    def host(self) -> str:
        return str(self.info["host"])

    @property
    def port(self) -> int:
        return int(self.info["port"])

    @property
    def cert(self) -> str:
        return str(self.info["cert"])

    # -- emulator-only HTTP endpoints --------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        password: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Authenticated HTTPS request to the emulator: (status, body); no raise on 4xx."""
        token = base64.b64encode(f"{self.user}:{password or self.password}".encode()).decode()
        req = urllib.request.Request(self.url + path, data=body, method=method)
        req.add_header("Authorization", f"Basic {token}")
        if body is not None:
            req.add_header("Content-Type", "application/octet-stream")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        ctx = ssl.create_default_context(cafile=self.cert)
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=60) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def _ok(self, method: str, path: str, body: bytes | None = None) -> bytes:
        status, data = self.request(method, path, body)
        if status >= 400:
            raise EmulatorError(f"{method} {path}: HTTP {status}: {data[:500]!r}")
        return data

    def emulator_info(self) -> dict[str, Any]:
        """``GET /emulator/info``: data dir, store counters, (ontap) export dir."""
        result: dict[str, Any] = json.loads(self._ok("GET", "/emulator/info"))
        return result

    def read_volume(self, volume_id: int, offset: int = 0, length: int | None = None) -> bytes:
        """Element: bytes of a volume (``length`` None: to the end)."""
        q = f"?offset={offset}" + ("" if length is None else f"&length={length}")
        return self._ok("GET", f"/emulator/volumes/{volume_id}/data{q}")

    def write_volume(self, volume_id: int, offset: int, data: bytes) -> None:
        """Element: write ``data`` into a volume at ``offset``."""
        self._ok("PUT", f"/emulator/volumes/{volume_id}/data?offset={offset}", data)

    def read_snapshot(self, snapshot_id: int, offset: int = 0, length: int | None = None) -> bytes:
        """Element: bytes of a snapshot."""
        q = f"?offset={offset}" + ("" if length is None else f"&length={length}")
        return self._ok("GET", f"/emulator/snapshots/{snapshot_id}/data{q}")

    def export_dir(self) -> Path:
        """ONTAP: the directory exported over NFS (``<export>/<svm>/<volume>/...``)."""
        return Path(self.info["export_dir"])


def start_emulator(
    kind: str,
    data_dir: Path,
    *,
    user: str = "admin",
    password: str | None = None,
    extra_args: list[str] | None = None,
    durable: bool = True,
) -> EmulatorProcess:
    """Start ``vmsnap-emulator <kind>`` on a free loopback port; use as a context manager.

    ``durable=False`` passes ``--no-fsync``: much faster on a busy machine, and still safe
    across SIGTERM/SIGKILL restarts (only a power loss could lose acknowledged writes).
    """
    return EmulatorProcess(
        kind, data_dir, user=user, password=password, extra_args=extra_args, durable=durable
    ).start()
