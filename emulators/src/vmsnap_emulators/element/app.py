"""HTTP routes of the Element emulator.

* ``POST /json-rpc/<version>``: the Element API (the version must be one the cluster
  supports, like the real endpoint).
* Emulator-only (not part of the Element API; same Basic auth), for tests and tools:

  - ``GET /emulator/info``: data dir, block size, store counters.
  - ``GET /emulator/volumes/<id>/data?offset=N&length=M``: read volume bytes.
  - ``PUT /emulator/volumes/<id>/data?offset=N``: write the request body at ``offset``.
  - ``GET /emulator/snapshots/<id>/data?offset=N&length=M``: read a snapshot's bytes.
  - ``GET /emulator/snapshots/<id>/allocated?start=N&limit=M``: the snapshot's ranges
    that hold data; ``.../delta?base=<id>&start=N&limit=M``: the ranges that differ
    from an older snapshot of the same volume. JSON ``{"blockSize", "totalSize",
    "ranges": [[offset, length], ...], "more"}``: whole blocks, coalesced, sorted,
    ending after ``start``, at most ``limit`` (1..10000). **No such call exists in
    the real Element API** (its only bulk read, StartBulkVolumeRead, streams a
    whole snapshot or an opaque "native" format to a script): this is the
    emulator's own block map, for the changed-block contract's reference driver.

  Errors there are ``{"error": {"name", "message"}}`` with a 4xx status.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from ..httpserver import Request, Response
from . import methods
from .errors import ElementError
from .nbd import NbdServer
from .state import ElementState

LOG = logging.getLogger(__name__)

MAX_RPC_BODY = 1 << 20
MAX_DATA_BODY = 64 << 20
_RPC_PATH = re.compile(r"^/json-rpc/(?P<version>[0-9]+(?:\.[0-9]+)?)/?$")
_DATA_PATH = re.compile(r"^/emulator/(?P<kind>volumes|snapshots)/(?P<id>[0-9]+)/data$")
_BLOCKS_PATH = re.compile(r"^/emulator/snapshots/(?P<id>[0-9]+)/(?P<what>allocated|delta)$")
MAX_RANGES = 10000


class ElementApp:
    kind = "element"

    def __init__(
        self, state: ElementState, data_dir: Path, nbd_listen: tuple[str, int] | None = None
    ) -> None:
        self.state = state
        self.data_dir = data_dir
        # The volumes' block protocol (the stand-in for iSCSI), when asked for.
        self.nbd: NbdServer | None = None
        if nbd_listen is not None:
            self.nbd = NbdServer(nbd_listen, state)
            self.nbd.start()
        self._versions = {float(v) for v in methods.SUPPORTED_VERSIONS}

    # -- App protocol ------------------------------------------------------------------
    def max_body(self, method: str, path: str) -> int:
        return MAX_DATA_BODY if path.startswith("/emulator/") else MAX_RPC_BODY

    def unauthorized(self) -> Response:
        # The real cluster answers 401 with an HTML page; the SDK looks for this text.
        body = (
            b"<html><head><title>401 Unauthorized.</title></head>"
            b"<body><h1>401 Unauthorized.</h1></body></html>"
        )
        return Response(401, body, "text/html")

    def error(self, status: int, message: str) -> Response:
        name = {413: "xRequestTooLarge", 500: "xInternalError"}.get(status, "xInvalidRequest")
        return Response.json(status, {"id": None, "error": ElementError(name, message).to_json()})

    def listen_info(self) -> dict[str, Any]:
        info = {"cluster": self.state.cluster["name"], "api_version": methods.API_VERSION}
        if self.nbd is not None:
            info.update(self.nbd.info())
        return info

    def close(self) -> None:
        if self.nbd is not None:
            self.nbd.stop()
        with self.state.lock:
            self.state.commit()

    # -- routing -----------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        m = _RPC_PATH.match(request.path)
        if m:
            if request.method != "POST":
                return Response(405, b"", "text/plain", {"Allow": "POST"})
            return self._rpc(float(m.group("version")), request.body)
        if request.path == "/emulator/info" and request.method == "GET":
            return self._info()
        m = _DATA_PATH.match(request.path)
        if m:
            return self._data(m.group("kind"), int(m.group("id")), request)
        m = _BLOCKS_PATH.match(request.path)
        if m and request.method == "GET":
            return self._blocks(m.group("what"), int(m.group("id")), request)
        return _side_error(404, "xNotFound", f"No route for {request.method} {request.path}.")

    def _rpc(self, version: float, body: bytes) -> Response:
        request_id: Any = None
        try:
            try:
                doc = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ElementError(
                    "xInvalidJSON",
                    f"Request body is not JSON: {exc.msg}"
                    if isinstance(exc, json.JSONDecodeError)
                    else "Request body is not UTF-8.",
                ) from None
            if not isinstance(doc, dict):
                raise ElementError("xInvalidJSON", "Request body must be a JSON object.")
            request_id = doc.get("id")
            if version not in self._versions:
                raise ElementError("xUnknownAPIVersion", f"Unknown API version {version}.")
            result, unused = methods.call(self.state, doc.get("method"), doc.get("params"))
        except ElementError as exc:
            return Response.json(200, {"id": request_id, "error": exc.to_json()})
        out: dict[str, Any] = {"id": request_id, "result": result}
        if unused:
            out["unusedParameters"] = unused
        return Response.json(200, out)

    # -- emulator-only endpoints -------------------------------------------------------
    def _info(self) -> Response:
        with self.state.lock:
            layers = self.state.layers
            body = {
                "kind": self.kind,
                "data_dir": str(self.data_dir),
                "block_size": layers.block_size,
                "stats": layers.stats.as_dict(),
                "block_count": layers.blocks.count(),
                "layer_count": len(layers.table()),
            }
        return Response.json(200, body)

    def _data(self, kind: str, object_id: int, request: Request) -> Response:
        try:
            offset = int(request.query_one("offset") or 0)
            if request.method == "GET":
                length_q = request.query_one("length")
                with self.state.lock:
                    dev = (
                        self.state.device(object_id)
                        if kind == "volumes"
                        else self.state.snapshot_device(object_id)
                    )
                    length = int(length_q) if length_q is not None else dev.size - offset
                    if length > MAX_DATA_BODY:
                        raise ValueError(f"length is limited to {MAX_DATA_BODY} bytes per read")
                    data = dev.read(offset, length)
                return Response(200, data, "application/octet-stream")
            if request.method == "PUT" and kind == "volumes":
                with self.state.lock:
                    self.state.device(object_id).write(offset, request.body)
                return Response.json(200, {"written": len(request.body), "offset": offset})
        except ElementError as exc:
            return _side_error(404, exc.name, exc.message)
        except ValueError as exc:
            return _side_error(400, "xInvalidParameter", str(exc))
        return _side_error(405, "xMethodNotAllowed", f"{request.method} not allowed here.")

    def _blocks(self, what: str, snapshot_id: int, request: Request) -> Response:
        try:
            start = int(request.query_one("start") or 0)
            limit = int(request.query_one("limit") or 1000)
            if start < 0 or not 1 <= limit <= MAX_RANGES:
                raise ValueError(f"start must be >= 0 and limit 1..{MAX_RANGES}")
            with self.state.lock:
                snap = self.state.snapshot(snapshot_id)
                layers = self.state.layers
                if what == "allocated":
                    blocks = layers.allocated_blocks(snap.layer)
                else:
                    base = self.state.snapshot(int(request.query_one("base") or "-1"))
                    if base.volumeID != snap.volumeID:
                        raise ValueError(
                            f"snapshot {base.snapshotID} is of volume {base.volumeID}, "
                            f"not of volume {snap.volumeID}"
                        )
                    blocks = layers.changed_blocks(base.layer, snap.layer)
                size, bs = snap.totalSize, layers.block_size
        except ElementError as exc:
            return _side_error(404, exc.name, exc.message)
        except ValueError as exc:
            return _side_error(400, "xInvalidParameter", str(exc))
        ranges = _coalesce(blocks, bs, size, start)
        body = {
            "blockSize": bs,
            "totalSize": size,
            "ranges": ranges[:limit],
            "more": len(ranges) > limit,
        }
        return Response.json(200, body)


def _coalesce(blocks: list[int], block_size: int, size: int, start: int) -> list[list[int]]:
    """Sorted block indexes as [offset, length] extents ending after ``start``."""
    out: list[list[int]] = []
    for idx in blocks:
        offset = idx * block_size
        end = min(offset + block_size, size)
        if end <= start:
            continue
        if out and out[-1][0] + out[-1][1] == offset:
            out[-1][1] = end - out[-1][0]
        else:
            out.append([offset, end - offset])
    return out


def _side_error(status: int, name: str, message: str) -> Response:
    return Response.json(status, {"error": {"name": name, "message": message}})
