"""Each invariant check of the chaos harness reports the fault it exists for.

Fed fabricated observations (a frozen VM, an unfinished operation, wrong bytes,
a leftover object...), every check must name the fault; fed a healthy picture,
it must stay silent. A check that can never fire would make a passing chaos
run meaningless.
"""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

from tests.chaos import checks
from tests.chaos.checks import Freeze, StoredObject
from tests.chaos.freezes import FreezeSource
from tests.chaos.killer import plan_kills
from tests.chaos.knobs import DEFAULT
from tests.chaos.processes import Child
from vmsnap_host.client import (
    GroupKind,
    Operation,
    OperationType,
    SnapshotGroup,
    VMSnapshot,
    VMSnapshotState,
)
from vmsnap_host.config import parse
from vmsnap_stack import Component

A, B, C = b"a" * 8, b"b" * 8, b"c" * 8


def _op(id: str, done: bool) -> Operation:
    return Operation(id, OperationType.REVERT, "vm-1", "snap-1", done=done, step="reverting")


def _snap(id: str, state: VMSnapshotState) -> VMSnapshot:
    return VMSnapshot(id, "vm-1", f"name-{id}", state)


# --- freezes -------------------------------------------------------------------------------


def test_a_vm_frozen_past_its_lease_is_reported() -> None:
    now = time.time()
    found = checks.check_freezes(
        [Freeze("vm-1", "op-1", expire_time=now - 5, token="q-1")],
        now=now,
        ended={},
        grace=1.0,
    )
    assert [(v.invariant, v.subject) for v in found] == [(checks.FREEZE, "vm-1/q-1")]
    assert "past its lease" in found[0].detail


def test_a_vm_still_frozen_after_its_operation_ended_is_reported() -> None:
    now = time.time()
    found = checks.check_freezes(
        [Freeze("vm-1", "op-1", expire_time=now + 20, token="q-1")],
        now=now,
        ended={"op-1": now - 3},
        grace=1.0,
    )
    assert len(found) == 1
    assert "after operation op-1 ended" in found[0].detail


def test_a_freeze_at_rest_is_reported_and_a_live_one_is_not() -> None:
    now = time.time()
    frozen = [Freeze("vm-1", "op-1", expire_time=now + 20)]
    assert checks.check_freezes(frozen, now=now, ended={}, grace=1.0) == []
    # Within the grace after its operation ended: the thaw may be on its way.
    assert checks.check_freezes(frozen, now=now, ended={"op-1": now - 0.5}, grace=1.0) == []
    # A dead agent can thaw nothing: its freezes are no verdict on the host.
    late = [Freeze("vm-1", "op-1", expire_time=now - 5)]
    assert checks.check_freezes(late, now=now, ended={}, grace=1.0, lease_trusted=False) == []
    assert (
        checks.check_freezes(
            frozen, now=now, ended={"op-1": now - 3}, grace=1.0, lease_trusted=False
        )
        == []
    )
    # Once nothing runs, any freeze is one too many.
    assert len(checks.check_freezes(frozen, now=now, ended={}, grace=1.0, idle=True)) == 1


async def test_the_sim_agents_persisted_freezes_are_read(tmp_path: Path) -> None:
    """The source the monitor uses until the agent answers ListQuiesces."""
    vms = tmp_path / "agent" / "vms"
    vms.mkdir(parents=True)
    freeze = {
        "token": "q-9",
        "method": "OVERLAY",
        "consistency": "CRASH",
        "operation_id": "op-9",
        "frozen_at": 1.0,
        "expire_at": 2.0,
    }
    for vm_id, f in (("frozen-vm", freeze), ("thawed-vm", None)):
        record = {
            "id": vm_id,
            "name": vm_id,
            "memory_mib": 64,
            "state": "RUNNING",
            "clean_shutdown": True,
            "volumes": [],
            "freeze": f,
        }
        (vms / f"{vm_id}.json").write_text(json.dumps({"version": 2, "vm": record}))
    agent = Child(Component("agent", "hypervisor agent", "", (), "unix:///nowhere"), tmp_path)
    source = FreezeSource(agent, tmp_path / "agent")
    try:
        found = await source.list()
    finally:
        await source.close()
    assert found == [Freeze("frozen-vm", "op-9", 2.0, "q-9")]
    assert not source.lease_trusted()  # the agent does not run
    assert checks.check_freezes(found or [], now=10.0, ended={"op-9": 5.0}, grace=1.0) != []


# --- nothing transitional -------------------------------------------------------------------


