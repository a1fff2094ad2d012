"""A snapshot's state writes change its state, never the fields it was created with.

A take, a revert or a delete writes its snapshot with every state change (a
compare-and-set on the state). Those writes used to rewrite every column from the
operation's copy in memory, read when it began: a field changed meanwhile by
someone else was silently put back. The VM's project is one: giving a VM of no
project its project (DefineVM with --project, clone) moves its snapshots with it,
and a take that was running wrote its snapshot back to no project when it ended.
Now a state write names only the
columns a state change may change (docs/design.md, "A state write writes the
state"); the fields a snapshot is created with are written once, by the insert.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tests.host.conftest import Rig
from vmsnap_sdk import SnapshotResult, TakeRequest

A = "io.vmsnap.test.a"


def _while_taking(rig: Rig, work: Callable[[], Awaitable[None]]) -> None:
    """Array a runs ``work`` when the take reaches it (after the admission, before
    READY), then takes."""
    driver = rig.drivers[A]
    take = driver.take_snapshot

    async def taking(request: TakeRequest) -> SnapshotResult:
        await work()
        return await take(request)

    driver.take_snapshot = taking  # type: ignore[method-assign]


async def test_a_project_given_while_a_take_runs_stays_on_its_snapshot(rig: Rig) -> None:
    """Fails on main: the snapshot ends READY with no project, the VM's others in it."""
    await rig.define("vm1")
    earlier = await rig.wait(await rig.create("s0"))

    async def give_project() -> None:
        await rig.store.write(rig.store.w_set_vm_project("vm1", "team-a"))

    _while_taking(rig, give_project)
    done = await rig.wait(await rig.create("s1"))
    assert done.error is None, done.error
    snap = rig.store.get_snapshot(done.vm_snapshot_id)
    assert snap is not None
    assert snap.state.name == "READY"
    # The snapshot taken before, and the one being taken, both follow the VM.
    assert rig.store.get_snapshot(earlier.vm_snapshot_id).project == "team-a"  # type: ignore[union-attr]
    assert snap.project == "team-a"
    op = rig.store.get_operation(done.id)
    assert op is not None and op.project == "team-a"
