"""QemuAgent through the contract: the SDK's gRPC server and AgentClient, in process."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsnap_agent.qemu import QemuHypervisor
from vmsnap_sdk import VM, AgentClient, Consistency, Page, QuiesceMethod, VMState, Volume
from vmsnap_sdk.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound

from .guestlib import make_ext4, make_qcow2, wait_console

pytestmark = pytest.mark.asyncio


async def test_contract_round_trip(client: AgentClient, hv: QemuHypervisor, workdir: Path) -> None:
    info = await client.get_info()
    assert (info.hypervisor, info.memory_snapshots) == ("qemu", True)
    assert QuiesceMethod.GUEST_FREEZE_AND_OVERLAY in info.quiesce_methods

    make_ext4(workdir / "data.img")
    vm = await client.define_vm(
        VM(
            id="web-1.example",
            name="web-1 vmsnap.writer=/dev/vda",
            volumes=(
                Volume("data", f"file://{workdir}/data.img"),
                # Created by the agent: a missing image with a size.
                Volume("root", "element://c1/42", 64 << 20, "qcow2"),
                Volume("local", f"file://{workdir}/local.qcow2", 16 << 20, "qcow2"),
            ),
        )
    )
    # Only the agent's own qcow2 image is kept by a native snapshot: not a raw
    # image (no internal snapshots), not an array's volume (even in qcow2).
    expected = {"data": False, "root": False, "local": True}
    assert {v.disk: v.native_snapshot for v in vm.volumes} == expected
    described = await client.describe_vm("web-1.example")
    assert {v.disk: v.native_snapshot for v in described.volumes} == expected
    assert vm.state is VMState.STOPPED
    assert (workdir / "element" / "42").exists()
    assert [v.locator for v in vm.volumes][:2] == [
        f"file://{workdir}/data.img",
        "element://c1/42",
    ]
    with pytest.raises(InvalidArgument):
        await client.define_vm(VM(id="bad", volumes=(Volume("d", "ontap://svm/vol/x"),)))

    vm = await client.start_vm("web-1.example")
    assert vm.state is VMState.RUNNING
    await hv.wait_guest_agent("web-1.example")

    q = await client.quiesce(
        "web-1.example", QuiesceMethod.GUEST_FREEZE_AND_OVERLAY, 60, False, "op-1"
    )
    assert q.consistency is Consistency.APPLICATION and not q.warning
    again = await client.quiesce(
        "web-1.example", QuiesceMethod.GUEST_FREEZE_AND_OVERLAY, 60, False, "op-1"
    )
    assert again.token == q.token
    with pytest.raises(Aborted):
        await client.quiesce("web-1.example", QuiesceMethod.OVERLAY, 60, False, "op-2")
    with pytest.raises(FailedPrecondition):
        await client.stop_vm("web-1.example", True)
    assert await client.renew_quiesce(q.token, 120) > q.expire_time
    done = await client.unquiesce(q.token)
    assert done.thawed_now
    assert not (await client.unquiesce(q.token)).thawed_now
    with pytest.raises(NotFound):
        await client.renew_quiesce(q.token, 10)

    # Listed with its operation while in force; thawed by that operation alone.
    q = await client.quiesce("web-1.example", QuiesceMethod.OVERLAY, 60, False, "op-3")
    listed = await client.list_quiesces()
    assert [(x.token, x.vm_id, x.operation_id, x.method) for x in listed] == [
        (q.token, "web-1.example", "op-3", QuiesceMethod.OVERLAY)
    ]
    assert listed[0].expire_time == q.expire_time
    assert await client.list_quiesces("other-vm") == []
    assert not (await client.unquiesce("", operation_id="op-1")).thawed_now
    assert (await client.unquiesce("", operation_id="op-3")).thawed_now
    assert not (await client.unquiesce("", operation_id="op-3")).thawed_now
    assert await client.list_quiesces() == []

    snap = await client.take_native_snapshot("web-1.example", "n1", ["root"], False)
    assert snap.disks == ("root",) and not snap.include_memory
    assert [s.snapshot_id for s in await client.list_native_snapshots("")] == ["n1"]
    await client.delete_native_snapshot("web-1.example", "n1")

    page = await client.list_vms(Page(size=10))
    assert [v.id for v in page.vms] == ["web-1.example"]
    assert (await client.stop_vm("web-1.example", True)).state is VMState.STOPPED
    await client.undefine_vm("web-1.example")
    with pytest.raises(NotFound):
        await client.describe_vm("web-1.example")
    # Idempotent: the VM is gone, and its snapshots with it (the sim agent's answer).
    await client.delete_native_snapshot("web-1.example", "n1")


async def test_best_effort_falls_back_to_overlay(
    client: AgentClient, hv: QemuHypervisor, workdir: Path
) -> None:
    make_qcow2(workdir / "r.qcow2", 16)
    await client.define_vm(
        VM(
            id="noga",
            name="noga vmsnap.noga=1",
            volumes=(Volume("r", f"file://{workdir}/r.qcow2", format="qcow2"),),
        )
    )
    await client.start_vm("noga")
    await wait_console(hv, "noga", "vmsnap-init: ready")
    with pytest.raises(FailedPrecondition) as err:
        await client.quiesce("noga", QuiesceMethod.GUEST_FREEZE, 60, False, "")
    assert err.value.reason == "GUEST_AGENT_UNAVAILABLE"
    q = await client.quiesce("noga", QuiesceMethod.GUEST_FREEZE, 60, True, "")
    assert q.method is QuiesceMethod.OVERLAY
    assert q.consistency is Consistency.CRASH
    assert "guest agent" in q.warning
    await client.unquiesce(q.token)
