"""QuiesceRequest.native_snapshot over gRPC: the snapshot comes back in the Quiesce
(released with guest+cut), bad requests are INVALID_ARGUMENT, and an agent written
before the field is not given it (its answer has no snapshot: the caller takes it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vmsnap_agent.sim import SimAgent
from vmsnap_sdk import (
    VM,
    AgentClient,
    NativeSnapshotAtFreeze,
    QuiesceMethod,
    QuiesceResult,
    Volume,
)
from vmsnap_sdk.errors import InvalidArgument
from vmsnap_sdk.serve import start_agent_server

VOLUMES = (Volume("vda", "file:///a.img"), Volume("vdb", "element://c1/7"))


class AgentOfVersionOne(SimAgent):
    """An agent written before QuiesceRequest.native_snapshot."""

    async def quiesce(  # type: ignore[override]
        self,
        vm_id: str,
        method: QuiesceMethod,
        lease_seconds: float,
        best_effort: bool,
        operation_id: str,
        *,
        no_native_snapshot: bool = False,
    ) -> QuiesceResult:
        return await super().quiesce(vm_id, method, lease_seconds, best_effort, operation_id)


async def _serve(agent: SimAgent, address: str) -> AsyncIterator[AgentClient]:
    server = await start_agent_server(agent, address)
    client = AgentClient.connect(address, timeout=10)
    try:
        await agent.define_vm(VM(id="vm", name="vm", volumes=VOLUMES))
        await agent.start_vm("vm")
        yield client
    finally:
        await client.close()
        await server.stop(0)
        await agent.close()


@pytest.fixture
async def client(tmp_path: Path, sockdir: Path) -> AsyncIterator[AgentClient]:
    async for c in _serve(SimAgent(tmp_path / "state"), f"unix://{sockdir}/a.sock"):
        yield c


async def test_the_snapshot_comes_back_in_the_quiesce(client: AgentClient) -> None:
    q = await client.quiesce(
        "vm",
        QuiesceMethod.GUEST_FREEZE_AND_CUT,
        30,
        False,
        "op-1",
        native_snapshot=NativeSnapshotAtFreeze("s1", ("vda",)),
    )
    assert q.released and q.native_snapshot is not None
    assert q.native_snapshot.snapshot_id == "s1" and q.native_snapshot.disks == ("vda",)
    assert await client.list_quiesces("vm") == []
    assert not (await client.unquiesce(q.token)).thawed_now
    # With overlays beside it the freeze is held: Unquiesce commits them.
    q = await client.quiesce(
        "vm",
        QuiesceMethod.GUEST_FREEZE_AND_OVERLAY,
        30,
        False,
        "op-2",
        native_snapshot=NativeSnapshotAtFreeze("s2", ("vda",)),
    )
    assert not q.released and q.native_snapshot is not None
    assert (await client.unquiesce(q.token)).thawed_now
    assert [s.snapshot_id for s in await client.list_native_snapshots("vm")] == ["s1", "s2"]


@pytest.mark.parametrize(
    ("method", "flag", "asked", "field"),
    [
        (QuiesceMethod.GUEST_FREEZE_AND_CUT, True, NativeSnapshotAtFreeze("s1"), "native_snapshot"),
        (
            QuiesceMethod.PAUSE_AND_SAVE_MEMORY,
            False,
            NativeSnapshotAtFreeze("s1"),
            "native_snapshot",
        ),
        (QuiesceMethod.GUEST_FREEZE_AND_CUT, False, NativeSnapshotAtFreeze("-x"), "snapshot_id"),
        (
            QuiesceMethod.GUEST_FREEZE_AND_CUT,
            False,
            NativeSnapshotAtFreeze("s1", ("V D",)),
            "disks",
        ),
    ],
)
async def test_bad_requests_are_refused_before_anything_is_frozen(
    client: AgentClient,
    method: QuiesceMethod,
    flag: bool,
    asked: NativeSnapshotAtFreeze,
    field: str,
) -> None:
    with pytest.raises(InvalidArgument, match=field):
        await client.quiesce(
            "vm", method, 30, False, "", no_native_snapshot=flag, native_snapshot=asked
        )
    assert await client.list_quiesces("vm") == []


async def test_an_agent_of_version_one_answers_no_snapshot(tmp_path: Path, sockdir: Path) -> None:
    agent = AgentOfVersionOne(tmp_path / "state")
    async for client in _serve(agent, f"unix://{sockdir}/old.sock"):
        q = await client.quiesce(
            "vm",
            QuiesceMethod.GUEST_FREEZE_AND_CUT,
            30,
            False,
            "",
            native_snapshot=NativeSnapshotAtFreeze("s1", ("vda",)),
        )
        assert q.native_snapshot is None and not q.released
        assert (await client.unquiesce(q.token)).thawed_now
        assert await client.list_native_snapshots("vm") == []
