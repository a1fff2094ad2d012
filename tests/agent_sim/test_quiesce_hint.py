"""QuiesceRequest.no_native_snapshot over gRPC: the hint reaches an agent that takes
it, and an agent written before it (v0.1's quiesce signature) is still served."""

from __future__ import annotations

from pathlib import Path

from vmsnap_agent.sim import SimAgent
from vmsnap_sdk import VM, AgentClient, QuiesceMethod, QuiesceResult, Volume
from vmsnap_sdk.serve import start_agent_server


class HintedAgent(SimAgent):
    """Records the hint each Quiesce carried."""

    hints: list[bool]

    async def quiesce(
        self,
        vm_id: str,
        method: QuiesceMethod,
        lease_seconds: float,
        best_effort: bool,
        operation_id: str,
        *,
        no_native_snapshot: bool = False,
    ) -> QuiesceResult:
        self.hints.append(no_native_snapshot)
        return await super().quiesce(vm_id, method, lease_seconds, best_effort, operation_id)


class AgentOfVersionOne(SimAgent):
    """An agent written before the hint: quiesce without the keyword."""

    async def quiesce(  # type: ignore[override]
        self,
        vm_id: str,
        method: QuiesceMethod,
        lease_seconds: float,
        best_effort: bool,
        operation_id: str,
    ) -> QuiesceResult:
        return await super().quiesce(vm_id, method, lease_seconds, best_effort, operation_id)


async def _freeze_twice(agent: SimAgent, address: str) -> None:
    """Quiesce with and without the hint, thawing each."""
    server = await start_agent_server(agent, address)
    client = AgentClient.connect(address, timeout=10)
    try:
        await agent.define_vm(VM(id="vm", volumes=(Volume("vda", "element://c1/7"),)))
        await agent.start_vm("vm")
        for hint in (True, False):
            q = await client.quiesce(
                "vm", QuiesceMethod.OVERLAY, 30, False, "", no_native_snapshot=hint
            )
            assert (await client.unquiesce(q.token)).thawed_now
    finally:
        await client.close()
        await server.stop(0)
        await agent.close()


async def test_the_hint_reaches_an_agent_that_takes_it(tmp_path: Path, sockdir: Path) -> None:
    agent = HintedAgent(tmp_path / "state")
    agent.hints = []
    await _freeze_twice(agent, f"unix://{sockdir}/hinted.sock")
    assert agent.hints == [True, False]


async def test_an_agent_of_version_one_is_not_given_the_hint(tmp_path: Path, sockdir: Path) -> None:
    # Ignoring the hint is correct (it only allows less work): no TypeError → INTERNAL.
    await _freeze_twice(AgentOfVersionOne(tmp_path / "state"), f"unix://{sockdir}/old.sock")
