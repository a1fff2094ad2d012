"""Leases end freezes by themselves; quiesce state survives an agent restart."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from vmsnap_agent.qemu import (
    Consistency,
    DiskSpec,
    GuestImage,
    QemuHypervisor,
    QuiesceMethod,
    QuiesceNotFound,
    VmBusy,
    VmFrozen,
    VmState,
)

from .guestlib import make_ext4, make_raw, qemu_io, read_at, wait_until

pytestmark = pytest.mark.asyncio


async def _start(hv: QemuHypervisor, workdir: Path, vm_id: str) -> Path:
    scratch = make_raw(workdir / f"{vm_id}-scratch.img")
    disks = [
        DiskSpec("data", str(make_ext4(workdir / f"{vm_id}.img"))),
        DiskSpec("scratch", str(scratch)),
    ]
    await hv.define_vm(vm_id, 256, disks)
    await hv.start_vm(vm_id)
    await hv.wait_guest_agent(vm_id)
    return scratch


async def _wait_unquiesced(hv: QemuHypervisor, vm_id: str) -> None:
    async def resolved() -> bool:
        return (await hv.describe_vm(vm_id)).quiesce_token is None

    await wait_until(resolved)


async def _freeze_status(hv: QemuHypervisor, vm_id: str) -> str:
    async with hv.guest_agent(vm_id) as ga:
        return str(await ga.execute("guest-fsfreeze-status"))


async def test_lease_expiry_thaws_and_commits(hv: QemuHypervisor, workdir: Path) -> None:
    scratch = await _start(hv, workdir, "lease")

    res = await hv.quiesce("lease", QuiesceMethod.OVERLAY, lease_seconds=2)
    overlays = [Path(d.active_path) for d in (await hv.describe_vm("lease")).disks]
    await qemu_io(hv, "lease", "scratch", "write -P 0x5a 0 4096")
    await _wait_unquiesced(hv, "lease")
    assert not any(p.exists() for p in overlays)
    assert read_at(scratch, 0, 4096) == b"\x5a" * 4096  # committed by the watchdog
    with pytest.raises(QuiesceNotFound):
        await hv.renew_quiesce(res.token, 10)
    await hv.unquiesce(res.token)  # already resolved: OK

    # A renewed lease outlives the original one, then expires too.
    # Leases with room for a busy machine: a guest freeze under TCG can take a
    # second or more, and the renewal must land before the first lease ends.
    res = await hv.quiesce("lease", QuiesceMethod.GUEST, lease_seconds=5)
    renewed = await hv.renew_quiesce(res.token, 10)
    assert renewed.expires_at > res.expires_at
    await asyncio.sleep(5.5)  # past the first lease, well inside the renewed one
    assert await _freeze_status(hv, "lease") == "frozen"
    await _wait_unquiesced(hv, "lease")
    assert await _freeze_status(hv, "lease") == "thawed"


async def test_unquiesce_after_agent_restart(
    hv: QemuHypervisor, workdir: Path, guest_image: GuestImage
) -> None:
    scratch = await _start(hv, workdir, "rs")
    state = workdir / "state"

    res = await hv.quiesce("rs", QuiesceMethod.OVERLAY, lease_seconds=120, operation_id="op-rs")
    await qemu_io(hv, "rs", "scratch", "write -P 0x77 8192 4096")
    overlays = [Path(d.active_path) for d in (await hv.describe_vm("rs")).disks]
    await hv.close()  # the agent process "dies"; QEMU keeps running

    async with QemuHypervisor(state, guest=guest_image) as hv2:
        info = await hv2.describe_vm("rs")
        assert info.quiesce_token == res.token  # re-attached through pidfile + QMP
        # The operation is remembered: a host that lost the token can thaw by it.
        assert [(r.token, r.operation_id) for r in hv2.list_quiesces()] == [(res.token, "op-rs")]
        assert [r.token for r in await hv2.unquiesce_operation("op-rs")] == [res.token]
        assert await hv2.unquiesce_operation("op-rs") == []
        assert await hv2.unquiesce(res.token) is None
        assert hv2.list_quiesces() == []
        assert not any(p.exists() for p in overlays)
        assert read_at(scratch, 8192, 4096) == b"\x77" * 4096

        # Now an agent dies with a frozen guest and stays away past the lease.
        res = await hv2.quiesce("rs", QuiesceMethod.GUEST, lease_seconds=1)
    await asyncio.sleep(1.5)  # nobody watches the lease now
    async with QemuHypervisor(state, guest=guest_image) as hv3:
        # open() resolved the expired lease before returning.
        assert (await hv3.describe_vm("rs")).quiesce_token is None
        assert await _freeze_status(hv3, "rs") == "thawed"
        await hv3.unquiesce(res.token)


async def test_vm_dies_while_quiesced(hv: QemuHypervisor, workdir: Path) -> None:
    """QEMU killed with overlays active: the next start folds them into the bases."""
    scratch = await _start(hv, workdir, "crash")
    res = await hv.quiesce("crash", QuiesceMethod.OVERLAY, lease_seconds=120)
    await qemu_io(hv, "crash", "scratch", "write -P 0x3c 0 4096")
    # Flushed, as a guest would before relying on it (qcow2 metadata is cached).
    await qemu_io(hv, "crash", "scratch", "flush")
    info = await hv.describe_vm("crash")
    overlays = [Path(d.active_path) for d in info.disks]
    assert info.pid is not None
    os.kill(info.pid, signal.SIGKILL)

    async def stopped() -> bool:
        return (await hv.describe_vm("crash")).state is VmState.STOPPED

    await wait_until(stopped)
    assert read_at(scratch, 0, 4096) == b"\0" * 4096  # the write is still in the overlay
    # Overlays not committed yet: the freeze is still listed, whatever its lease.
    assert [r.token for r in hv.list_quiesces("crash")] == [res.token]

    # Arrays may still be copying the bases: nothing touches them before unquiesce.
    with pytest.raises(VmFrozen):
        await hv.start_vm("crash")
    assert (await hv.unquiesce(res.token)) is not None  # qemu-img commit, offline
    assert read_at(scratch, 0, 4096) == b"\x3c" * 4096
    assert not any(p.exists() for p in overlays)
    assert hv.list_quiesces() == []
    await hv.start_vm("crash")
    assert (await hv.describe_vm("crash")).quiesce_token is None


async def test_quiesce_guards_and_retries(hv: QemuHypervisor, workdir: Path) -> None:
    await _start(hv, workdir, "guard")
    res = await hv.quiesce("guard", QuiesceMethod.OVERLAY, 60, operation_id="op-1")
    # The host retrying its call gets the quiesce it holds; anyone else waits.
    assert await hv.quiesce("guard", QuiesceMethod.OVERLAY, 60, operation_id="op-1") == res
    with pytest.raises(VmBusy):
        await hv.quiesce("guard", QuiesceMethod.OVERLAY, 60, operation_id="op-2")
    for forbidden in (hv.stop_vm("guard", force=True), hv.take_native_snapshot("guard", "s")):
        with pytest.raises(VmFrozen):
            await forbidden
    done = await hv.unquiesce(res.token)
    assert done is not None and done.token == res.token
    assert await hv.unquiesce(res.token) is None

    # A stopped VM: nothing to freeze; the token keeps it from starting.
    await hv.stop_vm("guard")  # graceful: a clean shutdown
    res = await hv.quiesce("guard", QuiesceMethod.GUEST, 60)
    assert res.consistency is Consistency.APPLICATION
    with pytest.raises(VmFrozen):
        await hv.start_vm("guard")
    await hv.unquiesce(res.token)
    await hv.start_vm("guard")


async def test_unquiesce_finishes_commit_jobs_an_earlier_agent_left(
    hv: QemuHypervisor, workdir: Path
) -> None:
    """An agent that died mid-commit leaves jobs behind: one READY, never completed;
    one concluded and never dismissed (how commits ran before issue 16). The next
    unquiesce completes the first; the second, whose overlay is gone already, is
    dismissed when its job id is next needed."""
    scratch = await _start(hv, workdir, "jobs")
    res = await hv.quiesce("jobs", QuiesceMethod.OVERLAY, lease_seconds=120)
    overlays = [Path(d.active_path) for d in (await hv.describe_vm("jobs")).disks]
    await qemu_io(hv, "jobs", "scratch", "write -P 0x77 8192 4096")
    qmp = hv.qmp("jobs")

    async def status(job_id: str) -> str | None:
        found = [j["status"] for j in await qmp.execute("query-jobs") if j["id"] == job_id]
        return found[0] if found else None

    async def reaches(job_id: str, wanted: str) -> None:
        async def there() -> bool:
            return await status(job_id) == wanted

        await wait_until(there)

    # The data disk's commit: READY, left there (the pivot was never asked for).
    await qmp.execute(
        "block-commit", {"job-id": "commit-data", "device": "ov-data", "base-node": "d-data"}
    )
    await reaches("commit-data", "ready")
    # The scratch disk's commit: completed, concluded, not dismissed.
    await qmp.execute(
        "block-commit",
        {
            "job-id": "commit-scratch",
            "device": "ov-scratch",
            "base-node": "d-scratch",
            "auto-dismiss": False,
        },
    )
    await reaches("commit-scratch", "ready")
    await qmp.execute("block-job-complete", {"device": "commit-scratch"})
    await reaches("commit-scratch", "concluded")

    assert await hv.unquiesce(res.token) is not None
    assert await status("commit-data") is None
    nodes = await qmp.execute("query-named-block-nodes", {"flat": True})
    assert not [n for n in nodes if n["node-name"].startswith("ov-")]
    assert read_at(scratch, 8192, 4096) == b"\x77" * 4096
    assert not any(p.exists() for p in overlays)
    assert hv.list_quiesces("jobs") == []

    # The next commit of scratch meets the concluded job's id: dismissed, redone.
    assert await status("commit-scratch") == "concluded"
    again = await hv.quiesce("jobs", QuiesceMethod.OVERLAY, lease_seconds=120)
    await qemu_io(hv, "jobs", "scratch", "write -P 0x78 8192 4096")
    assert await hv.unquiesce(again.token) is not None
    assert await qmp.execute("query-jobs") == []
    assert read_at(scratch, 8192, 4096) == b"\x78" * 4096
