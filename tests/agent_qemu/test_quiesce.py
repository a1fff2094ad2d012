"""Quiesce methods on a real guest: overlay, guest fsfreeze (+hook), both."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from vmsnap_agent.qemu import (
    Consistency,
    DiskSpec,
    GuestAgentUnavailable,
    QemuHypervisor,
    QuiesceMethod,
    VmBusy,
)
from vmsnap_agent.qemu.quiesce import HOOK_LOG

from .guestlib import (
    fsck_clean,
    make_ext4,
    make_raw,
    qemu_io,
    read_at,
    sha256,
    wait_console,
    wait_until,
)

pytestmark = pytest.mark.asyncio


async def _counter(hv: QemuHypervisor, vm_id: str) -> int:
    async with hv.guest_agent(vm_id) as ga:
        data = await ga.read_file("/mnt/vda/counter")
    return int(data or b"0")


async def _counter_passes(hv: QemuHypervisor, vm_id: str, value: int) -> None:
    """Wait (bounded) until the guest's writer has gone past ``value``."""

    async def passed() -> bool:
        return await _counter(hv, vm_id) > value

    await wait_until(passed)


async def _start(hv: QemuHypervisor, workdir: Path, vm_id: str) -> tuple[Path, Path]:
    """A VM with an ext4 disk the guest writes to all the time, and a raw scratch disk."""
    data = make_ext4(workdir / f"{vm_id}-data.img")
    scratch = make_raw(workdir / f"{vm_id}-scratch.img")
    await hv.define_vm(
        vm_id,
        256,
        [DiskSpec("data", str(data)), DiskSpec("scratch", str(scratch))],
        kernel_args="vmsnap.writer=/dev/vda",
    )
    await hv.start_vm(vm_id)
    await hv.wait_guest_agent(vm_id)
    return data, scratch


async def test_overlay_keeps_bases_stable_then_commits(hv: QemuHypervisor, workdir: Path) -> None:
    data, scratch = await _start(hv, workdir, "ov")
    res = await hv.quiesce("ov", QuiesceMethod.OVERLAY, lease_seconds=120)
    assert res.consistency is Consistency.CRASH
    assert set(res.stable_paths) == {str(data), str(scratch)}
    with pytest.raises(VmBusy):
        await hv.quiesce("ov", QuiesceMethod.OVERLAY, lease_seconds=120)

    info = await hv.describe_vm("ov")
    assert info.quiesce_token == res.token
    overlays = [Path(d.active_path) for d in info.disks]
    assert all(p.exists() and p.suffix == ".qcow2" for p in overlays)
    before = {p: sha256(p) for p in (data, scratch)}
    counter_at_cut = await _counter(hv, "ov")

    # Writes during the quiesce: through QEMU's block layer, and the guest's writer.
    await qemu_io(hv, "ov", "scratch", "write -P 0xab 4096 65536")
    await _counter_passes(hv, "ov", counter_at_cut + 2)
    assert {p: sha256(p) for p in (data, scratch)} == before  # bases did not move

    await hv.unquiesce(res.token)
    await hv.unquiesce(res.token)  # idempotent
    assert not any(p.exists() for p in overlays)
    info = await hv.describe_vm("ov")
    assert info.quiesce_token is None
    assert [d.active_path for d in info.disks] == [str(data), str(scratch)]
    # The overlay's data is now in the base file.
    assert read_at(scratch, 4096, 65536) == b"\xab" * 65536
    nodes = await hv.qmp("ov").execute("query-named-block-nodes", {"flat": True})
    assert not [n for n in nodes if n["node-name"].startswith("ov-")]
    # The guest keeps writing to its disk, now the base again.
    await _counter_passes(hv, "ov", await _counter(hv, "ov"))


