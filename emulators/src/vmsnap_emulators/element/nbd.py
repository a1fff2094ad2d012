"""An NBD server exporting Element volumes: the emulator's stand-in for iSCSI.

A real SolidFire cluster serves volume bytes to hypervisors over iSCSI; this
emulator serves them over NBD (``--nbd-listen 127.0.0.1:PORT``), which QEMU,
``qemu-img``/``qemu-io`` and libnbd speak natively. The export name is the volume
ID (``nbd://127.0.0.1:PORT/42``).

Protocol subset (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md):
fixed newstyle handshake (``NO_ZEROES`` honoured), options ``EXPORT_NAME``,
``INFO``, ``GO``, ``ABORT`` (anything else, such as structured replies or meta
contexts, is answered ``NBD_REP_ERR_UNSUP`` so clients fall back), then simple
replies to ``READ``, ``WRITE``, ``FLUSH`` and ``DISC``.

Every request resolves the volume's *current head* under the cluster state lock
(:meth:`ElementState.device`): after a rollback the export serves the new head,
and a snapshot or rollback never interleaves with a half-applied write. Writes
are durable when acknowledged (the block store syncs them, unless ``--no-fsync``),
so ``FLUSH`` and ``FUA`` have nothing left to do. A volume deleted while
exported answers ``EIO``.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import struct
import threading
from typing import Any

from .errors import ElementError
from .state import ElementState

LOG = logging.getLogger(__name__)

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_INFO = 6
OPT_GO = 7

REP_ACK = 1
REP_INFO = 3
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_UNKNOWN = (1 << 31) + 6

INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

# Transmission flags: HAS_FLAGS | SEND_FLUSH | SEND_FUA.
TRANSMISSION_FLAGS = 1 | 4 | 8

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3

EPERM, EIO, EINVAL, ENOSPC = 1, 5, 22, 28

MAX_OPTION_LENGTH = 4096
MAX_REQUEST_LENGTH = 32 << 20


class _Closed(Exception):
    pass


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise _Closed
        buf += chunk
    return bytes(buf)


class _Handler(socketserver.BaseRequestHandler):
    server: NbdServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            volume_id = self._handshake(sock)
            if volume_id is not None:
                self._transmission(sock, volume_id)
        except (_Closed, ConnectionError, OSError):
            pass
        except Exception:  # a bug must not kill the emulator, only this connection
            LOG.exception("NBD connection failed")

    # -- handshake ---------------------------------------------------------------------
    def _export(self, name: bytes) -> tuple[int, int] | None:
        """(volume ID, size) of an active volume named by ``name``, else None."""
        text = name.decode("ascii", "replace")
        if not text.isdigit():
            return None
        volume_id = int(text)
        try:
            with self.server.state.lock:
                return volume_id, self.server.state.device(volume_id).size
        except ElementError:
            return None

    def _handshake(self, sock: socket.socket) -> int | None:
        sock.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (client_flags,) = struct.unpack(">I", _recv(sock, 4))
        no_zeroes = bool(client_flags & FLAG_NO_ZEROES)

        def reply(option: int, kind: int, data: bytes = b"") -> None:
            sock.sendall(struct.pack(">QIII", REPLY_MAGIC, option, kind, len(data)) + data)

        while True:
            magic, option, length = struct.unpack(">QII", _recv(sock, 16))
            if magic != IHAVEOPT or length > MAX_OPTION_LENGTH:
                return None
            data = _recv(sock, length)
            if option == OPT_EXPORT_NAME:
                found = self._export(data)
                if found is None:
                    return None  # the protocol's only answer: drop the connection
                sock.sendall(struct.pack(">QH", found[1], TRANSMISSION_FLAGS))
                if not no_zeroes:
                    sock.sendall(bytes(124))
                return found[0]
            if option == OPT_ABORT:
                reply(option, REP_ACK)
                return None
            if option in (OPT_INFO, OPT_GO):
                if length < 6:
                    reply(option, REP_ERR_INVALID)
                    continue
                (name_len,) = struct.unpack(">I", data[:4])
                name = data[4 : 4 + name_len]
                found = self._export(name)
                if found is None:
                    msg = f"no active volume {name.decode('ascii', 'replace')!r}".encode()
                    reply(option, REP_ERR_UNKNOWN, msg)
                    continue
                reply(
                    option, REP_INFO, struct.pack(">HQH", INFO_EXPORT, found[1], TRANSMISSION_FLAGS)
                )
                # Any alignment works (partial blocks are read-modify-write); the
                # store's block is the preferred size.
                block = self.server.state.layers.block_size
                reply(
                    option,
                    REP_INFO,
                    struct.pack(">HIII", INFO_BLOCK_SIZE, 1, block, MAX_REQUEST_LENGTH),
                )
                reply(option, REP_ACK)
                if option == OPT_GO:
                    return found[0]
                continue
            reply(option, REP_ERR_UNSUP)

    # -- transmission ------------------------------------------------------------------
    def _transmission(self, sock: socket.socket, volume_id: int) -> None:
        state = self.server.state
        while True:
            magic, _flags, cmd, cookie, offset, length = struct.unpack(">IHHQQI", _recv(sock, 28))
            if magic != REQUEST_MAGIC:
                return
            if cmd == CMD_DISC:
                return
            payload = b""
            if cmd == CMD_WRITE:
                if length > MAX_REQUEST_LENGTH:
                    return  # cannot skip that much safely: drop the connection
                payload = _recv(sock, length)
            error, data = 0, b""
            try:
                with state.lock:
                    device = state.device(volume_id)  # the current head, after any rollback
                    if cmd == CMD_READ:
                        if length > MAX_REQUEST_LENGTH:
                            raise ValueError("read too large")
                        data = device.read(offset, length)
                    elif cmd == CMD_WRITE:
                        device.write(offset, payload)
                    elif cmd == CMD_FLUSH:
                        pass
                    else:
                        error = EINVAL
            except ElementError as exc:
                LOG.warning("NBD volume %d: %s", volume_id, exc.message)
                error = EIO
            except ValueError:
                error = EINVAL
            except OSError:
                LOG.exception("NBD volume %d: I/O failed", volume_id)
                error = ENOSPC
            header = struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, error, cookie)
            sock.sendall(header + data if not error else header)


class NbdServer(socketserver.ThreadingTCPServer):
    """Threaded NBD server over an :class:`ElementState` (one thread per connection)."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], state: ElementState) -> None:
        self.state = state
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self.server_address[0])

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="nbd"
        )
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def info(self) -> dict[str, Any]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return {"nbd": {"host": self.host, "port": self.port, "url": f"nbd://{host}:{self.port}/"}}
