"""Prometheus metrics of a vmsnap server process, and the ``/metrics`` endpoint.

Every server built on the SDK (drivers, agents, the host) counts its RPCs at
the one boundary they all cross (:func:`vmsnap_sdk._server.invoke`)::

    vmsnap_rpc_server_handled_total{method, code}      calls answered, by status
    vmsnap_rpc_server_handling_seconds{method}         time to answer (histogram)

Metrics are served only when asked: ``--metrics-listen ADDRESS`` (``PORT``,
``:PORT`` or ``HOST:PORT``; a bare port binds 127.0.0.1, port 0 picks one; or
``fd:N``, a listening loopback socket a supervisor bound and passed down, as
``vmsnap up`` does: the supervisor holds the port, so no other process can take
it between its choice and the server's start).
Like the gRPC listeners, ``/metrics`` binds loopback only: a Prometheus on
another machine scrapes through a proxy or an agent that the operator
secures. Labels are bounded: method names come from the contracts, codes
from gRPC's fixed set.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    make_wsgi_app,
    start_http_server,
)

#: Seconds: from a cache hit to a slow array call (the contract's deadlines are ≤ minutes).
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

RPC_HANDLED = Counter(
    "vmsnap_rpc_server_handled_total",
    "RPCs this server answered, by method and gRPC status code.",
    ["method", "code"],
)
RPC_SECONDS = Histogram(
    "vmsnap_rpc_server_handling_seconds",
    "Time this server took to answer an RPC, by method.",
    ["method"],
    buckets=LATENCY_BUCKETS,
)


_M = TypeVar("_M", Counter, Histogram)
_children: dict[tuple[Counter | Histogram, tuple[str, ...]], Any] = {}


def child(metric: _M, *values: str) -> _M:
    """``metric.labels(*values)``, looked up once per label values: ``labels()``
    checks and converts its arguments and takes a lock on every call, several
    times what the observation costs, on every RPC of every server. For labels
    from bounded sets (methods, codes, peers, operation types) whose children
    are never removed. Keyed by the metric itself (kept alive here), not its
    ``id()``, which a later metric could reuse."""
    key = (metric, values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*values)
    return found


def observe_rpc(method: str, code: str, seconds: float) -> None:
    """One answered RPC."""
    child(RPC_HANDLED, method, code).inc()
    child(RPC_SECONDS, method).observe(seconds)


#: ``--metrics-listen fd:N``: serve on inherited file descriptor N.
FD_PREFIX = "fd:"


def inherited_fd(address: str) -> int | None:
    """N of ``fd:N`` (a listening socket passed down by a supervisor), else None;
    ValueError when N is no file descriptor number a socket can have."""
    text = address.strip()
    if not text.startswith(FD_PREFIX):
        return None
    try:
        fd = int(text.removeprefix(FD_PREFIX))
    except ValueError:
        fd = -1
    if fd < 3:  # 0-2 are stdin, stdout, stderr
        raise ValueError(
            f"--metrics-listen {address!r}: expected fd:N, N the number of a listening "
            "socket this process inherited (3 or more)"
        )
    return fd


def check_address(address: str) -> None:
    """ValueError saying what to write unless ``address`` is a ``--metrics-listen``
    value: ``PORT``, ``HOST:PORT`` (loopback) or ``fd:N``."""
    if inherited_fd(address) is None:
        parse_address(address)


def parse_address(address: str) -> tuple[str, int]:
    """``PORT``, ``:PORT``, ``HOST:PORT`` or ``[V6]:PORT`` → (host, port); loopback only.

    Raises ValueError saying what to write instead.
    """
    text = address.strip()
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(
            f"--metrics-listen {address!r}: expected PORT or HOST:PORT, e.g. 127.0.0.1:9464"
        ) from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--metrics-listen {address!r}: port {port} is out of range")
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback:
        raise ValueError(
            f"--metrics-listen {address!r}: /metrics binds loopback only (127.0.0.1, ::1, "
            "localhost); scrape from elsewhere through a proxy you secure"
        )
    return host, port


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint (a daemon thread of the process)."""

    url: str
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def start_metrics_server(address: str, registry: CollectorRegistry = REGISTRY) -> MetricsServer:
    """Serve ``registry`` at ``http://ADDRESS/metrics``; ValueError or OSError when it
    cannot (a non-loopback or malformed address, a port in use, an ``fd:N`` that is
    no listening loopback socket)."""
    fd = inherited_fd(address)
    if fd is not None:
        return _serve_inherited(fd, registry)
    host, port = parse_address(address)
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound = server.server_port
    shown = f"[{host}]" if ":" in host else host
    return MetricsServer(f"http://{shown}:{bound}/metrics", server, thread)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # as prometheus_client's: a scrape never holds the exit


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged (prometheus_client's server does the same)."""


def _serve_inherited(fd: int, registry: CollectorRegistry) -> MetricsServer:
    """``/metrics`` on the listening socket ``fd`` (bound by the supervisor)."""
    sock = socket.socket(fileno=fd)
    try:
        host, port = sock.getsockname()[:2]
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.type != socket.SOCK_STREAM or not listening:
            raise ValueError(f"--metrics-listen fd:{fd} is not a listening TCP socket")
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"--metrics-listen fd:{fd} is bound to {host}: loopback only")
    except BaseException:
        sock.detach()  # not ours to close when it is not what was promised
        raise
    server = _ThreadingServer((host, port), _Quiet, bind_and_activate=False)
    server.socket.close()  # the one TCPServer made; it serves the inherited one
    server.socket = sock
    server.server_address = (host, port)
    server.server_name, server.server_port = host, port
    server.setup_environ()
    server.set_app(make_wsgi_app(registry))
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    return MetricsServer(f"http://{shown}:{port}/metrics", server, thread)