def test_an_unfinished_operation_and_a_transitional_snapshot_are_reported() -> None:
    found = checks.check_settled(
        [_op("op-1", done=False), _op("op-2", done=True)],
        [
            _snap("s-ready", VMSnapshotState.READY),
            _snap("s-error", VMSnapshotState.ERROR),
            _snap("s-stuck", VMSnapshotState.REVERTING),
            _snap("s-creating", VMSnapshotState.CREATING),
        ],
    )
    assert sorted(v.subject for v in found) == [
        "operation op-1",
        "snapshot s-creating",
        "snapshot s-stuck",
    ]
    assert all(v.invariant == checks.SETTLED for v in found)


# --- READY snapshots ------------------------------------------------------------------------


def test_an_acknowledged_snapshot_no_longer_ready_is_reported_unless_deleted() -> None:
    found = checks.check_still_ready(
        ["s-ok", "s-error", "s-gone", "s-deleted"],
        deleted={"s-deleted"},
        states={
            "s-ok": VMSnapshotState.READY,
            "s-error": VMSnapshotState.ERROR,
            "s-deleted": VMSnapshotState.REMOVED,
        },
    )
    assert [(v.subject, v.detail) for v in found] == [
        ("snapshot s-error", "acknowledged READY, now ERROR"),
        ("snapshot s-gone", "acknowledged READY, now gone from the catalog"),
    ]


def test_a_revert_that_did_not_restore_the_bytes_is_reported() -> None:
    expected = {"vda": A, "vdb": B, "vdc": None}
    assert checks.check_restored("s-1", expected, {"vda": A, "vdb": B, "vdc": C}, when="x") == []
    found = checks.check_restored(
        "s-1", expected, {"vda": A, "vdb": C, "vdc": C}, when="op-7", plan="vdb: hypervisor sim-1"
    )
    assert len(found) == 1
    assert found[0].invariant == checks.READY
    assert "vdb holds" in found[0].detail and "vda" not in found[0].detail
    assert "plan: vdb: hypervisor sim-1" in found[0].detail
    # An unreadable disk is no verdict.
    assert checks.check_restored("s-1", expected, {"vda": A, "vdb": None}, when="x") == []
    assert checks.compared(expected, {"vda": A, "vdb": None, "vdc": C}) == 1


def test_a_failed_revert_to_a_ready_snapshot_at_the_end_is_reported() -> None:
    found = checks.check_revert_failed("s-1", "failed:UNAVAILABLE", when="at the end")
    assert [v.invariant for v in found] == [checks.READY]


def test_the_plan_text_names_who_took_each_disk() -> None:
    snap = VMSnapshot(
        "s-1",
        "vm-1",
        "n",
        VMSnapshotState.READY,
        groups=(
            SnapshotGroup(GroupKind.DRIVER, "io.vmsnap.element", ("vda",)),
            SnapshotGroup(GroupKind.HYPERVISOR, "sim-1", ("vdb", "vdc")),
        ),
    )
    assert checks.plan_text(snap) == (
        "vda: driver io.vmsnap.element, vdb: hypervisor sim-1, vdc: hypervisor sim-1"
    )


# --- one side -------------------------------------------------------------------------------


def test_a_half_reverted_vm_is_reported() -> None:
    before = {"vda": A, "vdb": A}
    target = {"vda": B, "vdb": B}
    assert checks.check_one_side("r", before, target, {"vda": B, "vdb": B}) == []
    assert checks.check_one_side("r", before, target, {"vda": A, "vdb": A}) == []
    mixed = checks.check_one_side("r", before, target, {"vda": B, "vdb": A})
    assert [v.invariant for v in mixed] == [checks.ONE_SIDE]
    assert "both sides" in mixed[0].detail
    stranger = checks.check_one_side("r", before, target, {"vda": C, "vdb": B})
    assert len(stranger) == 1 and "neither" in stranger[0].detail
    # Unknown content before: a disk not at the snapshot next to one at it is still two sides.
    unknown = checks.check_one_side("r", {"vda": None, "vdb": A}, target, {"vda": C, "vdb": B})
    assert len(unknown) == 1


# --- orphans --------------------------------------------------------------------------------


