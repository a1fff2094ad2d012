"""Snapshot reads and changed blocks for ONTAP file clones, over the real REST API.

A disk's snapshot is a file clone (``/.vmsnap/...``, see :mod:`._layout`), and
ONTAP reads a file's bytes over REST: ``GET /api/storage/volumes/{uuid}/files/
{path}?byte_offset=&length=`` with ``Accept: multipart/form-data``, at most 1 MiB
per call. ONTAP has no block diff between two file clones, so the changed
blocks are found by **reading both clones and comparing** them 64 KiB at a time:
the cost is a full read of both files from ``starting_offset`` on (a 1 GiB disk
is 2 x 1024 calls), stopping once a page is full. Allocated ranges are the
non-zero blocks (one full read). Honest, slow on big disks; an array-side diff
(SnapDiff) would replace it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import quote

import requests

from vmsnap_driver_netapp._config import Config
from vmsnap_driver_netapp._errors import translate
from vmsnap_sdk.blocks import BlockMetadataType, BlockPage, BlockRange
from vmsnap_sdk.errors import NotFound, Unavailable

#: ONTAP moves at most 1 MiB of file data per call.
MAX_READ = 1 << 20
#: Granularity of the changed blocks this driver reports.
BLOCK = 64 << 10


class FileReader:
    def __init__(self, config: Config) -> None:
        self.config = config

    def _get(self, vol_uuid: str, path: str, offset: int, length: int) -> bytes:
        response = requests.get(
            f"{self.config.url}/api/storage/volumes/{vol_uuid}/files/{quote(path, safe='')}",
            params={"byte_offset": offset, "length": length},
            headers={"Accept": "multipart/form-data"},
            auth=(self.config.user, self.config.password.reveal()),
            verify=self.config.verify_tls,
            timeout=self.config.call_timeout,
        )
        if response.status_code == 404:
            raise NotFound(f"no snapshot file {path} in volume {vol_uuid}")
        response.raise_for_status()
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: "
            + response.headers.get("Content-Type", "").encode("latin-1")
            + b"\r\n\r\n"
            + response.content
        )
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") in ("data", "file"):
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    return payload
        raise Unavailable(f"{self.config.url} answered a file read without its data")

    async def read(self, vol_uuid: str, path: str, offset: int, length: int) -> bytes:
        parts: list[bytes] = []
        at, end = offset, offset + length
        while at < end:
            n = min(MAX_READ, end - at)
            try:
                data = await asyncio.to_thread(self._get, vol_uuid, path, at, n)
            except (NotFound, Unavailable):
                raise
            except Exception as exc:  # noqa: BLE001 - translated, never leaked
                raise translate(
                    exc,
                    url=self.config.url,
                    action=f"read snapshot file {path}",
                    secret=self.config.password.reveal(),
                ) from None
            if not data:
                break
            parts.append(data)
            at += len(data)
        return b"".join(parts)

    async def _blocks(
        self, vol_uuid: str, path: str, start: int, size: int
    ) -> AsyncIterator[tuple[int, bytes]]:
        at = start // BLOCK * BLOCK
        while at < size:
            data = await self.read(vol_uuid, path, at, min(MAX_READ, size - at))
            for i in range(0, len(data), BLOCK):
                yield (at + i) // BLOCK, data[i : i + BLOCK]
            at += MAX_READ

    async def page(
        self,
        vol_uuid: str,
        target: str,
        base: str | None,
        size: int,
        start: int,
        most: int,
    ) -> BlockPage:
        """Changed (``base`` given) or allocated blocks from ``start``, coalesced,
        at most ``most`` ranges; the scan stops at the first range past them."""
        ranges: list[BlockRange] = []
        olds = self._blocks(vol_uuid, base, start, size) if base is not None else None
        async for idx, block in self._blocks(vol_uuid, target, start, size):
            if olds is not None:
                # A shorter base reads as zeros past its end.
                _, old = await anext(olds, (idx, bytes(len(block))))
                differs = old != block
            else:
                differs = block.count(0) != len(block)
            if not differs:
                continue
            offset = idx * BLOCK
            if ranges and ranges[-1].end == offset:
                ranges[-1] = BlockRange(ranges[-1].offset, ranges[-1].length + len(block))
            elif len(ranges) == most:
                return BlockPage(
                    tuple(ranges), BLOCK, size, BlockMetadataType.VARIABLE_LENGTH, False
                )
            else:
                ranges.append(BlockRange(offset, len(block)))
        return BlockPage(tuple(ranges), BLOCK, size, BlockMetadataType.VARIABLE_LENGTH, True)
