"""Minimal HTTPS server shared by both emulators.

Standard library only (``ThreadingHTTPServer`` + ``ssl``): each emulator provides an
:class:`App` that turns a parsed :class:`Request` into a :class:`Response`. This module does
what both need identically: TLS, HTTP Basic auth, bounded request bodies, the ``listen.json``
handshake with the parent process, and graceful shutdown on SIGTERM.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from .atomicio import atomic_write_json

LOG = logging.getLogger(__name__)

LISTEN_FILE = "listen.json"
MAX_DRAIN = 256 << 20  # oversized bodies up to this size are read and discarded


@dataclass
class Request:
    """One parsed HTTP request, after authentication."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def query_one(self, name: str) -> str | None:
        """Last value of a query parameter (later values win, as on most servers)."""
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass
class Response:
    """What an :class:`App` returns; the server adds Content-Length."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
        data = json.dumps(obj).encode("utf-8")
        return cls(status, data, "application/json", dict(headers or {}))


class App(Protocol):
    """The vendor-specific part of an emulator."""

    kind: str

    def max_body(self, method: str, path: str) -> int:
        """Largest accepted request body for this route, in bytes."""

    def handle(self, request: Request) -> Response:
        """Serve one authenticated request."""

    def unauthorized(self) -> Response:
        """The vendor's 401 response (the server adds WWW-Authenticate)."""

    def error(self, status: int, message: str) -> Response:
        """A transport-level error (bad length, too large, internal) in the vendor's shape."""

    def listen_info(self) -> dict[str, Any]:
        """Extra fields for listen.json (for example the export directory)."""

    def close(self) -> None:
        """Flush and release state at shutdown."""


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def check(self, header: str | None) -> bool:
        """Constant-time check of an ``Authorization: Basic ...`` header."""
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        ok_user = hmac.compare_digest(user.encode(), self.user.encode())
        ok_pass = hmac.compare_digest(password.encode(), self.password.encode())
        return ok_user and ok_pass


class EmulatorHTTPServer(ThreadingHTTPServer):
    """Threaded server that carries the app and credentials for its handlers."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App, credentials: Credentials) -> None:
        self.app = app
        self.credentials = credentials
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up or fail the TLS handshake (for example one that verifies the
        # self-signed certificate and rejects it) are routine: no traceback for them.
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | ssl.SSLError | TimeoutError):
            LOG.debug("connection from %s ended: %s", client_address, exc)
            return
        LOG.exception("error serving %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    server: EmulatorHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: the SDKs use requests sessions
    timeout = 120  # a stuck client must not pin a thread forever
    # Headers and body go out in separate writes; without TCP_NODELAY the client's delayed
    # ACK adds ~40 ms to every call.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # Request line and status only: headers (and so credentials) are never logged.
        LOG.info("%s %s", self.address_string(), format % args)

    def _dispatch(self) -> None:
        app = self.server.app
        split = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(split.path)
        if not self.server.credentials.check(self.headers.get("Authorization")):
            resp = app.unauthorized()
            resp.headers["WWW-Authenticate"] = f'Basic realm="{app.kind}"'
            self._drain_or_close()
            self._send(resp)
            return
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.close_connection = True
            self._send(app.error(411, "Chunked request bodies are not supported."))
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            self._send(app.error(400, "Invalid Content-Length header."))
            return
        limit = app.max_body(self.command, path)
        if length > limit:
            # Moderately oversized bodies are drained so the client can read the error
            # (closing mid-upload makes it see a broken pipe instead); huge ones are not.
            if length <= MAX_DRAIN:
                self._discard(length)
            self.close_connection = True
            self._send(app.error(413, f"Request body too large ({length} > {limit} bytes)."))
            return
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"}
        request = Request(
            method=self.command,
            path=path,
            query=urllib.parse.parse_qs(split.query, keep_blank_values=True),
            headers=headers,
            body=body,
        )
        try:
            resp = app.handle(request)
        except Exception:
            LOG.exception("internal error serving %s %s", self.command, path)
            resp = app.error(500, "Internal emulator error.")
        self._send(resp)

    def _discard(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            length -= len(chunk)

    def _drain_or_close(self) -> None:
        # Small unauthenticated bodies are drained so keep-alive still works; big ones close.
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if 0 <= length <= 1 << 20:
            self.rfile.read(length)
        else:
            self.close_connection = True

    def _send(self, resp: Response) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        for name, value in resp.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.body)


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) to a bind address."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen must be HOST:PORT, got {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def serve(
    app: App,
    *,
    listen: tuple[str, int],
    data_dir: Path,
    credentials: Credentials,
    cert: Path,
    key: Path,
) -> None:
    """Run ``app`` until SIGTERM/SIGINT; write ``DATA/listen.json`` and print it once bound."""
    host, port = listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    EmulatorHTTPServer.address_family = family
    server = EmulatorHTTPServer((host, port), app, credentials)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    # Handshake lazily in the handler thread, not in the accept loop, so one slow client
    # cannot block every other connection.
    server.socket = context.wrap_socket(
        server.socket, server_side=True, do_handshake_on_connect=False
    )
    bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    url_host = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
    info: dict[str, Any] = {
        "kind": app.kind,
        "url": f"https://{url_host}:{bound_port}",
        "host": bound_host,
        "port": bound_port,
        "cert": str(cert),
        "data_dir": str(data_dir),
        "user": credentials.user,
        "pid": os.getpid(),
    }
    info.update(app.listen_info())
    atomic_write_json(data_dir / LISTEN_FILE, info)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        LOG.info("signal %d: shutting down", signum)
        # shutdown() waits for serve_forever to return, so it cannot run on this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.05)  # also bounds how long SIGTERM waits
    finally:
        server.server_close()
        app.close()
        LOG.info("stopped")