async def test_guest_freeze_runs_hook(hv: QemuHypervisor, workdir: Path) -> None:
    data, _ = await _start(hv, workdir, "gf")
    res = await hv.quiesce("gf", QuiesceMethod.GUEST, lease_seconds=120)
    connects = hv._ga["gf"].connects
    assert res.consistency is Consistency.APPLICATION
    assert res.frozen_at is not None
    async with hv.guest_agent("gf") as ga:
        assert await ga.execute("guest-fsfreeze-status") == "frozen"
    await hv.unquiesce(res.token)
    async with hv.guest_agent("gf") as ga:
        assert await ga.execute("guest-fsfreeze-status") == "thawed"
        log = (await ga.read_file(HOOK_LOG) or b"").decode()
    assert [line.split()[0] for line in log.splitlines()] == ["freeze", "thaw"]
    # The freeze's qemu-ga connection was kept open: the thaw did not wait on a new
    # one's sync (qemu-ga polls every 100 ms while no host client is attached; #16).
    assert hv._ga["gf"].connects == connects

    # Idle longer than the agent used to keep a connection (1 s): by default it stays
    # open for the agent's life, as libvirt's does, so a periodic take's freeze makes
    # no new connection either.
    await asyncio.sleep(1.5)
    # freeze → overlay → thaw: the guest is already thawed when quiesce returns.
    res = await hv.quiesce("gf", QuiesceMethod.OVERLAY_GUEST, lease_seconds=120)
    assert hv._ga["gf"].connects == connects
    # The stable base was cut while ext4 was frozen (journal flushed): it is clean
    # for fsck, though the guest's writer keeps writing (to the overlay).
    clean, report = fsck_clean(data)
    assert clean, report
    assert res.consistency is Consistency.APPLICATION
    assert res.frozen_at is not None and res.thawed_at is not None
    assert res.thawed_at >= res.frozen_at
    async with hv.guest_agent("gf") as ga:
        assert await ga.execute("guest-fsfreeze-status") == "thawed"
    assert all(".qcow2" in d.active_path for d in (await hv.describe_vm("gf")).disks)
    await hv.unquiesce(res.token)
    assert (await hv.describe_vm("gf")).quiesce_token is None


async def test_absent_guest_agent_is_reported(hv: QemuHypervisor, workdir: Path) -> None:
    disk = make_ext4(workdir / "noga.img")
    await hv.define_vm("noga", 256, [DiskSpec("a", str(disk))], kernel_args="vmsnap.noga=1")
    await hv.start_vm("noga")
    await wait_console(hv, "noga", "vmsnap-init: ready")
    # The hv fixture's sync timeout is 2 s: the error comes after it, not after minutes.
    for method in (QuiesceMethod.GUEST, QuiesceMethod.OVERLAY_GUEST):
        with pytest.raises(GuestAgentUnavailable):
            await hv.quiesce("noga", method, lease_seconds=60)
        info = await hv.describe_vm("noga")
        assert info.quiesce_token is None  # nothing left behind
        assert info.disks[0].active_path == str(disk)
    # BEST_EFFORT on the host side falls back to the overlay: crash consistency.
    res = await hv.quiesce("noga", QuiesceMethod.OVERLAY, lease_seconds=60)
    assert res.consistency is Consistency.CRASH
    await hv.unquiesce(res.token)


async def test_the_hook_log_is_asked_with_the_freeze_and_closed_after_the_thaw(
    hv: QemuHypervisor, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook log's presence is asked in the freeze's own write (one qemu-ga round
    trip for both), and its handle is closed once the guest is thawed (qemu-ga
    refuses a close while frozen), off the caller's path: every handle opened is
    closed, each after a thaw, and the consistency says the hook ran."""
    from vmsnap_agent.qemu.guest_agent import GuestAgentClient

    disk = make_ext4(workdir / "hooked.img")
    await hv.define_vm("hooked", 256, [DiskSpec("a", str(disk))])
    await hv.start_vm("hooked")
    await hv.wait_guest_agent("hooked")
    sent: list[tuple[str, object]] = []
    opened: list[int] = []
    each = GuestAgentClient.execute_each

    async def spying(
        self: GuestAgentClient, commands: Any, timeout: float = 30.0
    ) -> list[object]:
        outcomes = await each(self, commands, timeout)
        for (command, arguments), outcome in zip(commands, outcomes, strict=True):
            sent.append((command, (arguments or {}).get("handle")))
            if command == "guest-file-open" and isinstance(outcome, int):
                opened.append(outcome)
        return outcomes

    monkeypatch.setattr(GuestAgentClient, "execute_each", spying)
    for method in (QuiesceMethod.GUEST, QuiesceMethod.OVERLAY_GUEST, QuiesceMethod.GUEST):
        res = await hv.quiesce("hooked", method, lease_seconds=60)
        assert res.consistency is Consistency.APPLICATION
        await hv.unquiesce(res.token)
    async def all_closed() -> bool:
        return {h for c, h in sent if c == "guest-file-close"} >= set(opened)

    await wait_until(all_closed, timeout=10)
    assert len(opened) == 3
    for handle in opened:
        closed_at = sent.index(("guest-file-close", handle))
        assert ("guest-fsfreeze-thaw", None) in sent[:closed_at]  # closed once thawed
        frozen_at = max(i for i, (c, _) in enumerate(sent[:closed_at]) if c.startswith("guest-fs"))
        assert sent[frozen_at][0] == "guest-fsfreeze-thaw"
    await hv.stop_vm("hooked", force=True)