def test_an_object_without_a_live_record_is_reported() -> None:
    snapshots = [
        _snap("s-ready", VMSnapshotState.READY),
        _snap("s-error", VMSnapshotState.ERROR),
        _snap("s-removed", VMSnapshotState.REMOVED),
    ]
    live = checks.live_ids(snapshots)
    assert live == {"s-ready"}
    found = checks.check_orphans(
        [
            StoredObject("driver-element", "s-ready", "vm-1"),
            StoredObject("driver-ontap", "s-error", "vm-1"),
            StoredObject("agent", "s-ready-keep-1234abcd", "vm-1"),
            StoredObject("agent", "s-removed", "vm-1"),
            StoredObject("agent", "never-recorded", ""),
        ],
        live,
    )
    assert [v.subject for v in found] == [
        "driver-ontap: s-error",
        "agent: s-ready-keep-1234abcd",
        "agent: s-removed",
        "agent: never-recorded",
    ]
    assert all(v.invariant == checks.ORPHANS for v in found)


# --- the plan of a run ---------------------------------------------------------------------


def test_a_seed_fixes_the_kills() -> None:
    targets = {"host": 2.0, "agent": 1.5, "driver-element": 1.0, "emulator-element": 1.0}
    first = plan_kills(7, 10, 100, targets, DEFAULT)
    assert first == plan_kills(7, 10, 100, targets, DEFAULT)
    assert first != plan_kills(8, 10, 100, targets, DEFAULT)
    assert len(first) == 10 and all(1 <= k.after_op < 100 for k in first)
    assert {k.target for k in first} <= set(targets)
    assert all(k.outage > DEFAULT.call_timeout_seconds for k in first if k.long)


def test_one_broken_snapshot_counts_once() -> None:
    again = checks.Violation(checks.READY, "snapshot s-1", "did not restore")
    other = checks.Violation(checks.READY, "snapshot s-2", "did not restore")
    found = checks.dedupe([again, other, again])
    assert [v.subject for v in found] == ["snapshot s-1", "snapshot s-2"]
    assert found[0].detail == "did not restore (seen 2 times)"


def test_the_generated_host_configuration_is_what_the_host_reads() -> None:
    text = DEFAULT.host_toml(["unix:///tmp/a.sock", "unix:///tmp/b.sock"], ["unix:///tmp/c.sock"])
    config = parse(tomllib.loads(text))
    assert config.settings.call_timeout_seconds == DEFAULT.call_timeout_seconds
    assert config.settings.quiesce_lease_seconds == DEFAULT.quiesce_lease_seconds
    assert [d.address for d in config.drivers] == ["unix:///tmp/a.sock", "unix:///tmp/b.sock"]
    assert DEFAULT.long_outage[0] > config.settings.call_timeout_seconds


# --- no disk overwritten under a running guest ----------------------------------------------


def test_a_disk_overwritten_while_its_vm_ran_is_reported() -> None:
    owners = {"element://c/7": ("vm-1", "vda"), "ontap://svm0/v/vm-1/vdb": ("vm-1", "vdb")}
    power = [
        checks.Power(1.0, "vm-1", "RUNNING"),
        checks.Power(2.0, "vm-1", "STOPPED"),
        checks.Power(5.0, "vm-1", "RUNNING"),
    ]
    found = checks.check_not_running(
        [
            checks.Overwrite(1.5, "RollbackToSnapshot", "element://c/7"),  # while running
            checks.Overwrite(3.0, "file clone", "ontap://svm0/v/vm-1/vdb"),  # stopped: fine
            checks.Overwrite(4.9, "RollbackToSnapshot", "element://c/7"),  # stopped: fine
            checks.Overwrite(6.0, "file clone", "ontap://svm0/v/vm-1/vdb"),  # running again
            checks.Overwrite(6.0, "file clone", "ontap://svm0/v/.vmsnap/x"),  # not a VM's disk
        ],
        power,
        owners,
    )
    assert [(v.invariant, v.subject) for v in found] == [
        (checks.NOT_RUNNING, "vm-1/vda"),
        (checks.NOT_RUNNING, "vm-1/vdb"),
    ]
    assert "RollbackToSnapshot overwrote it while vm-1 was RUNNING" in found[0].detail


def test_a_vm_never_started_or_stopped_before_the_overwrite_is_not_reported() -> None:
    owners = {"element://c/7": ("vm-2", "vda")}
    overwrite = [checks.Overwrite(3.0, "RollbackToSnapshot", "element://c/7")]
    assert checks.check_not_running(overwrite, [], owners) == []
    started_after = [checks.Power(3.5, "vm-2", "RUNNING")]
    assert checks.check_not_running(overwrite, started_after, owners) == []
    other_vm = [checks.Power(1.0, "vm-9", "RUNNING")]
    assert checks.check_not_running(overwrite, other_vm, owners) == []
