"""A driver whose take blocks in a worker thread, like a vendor SDK call on a dead array."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from tests.sdk.drivers import ScriptedDriver
from vmsnap_sdk import SnapshotResult, TakeRequest, run_driver


class StuckDriver(ScriptedDriver):
    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        Path(os.environ["STUCK_DRIVER_MARKER"]).touch()  # noqa: ASYNC240 - a test marker
        await asyncio.to_thread(time.sleep, 300)
        return await super().take_snapshot(request)


if __name__ == "__main__":
    run_driver(lambda args: StuckDriver())
