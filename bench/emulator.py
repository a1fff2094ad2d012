"""Emulator: Element snapshot time with 16 MiB against 1 GiB of written data.

A snapshot on the Element emulator freezes the volume's block map (O(1)), as
on the array; this checks that the cost does not grow with the data. Two
volumes are filled through the emulator-only data endpoint with a sparse
pattern (one distinct 64 KiB block per MiB, repeated: few bytes to hash and
store, but a full block map), then CreateSnapshot is timed on each, taking
turns, through the real JSON-RPC API over HTTPS.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import stack
from bench.stats import median

MIB = 1 << 20
BLOCK = 64 * 1024
CHUNK = 64 * MIB  # the data endpoint's limit per request


@dataclass(frozen=True)
class EmulatorResult:
    small_mib: int
    large_mib: int
    small_ms: list[float]
    large_ms: list[float]

    @property
    def ratio(self) -> float:
        return median(self.large_ms) / median(self.small_ms)


class _Element:
    def __init__(self, info: dict[str, Any], user: str, password: str) -> None:
        self.url = str(info["url"])
        self.ctx = ssl.create_default_context(cafile=str(info["cert"]))
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.auth = f"Basic {token}"

    def _send(self, method: str, path: str, body: bytes, content_type: str) -> bytes:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        request.add_header("Authorization", self.auth)
        request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, context=self.ctx, timeout=120) as reply:
            return bytes(reply.read())

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        body = json.dumps({"method": method, "params": params, "id": 1}).encode()
        reply = json.loads(self._send("POST", "/json-rpc/12.3", body, "application/json"))
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply["result"]
        return result

    def write(self, volume_id: int, offset: int, data: bytes) -> None:
        self._send(
            "PUT",
            f"/emulator/volumes/{volume_id}/data?offset={offset}",
            data,
            "application/octet-stream",
        )


def _pattern(mib: int) -> bytes:
    """``mib`` MiB where each MiB holds one distinct non-zero 64 KiB block, repeated."""
    out = bytearray()
    for m in range(mib):
        block = (m.to_bytes(8, "little") * (BLOCK // 8))[:BLOCK]
        out += block * (MIB // BLOCK)
    return bytes(out)


def _fill(element: _Element, volume_id: int, mib: int) -> None:
    chunk_mib = CHUNK // MIB
    for start in range(0, mib, chunk_mib):
        n = min(chunk_mib, mib - start)
        element.write(volume_id, start * MIB, _pattern(n))


def measure_emulator(quick: bool, small_mib: int = 16, large_mib: int = 1024) -> EmulatorResult:
    # Imported here: the emulators are a separate distribution (`make venv` installs them).
    from vmsnap_emulators.testing import start_emulator

    samples = 10 if quick else 25
    with stack.workdir() as tmp:
        password = "bench-" + str(time.time_ns())
        emulator = start_emulator("element", Path(tmp) / "element", password=password)
        try:
            element = _Element(emulator.info, emulator.user, password)
            account = element.call("AddAccount", username="bench")["accountID"]
            volumes = {}
            for mib in (small_mib, large_mib):
                volume = element.call(
                    "CreateVolume",
                    name=f"bench-{mib}",
                    accountID=account,
                    totalSize=max(mib, 1024) * MIB * 2,
                    enable512e=True,
                )["volumeID"]
                _fill(element, volume, mib)
                volumes[mib] = volume
            times: dict[int, list[float]] = {small_mib: [], large_mib: []}
            for i in range(samples + 1):
                for mib in (small_mib, large_mib):
                    start = time.perf_counter()
                    snap = element.call("CreateSnapshot", volumeID=volumes[mib], name=f"s{i}")
                    elapsed = (time.perf_counter() - start) * 1000
                    element.call("DeleteSnapshot", snapshotID=snap["snapshotID"])
                    if i:  # the first round warms up
                        times[mib].append(elapsed)
        finally:
            emulator.stop()
    return EmulatorResult(small_mib, large_mib, times[small_mib], times[large_mib])
