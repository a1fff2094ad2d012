"""The ConformanceFixture service's array side (test arrays and the emulator only).

Test "volumes" are disk files in one ONTAP volume (``--fixture-volume``, made
when missing), created and deleted through the REST API. Their bytes are
another matter: ONTAP serves file contents over NFS/SMB, not REST. The
**emulator** keeps each volume as a directory of its NFS-style export and tells
where (``GET /emulator/volumes/<uuid>``, an emulator-only endpoint, same
credentials); the fixture reads and writes the files there, as a client of the
export would. So WriteVolume/ReadVolume need the emulator on the same machine;
against a real cluster they answer UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import requests
from netapp_ontap.error import NetAppRestError
from netapp_ontap.resources.file_info import FileInfo
from netapp_ontap.resources.volume import Volume as OntapVolume

from vmsnap_driver_netapp import _catalog as catalog
from vmsnap_driver_netapp._catalog import FlexVol
from vmsnap_driver_netapp._config import Config
from vmsnap_driver_netapp._errors import translate
from vmsnap_driver_netapp._layout import DiskFile
from vmsnap_sdk.errors import NotFound, Unavailable

if TYPE_CHECKING:
    from vmsnap_driver_netapp._array import OntapArray

FIXTURE_VOLUME_BYTES = 8 << 30

_T = TypeVar("_T")


class EmulatorFiles:
    """Test disk files: made through ONTAP REST, their bytes through the emulator's export."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._exports: dict[str, Path] = {}
        self._volume_lock = asyncio.Lock()

    async def _fixture_volume(self, array: OntapArray, svm: str) -> FlexVol:
        name = self.config.fixture_volume

        def find_or_create() -> FlexVol:
            found = catalog.find_volume(svm, name)
            if found is not None:
                return found
            OntapVolume(name=name, svm={"name": svm}, size=FIXTURE_VOLUME_BYTES).post(poll=True)
            made = catalog.find_volume(svm, name)
            if made is None:
                raise NotFound(f"volume {name} was created but cannot be found")
            return made

        async with self._volume_lock:
            return await array.call(f"find or create volume {name}", find_or_create)

    async def create_file(
        self, array: OntapArray, svm: str, name: str, size_bytes: int
    ) -> DiskFile:
        vol = await self._fixture_volume(array, svm)
        disk = DiskFile(svm, vol.name, re.sub(r"[^A-Za-z0-9_-]", "-", name) + ".img")

        def create() -> None:
            try:
                FileInfo(vol.uuid, path=disk.path, type="file", unix_permissions=644).post()
            except NetAppRestError as exc:
                if catalog.status(exc) != 409:
                    raise

        await array.call(f"create test disk {disk.path}", create)
        path = await self._local_path(vol, disk)
        await asyncio.to_thread(os.truncate, path, size_bytes)
        return disk

    async def delete_file(self, array: OntapArray, vol: FlexVol, disk: DiskFile) -> None:
        def delete() -> None:
            try:
                FileInfo(vol.uuid, path=disk.path).delete()
            except NetAppRestError as exc:
                if catalog.status(exc) != 404:
                    raise

        await array.call(f"delete test disk {disk.path}", delete)

    async def write(self, vol: FlexVol, disk: DiskFile, offset: int, data: bytes) -> None:
        path = await self._local_path(vol, disk)

        def write() -> None:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
                os.fsync(fd)
            finally:
                os.close(fd)

        await asyncio.to_thread(_on_file, disk, write)

    async def read(self, vol: FlexVol, disk: DiskFile, offset: int, length: int) -> bytes:
        path = await self._local_path(vol, disk)

        def read() -> bytes:
            fd = os.open(path, os.O_RDONLY)
            try:
                return os.pread(fd, length, offset)
            finally:
                os.close(fd)

        return await asyncio.to_thread(_on_file, disk, read)

    async def _local_path(self, vol: FlexVol, disk: DiskFile) -> Path:
        export = self._exports.get(vol.uuid)
        if export is None:
            export = await asyncio.to_thread(self._ask_export, vol)
            self._exports[vol.uuid] = export
        return export / disk.path

    def _ask_export(self, vol: FlexVol) -> Path:
        try:
            response = requests.get(
                f"{self.config.url}/emulator/volumes/{vol.uuid}",
                auth=(self.config.user, self.config.password.reveal()),
                verify=self.config.verify_tls,
                timeout=self.config.call_timeout,
            )
        except requests.RequestException as exc:
            raise translate(
                exc,
                url=self.config.url,
                action=f"find the export of volume {vol.name}",
                secret=self.config.password.reveal(),
            ) from None
        if response.status_code != 200:
            raise Unavailable(
                f"volume {vol.name}: {self.config.url} has no emulator data endpoint "
                f"(HTTP {response.status_code}); the fixture's bytes need the emulator"
            )
        export = Path(str(response.json()["export_path"]))
        if not export.is_dir():
            raise Unavailable(f"the emulator's export of {vol.name} is not on this machine")
        return export


def _on_file(disk: DiskFile, fn: Callable[[], _T]) -> _T:
    try:
        return fn()
    except FileNotFoundError:
        raise NotFound(f"no test disk {disk.locator}") from None
