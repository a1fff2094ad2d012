"""Freeze records are the running guest's state: written before the answer, never fsynced.

A SIGKILL of the agent keeps them (test_freeze_by_operation.py); a machine crash
ends every freeze with its guests, so what it leaves in ``freezes/`` — a stale
file, a torn one — must never hold a VM frozen nor cost the VM its definition
(docs/design.md, "Freeze records are runtime state").
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from vmsnap_agent.sim import SimAgent, freeze_of, frozen, load_vm
from vmsnap_sdk import VM, QuiesceMethod, Volume


def small_vm(vm_id: str) -> VM:
    return VM(id=vm_id, volumes=(Volume("vda", "element://c1/7"),))


async def running(state: Path, *vm_ids: str) -> SimAgent:
    agent = SimAgent(state)
    await agent.start()
    for vm_id in vm_ids:
        await agent.define_vm(small_vm(vm_id))
        await agent.start_vm(vm_id)
    return agent


async def test_a_freeze_renewal_and_thaw_write_without_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    agent = await running(state, "vm-1")
    try:
        synced: list[int] = []
        real = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
        held = await agent.quiesce("vm-1", QuiesceMethod.OVERLAY, 60, False, "op-1")
        # Answered: the freeze is in its file already (a SIGKILL now keeps it).
        recorded = freeze_of(state, "vm-1")
        assert recorded is not None and recorded.token == held.token
        await agent.renew_quiesce(held.token, 120)
        assert (await agent.unquiesce(held.token)).thawed_now
        assert not frozen(state, "vm-1")
        assert synced == []
        # A change of the VM itself is still fsynced before it is answered.
        await agent.stop_vm("vm-1", False)
        assert synced
    finally:
        await agent.close()


async def test_a_torn_freeze_file_is_dropped_and_the_vm_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    agent = await running(state, "vm-1", "vm-2")
    await agent.quiesce("vm-1", QuiesceMethod.OVERLAY, 300, False, "op-1")
    await agent.quiesce("vm-2", QuiesceMethod.OVERLAY, 300, False, "op-2")
    await agent.close()
    # What a power cut may leave of a file renamed into place but never fsynced.
    (state / "freezes" / "vm-1.json").write_bytes(b"")
    (state / "freezes" / "vm-2.json").write_bytes(b'{"version": 2, "vm_id": "vm-2", "fre')
    assert not frozen(state, "vm-1")  # readers see no freeze in a torn file

    with caplog.at_level(logging.WARNING, logger="vmsnap_agent.sim"):
        agent = SimAgent(state)
    try:
        await agent.start()
        assert list((state / "freezes").iterdir()) == []
        assert sum("freeze record could not be read" in r.getMessage() for r in caplog.records) == 2
        for vm_id in ("vm-1", "vm-2"):
            described = await agent.describe_vm(vm_id)
            assert described.volumes == small_vm(vm_id).volumes
            assert await agent.list_quiesces(vm_id) == []
            # Not held frozen: a new freeze is granted at once.
            await agent.quiesce(vm_id, QuiesceMethod.OVERLAY, 60, False, "op-new")
    finally:
        await agent.close()


async def test_a_freeze_file_without_its_vm_is_removed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    agent = await running(state, "vm-1")
    await agent.close()
    stray = state / "freezes" / "vm-gone.json"
    stray.write_text(json.dumps({"version": 2, "vm_id": "vm-gone", "freeze": {}}))
    agent = SimAgent(state)
    await agent.close()
    assert not stray.exists()


async def test_a_freeze_an_older_agent_kept_in_the_vm_file_moves_to_its_own(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    agent = await running(state, "vm-1")
    held = await agent.quiesce("vm-1", QuiesceMethod.GUEST_FREEZE, 300, False, "op-1")
    await agent.close()
    # Session 11's layout: the freeze inside the VM's file, no freeze file.
    freeze_file = state / "freezes" / "vm-1.json"
    record = json.loads(freeze_file.read_text())["record"]["freeze"]
    vm_file = state / "vms" / "vm-1.json"
    data = json.loads(vm_file.read_text())
    data["vm"]["freeze"] = record
    vm_file.write_text(json.dumps(data))
    freeze_file.unlink()
    assert frozen(state, "vm-1")  # readers honour it

    agent = SimAgent(state)
    try:
        await agent.start()
        assert json.loads(vm_file.read_text())["vm"]["freeze"] is None
        assert json.loads(freeze_file.read_text())["record"]["freeze"]["token"] == held.token
        assert [q.token for q in await agent.list_quiesces("vm-1")] == [held.token]
        assert (await agent.unquiesce(held.token)).thawed_now
    finally:
        await agent.close()
    # Thawed for good: the old record does not come back at the next start.
    agent = SimAgent(state)
    try:
        assert await agent.list_quiesces("vm-1") == []
        vm = load_vm(state, "vm-1")
        assert vm is not None and vm.freeze is None
    finally:
        await agent.close()


async def test_a_mapped_freeze_page_is_written_without_the_writer_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a VM's first freeze maps its page, a freeze, renewal and thaw are a
    copy into the page: nothing is handed to the writer thread (its wake-up was
    most of a Quiesce's and an Unquiesce's time), and each is in the file the
    moment it is answered."""
    state = tmp_path / "state"
    agent = await running(state, "vm-1")
    try:
        first = await agent.quiesce("vm-1", QuiesceMethod.OVERLAY, 60, False, "op-1")
        await agent.unquiesce(first.token)
        handed: list[object] = []
        submit = agent._store._submit
        monkeypatch.setattr(
            agent._store, "_submit", lambda work, *a: (handed.append(work), submit(work, *a))[1]
        )
        held = await agent.quiesce("vm-1", QuiesceMethod.GUEST_FREEZE, 60, False, "op-2")
        recorded = freeze_of(state, "vm-1")
        assert recorded is not None and recorded.token == held.token
        await agent.renew_quiesce(held.token, 120)
        recorded = freeze_of(state, "vm-1")
        assert recorded is not None and recorded.expire_at > held.expire_time.timestamp()
        assert (await agent.unquiesce(held.token)).thawed_now
        assert not frozen(state, "vm-1")
        assert handed == []
    finally:
        await agent.close()


