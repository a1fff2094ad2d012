"""The ConformanceFixture service's array side (test arrays and the emulator only).

Test volumes are made with the Element API itself (an account of their own,
CreateVolume, DeleteVolume + PurgeDeletedVolume). Their bytes are another
matter: a real cluster serves them over iSCSI only, so reading and writing use
the **emulator's** data endpoints (``/emulator/volumes/<id>/data``), with the
same credentials and TLS settings as the API. Against a real cluster the fixture
can create and delete volumes, but WriteVolume/ReadVolume answer UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import TYPE_CHECKING, Any

import requests

from vmsnap_driver_solidfire._config import Config
from vmsnap_driver_solidfire._errors import translate
from vmsnap_sdk.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from vmsnap_driver_solidfire._array import ElementArray


class EmulatorData:
    """Create/delete test volumes through Element; bytes through the emulator."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._account_id: int | None = None
        self._account_lock = asyncio.Lock()

    async def _account(self, array: ElementArray) -> int:
        async with self._account_lock:
            if self._account_id is None:
                name = self.config.fixture_account

                def find_or_add(sf: object) -> int:
                    for account in sf.list_accounts().accounts:  # type: ignore[attr-defined]
                        if account.username == name:
                            return int(account.account_id)
                    return int(sf.add_account(username=name).account_id)  # type: ignore[attr-defined]

                self._account_id = await array.call("find the fixture account", find_or_add)
            return self._account_id

    async def create_volume(
        self, array: ElementArray, name: str, size_bytes: int
    ) -> tuple[int, int]:
        account = await self._account(array)
        # Element volume names: letters, digits and dashes.
        element_name = re.sub(r"[^A-Za-z0-9-]", "-", name)[:64]
        result = await array.call(
            f"create test volume {name}",
            lambda sf: sf.create_volume(
                name=element_name, account_id=account, total_size=size_bytes
            ),
        )
        return int(result.volume_id), int(result.volume.total_size)

    async def delete_volume(self, array: ElementArray, volume_id: int) -> None:
        action = f"delete test volume {volume_id}"
        # Each step tolerates NOT_FOUND: deleting twice is fine (idempotent).
        with contextlib.suppress(NotFound):
            await array.call(action, lambda sf: sf.delete_volume(volume_id=volume_id))
        with contextlib.suppress(NotFound):
            await array.call(action, lambda sf: sf.purge_deleted_volume(volume_id=volume_id))

    def _request(
        self, method: str, volume_id: int, params: dict[str, int], data: bytes, path: str = ""
    ) -> bytes:
        response = requests.request(
            method,
            f"{self.config.url}/emulator/{path or f'volumes/{volume_id}/data'}",
            auth=(self.config.user, self.config.password.reveal()),
            verify=self.config.verify_tls,
            timeout=self.config.call_timeout,
            params=params,
            data=data or None,
        )
        if response.status_code == 404:
            what = path.split("/data", maxsplit=1)[0] if path else f"test volume {volume_id}"
            raise NotFound(f"{what} does not exist (or the array is no emulator)")
        if response.status_code == 400:
            raise InvalidArgument(_emulator_message(response))
        response.raise_for_status()
        return response.content

    async def _call(
        self,
        action: str,
        method: str,
        volume_id: int,
        params: dict[str, int],
        data: bytes = b"",
        path: str = "",
    ) -> bytes:
        try:
            return await asyncio.to_thread(self._request, method, volume_id, params, data, path)
        except (NotFound, InvalidArgument):
            raise
        except Exception as exc:  # noqa: BLE001 - translated, never leaked
            raise translate(
                exc, url=self.config.url, action=action, secret=self.config.password.reveal()
            ) from None

    async def write(self, volume_id: int, offset: int, data: bytes) -> None:
        await self._call(
            f"write test volume {volume_id}", "PUT", volume_id, {"offset": offset}, data
        )

    async def read(self, volume_id: int, offset: int, length: int) -> bytes:
        return await self._call(
            f"read test volume {volume_id}", "GET", volume_id, {"offset": offset, "length": length}
        )

    async def read_snapshot(self, snapshot_id: int, offset: int, length: int) -> bytes:
        return await self._call(
            f"read snapshot {snapshot_id}",
            "GET",
            0,
            {"offset": offset, "length": length},
            path=f"snapshots/{snapshot_id}/data",
        )

    async def blocks(
        self, snapshot_id: int, base_id: int | None, start: int, limit: int
    ) -> dict[str, Any]:
        """The emulator's ranges of a snapshot: allocated, or changed since ``base_id``."""
        params = {"start": start, "limit": limit}
        if base_id is None:
            path = f"snapshots/{snapshot_id}/allocated"
        else:
            path = f"snapshots/{snapshot_id}/delta"
            params["base"] = base_id
        raw = await self._call(
            f"list blocks of snapshot {snapshot_id}", "GET", 0, params, path=path
        )
        answer: dict[str, Any] = json.loads(raw)
        return answer


def _emulator_message(response: requests.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"the emulator refused the request (HTTP {response.status_code})"
