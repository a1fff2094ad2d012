"""Freezes known by the operation that made them: listed, and thawed by operation id.

A host that crashed between Quiesce and recording the token must still end its
freeze at recovery: the agent keeps each freeze's operation id (across its own
restarts), lists its freezes and thaws every freeze of an operation.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.agent_sim.simproc import SimProc
from vmsnap_agent.sim import SimAgent, frozen
from vmsnap_sdk import VM, AgentClient, QuiesceMethod, UnquiesceResult, Volume
from vmsnap_sdk.errors import InvalidArgument, Unimplemented
from vmsnap_sdk.serve import start_agent_server


def small_vm(vm_id: str) -> VM:
    return VM(id=vm_id, volumes=(Volume("vda", "element://c1/7"),))


async def test_a_freeze_is_listed_and_thawed_by_its_operation_across_a_sigkill(
    sim: SimProc,
) -> None:
    client = AgentClient.connect(sim.address, timeout=10)
    try:
        for vm_id in ("vm-a", "vm-b", "vm-c"):
            await client.define_vm(small_vm(vm_id))
            await client.start_vm(vm_id)
        a = await client.quiesce("vm-a", QuiesceMethod.OVERLAY, 300, False, "op-1")
        await client.quiesce("vm-b", QuiesceMethod.GUEST_FREEZE, 300, False, "op-1")
        c = await client.quiesce("vm-c", QuiesceMethod.OVERLAY, 300, False, "op-2")
    finally:
        await client.close()

    sim.kill()  # the host lost the tokens too, say: only the operation ids are left
    sim.start()

    client = AgentClient.connect(sim.address, timeout=10)
    try:
        listed = await client.list_quiesces()
        assert [(q.vm_id, q.operation_id, q.method) for q in listed] == [
            ("vm-a", "op-1", QuiesceMethod.OVERLAY),
            ("vm-b", "op-1", QuiesceMethod.GUEST_FREEZE),
            ("vm-c", "op-2", QuiesceMethod.OVERLAY),
        ]
        first = listed[0]
        assert first.token == a.token
        assert first.expire_time == a.expire_time
        assert isinstance(first.start_time, datetime)
        assert first.start_time.timestamp() <= time.time() < first.expire_time.timestamp()
        assert [q.token for q in await client.list_quiesces("vm-c")] == [c.token]
        assert await client.list_quiesces("vm-unknown") == []

        thawed = await client.unquiesce("", operation_id="op-1")
        assert thawed.thawed_now
        assert thawed.frozen_for_seconds > 0
        assert not frozen(sim.state, "vm-a") and not frozen(sim.state, "vm-b")
        assert frozen(sim.state, "vm-c")  # another operation's freeze stays
        assert [q.operation_id for q in await client.list_quiesces()] == ["op-2"]
        again = await client.unquiesce("", operation_id="op-1")
        assert (again.thawed_now, again.frozen_for_seconds) == (False, 0.0)
        assert not (await client.unquiesce("", operation_id="op-never")).thawed_now
        assert (await client.unquiesce(c.token)).thawed_now
        assert await client.list_quiesces() == []
    finally:
        await client.close()


async def test_a_freeze_whose_lease_ran_out_is_not_listed(agent: AgentClient) -> None:
    await agent.define_vm(small_vm("vm-l"))
    await agent.quiesce("vm-l", QuiesceMethod.OVERLAY, 0.2, False, "op-l")
    assert len(await agent.list_quiesces("vm-l")) == 1
    await asyncio.sleep(0.3)
    assert await agent.list_quiesces() == []
    assert not (await agent.unquiesce("", operation_id="op-l")).thawed_now


@pytest.mark.parametrize(
    ("token", "operation_id", "field"),
    [
        ("q-1", "op-1", "operation_id"),  # both
        ("", "", "token"),  # neither
        ("", "not an id!", "operation_id"),
    ],
)
async def test_unquiesce_takes_exactly_one_of_token_and_operation_id(
    agent: AgentClient, token: str, operation_id: str, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await agent.unquiesce(token, operation_id=operation_id)
    assert caught.value.field_violations[0][0] == field
    assert field in caught.value.message


class AgentOfVersionOne(SimAgent):
    """An agent written before thaw-by-operation: unquiesce(token) only."""

    async def unquiesce(self, token: str) -> UnquiesceResult:  # type: ignore[override]
        return await super().unquiesce(token)


async def test_an_agent_without_thaw_by_operation_answers_unimplemented(
    tmp_path: Path, sockdir: Path
) -> None:
    address = f"unix://{sockdir}/old.sock"
    server = await start_agent_server(AgentOfVersionOne(tmp_path / "state"), address)
    client = AgentClient.connect(address, timeout=10)
    try:
        with pytest.raises(Unimplemented):
            await client.unquiesce("", operation_id="op-1")
        assert not (await client.unquiesce("q-unknown")).thawed_now  # the old form works
    finally:
        await client.close()
        await server.stop(0)


async def test_a_freeze_copied_into_its_mapped_page_survives_a_sigkill(sim: SimProc) -> None:
    """The second freeze of a VM is a copy into its mapped page, not a file written
    by the writer thread: a SIGKILL right after its answer keeps it all the same."""
    client = AgentClient.connect(sim.address, timeout=10)
    try:
        await client.define_vm(small_vm("vm-a"))
        await client.start_vm("vm-a")
        first = await client.quiesce("vm-a", QuiesceMethod.OVERLAY, 300, False, "op-1")
        await client.unquiesce(first.token)
        second = await client.quiesce("vm-a", QuiesceMethod.GUEST_FREEZE, 300, False, "op-2")
    finally:
        await client.close()
    sim.kill()
    assert frozen(sim.state, "vm-a")
    sim.start()
    client = AgentClient.connect(sim.address, timeout=10)
    try:
        listed = await client.list_quiesces("vm-a")
        assert [(q.token, q.operation_id) for q in listed] == [(second.token, "op-2")]
        assert (await client.unquiesce(second.token)).thawed_now
    finally:
        await client.close()