async def test_a_freeze_page_torn_by_a_kill_reads_as_no_freeze(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A SIGKILL in the middle of the copy leaves the new record's first bytes over
    the old one's last: still JSON, even the same length, but its CRC-32 does not
    match, so no reader takes it for a freeze (a freeze, renewal or thaw killed
    before its answer is not in force), and the agent drops it at start-up."""
    state = tmp_path / "state"
    agent = await running(state, "vm-1")
    held = await agent.quiesce("vm-1", QuiesceMethod.OVERLAY, 300, False, "op-1")
    await agent.close()
    page = state / "freezes" / "vm-1.json"
    raw = page.read_bytes()
    assert freeze_of(state, "vm-1") is not None
    # The token's first characters from another record, the rest as it was.
    torn = raw.replace(held.token.encode(), b"q-" + b"0" * (len(held.token) - 2), 1)
    assert len(torn) == len(raw) and json.loads(torn)  # still a page of JSON
    page.write_bytes(torn)
    assert not frozen(state, "vm-1")
    with caplog.at_level(logging.WARNING, logger="vmsnap_agent.sim"):
        agent = SimAgent(state)
    try:
        await agent.start()
        assert not page.exists()
        assert any("freeze record could not be read" in r.getMessage() for r in caplog.records)
        assert await agent.list_quiesces("vm-1") == []
    finally:
        await agent.close()


async def test_an_undefined_vm_leaves_no_freeze_page(tmp_path: Path) -> None:
    state = tmp_path / "state"
    agent = await running(state, "vm-1")
    try:
        held = await agent.quiesce("vm-1", QuiesceMethod.OVERLAY, 60, False, "op-1")
        await agent.unquiesce(held.token)
        assert (state / "freezes" / "vm-1.json").exists()  # the page, thawed
        await agent.stop_vm("vm-1", False)
        await agent.undefine_vm("vm-1")
        assert list((state / "freezes").iterdir()) == []
        # Defined again: its first freeze maps a new page.
        await agent.define_vm(small_vm("vm-1"))
        await agent.start_vm("vm-1")
        again = await agent.quiesce("vm-1", QuiesceMethod.OVERLAY, 60, False, "op-2")
        recorded = freeze_of(state, "vm-1")
        assert recorded is not None and recorded.token == again.token
    finally:
        await agent.close()
