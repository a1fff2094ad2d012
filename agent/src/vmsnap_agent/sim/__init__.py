"""The sim hypervisor agent: a hypervisor simulated in one small JSON file per VM.

Run it with ``vmsnap-agent --hypervisor sim --listen ADDRESS --state DIR [--name NAME]``.
It is the embedded default of ``vmsnap up`` and what the host's tests run against.

Conventions a test or a demo can rely on:

* **Guest behaviour** is chosen per VM with words in the VM's *name* (the only
  free-text field that passes unchanged through the host's DefineVM):
  ``sim.guest_agent=false`` — the guest agent never answers, so GUEST_FREEZE and
  GUEST_FREEZE_AND_OVERLAY fail with FAILED_PRECONDITION, reason
  ``GUEST_AGENT_UNAVAILABLE``, unless ``best_effort`` (then overlays only, or
  nothing, consistency CRASH and a ``warning``); ``sim.freeze_hook=false`` — the
  guest freezes its filesystems but has no application hook (FILESYSTEM instead
  of APPLICATION). Example name: ``"db-1 sim.guest_agent=false"``.
* **Is a VM frozen right now?** The VM's state stays RUNNING or STOPPED (a
  filesystem freeze does not pause vCPUs); the freeze is ``DIR/freezes/<vm
  id>.json`` (absent when thawed), replaced atomically, and never fsynced, on
  every freeze, renewal and thaw of that VM (layout in ``_store``). Read it with
  :func:`frozen` (or :func:`freeze_of` for the details), everything with
  :func:`load_state`.
* A freeze on a **stopped** VM succeeds with every method: nothing writes, so the
  consistency is APPLICATION after a clean stop and CRASH after a forced one.
* **Leases**: the agent thaws a VM when its lease runs out, while running (a
  background task) and at start-up for leases that ran out while it was down.
* **Disk bytes**: a ``file:///ABS/PATH`` disk is the real file
  ``DIR/disks/ABS/PATH`` (:func:`disk_path`), created sparse with the volume's
  ``size_bytes`` when missing; write and read it there to check what a revert
  restores, opening it anew for each access (a revert replaces the file by a
  rename, never writes into it). Disks of any other scheme (``element://``,
  ``ontap://``, …) hold no bytes in the sim: DescribeVM reports
  ``native_snapshot=True`` for ``file://`` disks only.
* **Native snapshots** copy every included file disk to
  ``DIR/native/<vm>/<snapshot>/<disk>`` (fsynced, then renamed into place) and
  are recorded once all copies are whole; a revert puts the copies back (all
  disks or none, even across a SIGKILL of the agent); a delete removes them.
  One with memory needs the VM RUNNING and reverts it to RUNNING; a disk-only
  revert needs the VM STOPPED. Frozen VMs cannot be started, stopped, reverted
  or undefined (FAILED_PRECONDITION, reason ``VM_FROZEN``); a second Quiesce of
  a frozen VM is ABORTED unless it repeats the same ``operation_id`` (then it
  returns the same token).
* **Freezes by operation**: each freeze keeps the ``operation_id`` of its
  Quiesce (in its freeze file, so across restarts); ListQuiesces lists them and
  Unquiesce with an ``operation_id`` thaws every freeze of that operation.
"""

from __future__ import annotations

from pathlib import Path

from vmsnap_agent.sim._agent import (
    NO_FREEZE_HOOK,
    NO_GUEST_AGENT,
    POWER_LOG,
    POWER_LOG_ENV,
    GuestTraits,
    SimAgent,
)
from vmsnap_agent.sim._disks import disk_path
from vmsnap_agent.sim._store import STATE_FILE, FreezeRecord, State, load_state, load_vm


def freeze_of(state_dir: Path | str, vm_id: str) -> FreezeRecord | None:
    """The freeze in force on a VM as the agent last recorded it, or None.

    A lease that ran out while no agent was running still shows here until an
    agent starts on ``state_dir`` again; compare ``expire_at`` with the clock
    when that matters.
    """
    vm = load_vm(Path(state_dir), vm_id)
    return vm.freeze if vm is not None else None


def frozen(state_dir: Path | str, vm_id: str) -> bool:
    """Whether the agent serving ``state_dir`` holds a freeze on the VM right now."""
    return freeze_of(state_dir, vm_id) is not None


__all__ = [
    "NO_FREEZE_HOOK",
    "NO_GUEST_AGENT",
    "POWER_LOG",
    "POWER_LOG_ENV",
    "STATE_FILE",
    "FreezeRecord",
    "GuestTraits",
    "SimAgent",
    "State",
    "disk_path",
    "freeze_of",
    "frozen",
    "load_state",
    "load_vm",
]
