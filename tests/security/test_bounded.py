"""What a caller can make the host keep in memory is bounded by what exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.driver import Options
from tests.host.conftest import make_rig
from vmsnap_sdk import Volume
from vmsnap_sdk.errors import NotFound


async def test_calls_on_vms_that_do_not_exist_leave_nothing_behind(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path, Options(name="io.vmsnap.test.a", scheme="a"))
    try:
        await _check(rig)
    finally:
        await rig.manager.close()
        await rig.agent.close()
        await rig.registry.close()
        rig.store.close()


async def _check(rig) -> None:  # type: ignore[no-untyped-def]
    # Before issue 12 every VM id ever named kept an admission lock for good: a
    # caller could grow the host's memory without bound with made-up ids.
    for i in range(300):
        with pytest.raises(NotFound):
            await rig.create("s", vm_id=f"ghost-{i}")
    assert len(rig.manager._admission) == 0
    await rig.define("vm1", volumes=(Volume("vda", "a://pool/1"),))
    await rig.wait(await rig.create("s1"))
    assert len(rig.manager._admission) == 0
