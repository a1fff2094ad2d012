"""The request_id rules host.proto states on Revert and Delete, as the manager keeps them."""

from __future__ import annotations

import pytest

from tests.host.conftest import Rig
from vmsnap_host.model import SnapshotState
from vmsnap_sdk import VMState
from vmsnap_sdk.errors import AlreadyExists, Reason


async def test_revert_and_delete_retries_and_reuse(rig: Rig) -> None:
    await rig.define(running=False)
    s1 = await rig.wait(await rig.create("s1"))
    s2 = await rig.wait(await rig.create("s2"))
    assert (await rig.agent.describe_vm("vm1")).state is VMState.STOPPED

    # Revert: the same request_id with the same snapshot returns the first
    # revert's operation and reverts nothing again.
    first = await rig.wait(await rig.manager.revert_snapshot("rv-1", s1.vm_snapshot_id, False))
    again = await rig.manager.revert_snapshot("rv-1", s1.vm_snapshot_id, False)
    assert again.id == first.id and again.done
    # ... with another snapshot, or for a delete: REQUEST_ID_REUSED.
    with pytest.raises(AlreadyExists) as caught:
        await rig.manager.revert_snapshot("rv-1", s2.vm_snapshot_id, False)
    assert caught.value.reason == Reason.REQUEST_ID_REUSED
    with pytest.raises(AlreadyExists):
        await rig.manager.delete_snapshot("rv-1", s1.vm_snapshot_id)

    # Delete: the same request_id returns the first delete's operation; a new
    # request_id for a REMOVED snapshot is an operation done at once.
    deleted = await rig.wait(await rig.manager.delete_snapshot("del-1", s2.vm_snapshot_id))
    assert (await rig.manager.delete_snapshot("del-1", s2.vm_snapshot_id)).id == deleted.id
    snap = rig.store.get_snapshot(s2.vm_snapshot_id)
    assert snap is not None and snap.state is SnapshotState.REMOVED
    later = await rig.manager.delete_snapshot("del-2", s2.vm_snapshot_id)
    assert later.done and later.error is None and later.id != deleted.id
