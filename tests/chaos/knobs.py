"""Every run-time knob of the chaos harness, in one place.

The host's settings are short on purpose: leases and call timeouts of a few
seconds let one run cover many crashes, outages longer than a call timeout and
leases that run out, in minutes. The harness writes them into the host.toml it
generates (:meth:`Knobs.host_toml`); everything else here paces the workload,
the kills and the checks at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Knobs:
    # --- the workload ---------------------------------------------------------------
    #: VMs, each with one Element disk, one ONTAP disk and one local file:// disk.
    vms: int = 4
    #: Of those, how many have the local disk alone (a plan that is the agent's
    #: native snapshot alone: the guest+cut freeze whose Quiesce takes it, released).
    local_only_vms: int = 1
    #: Size of each array test volume.
    disk_bytes: int = 1 << 20
    #: Each disk gets a fresh random pattern of this size at two offsets before a take.
    pattern_bytes: int = 4096
    #: Past this many acknowledged live snapshots a VM only reverts or deletes.
    max_live_snapshots_per_vm: int = 4
    #: Share of each kind of operation while a VM has room for more snapshots.
    weights: tuple[tuple[str, float], ...] = (("create", 0.45), ("revert", 0.30), ("delete", 0.25))

    # --- the control plane's patience ---------------------------------------------------
    #: Deadline of one call to the host (admission calls the agent and every driver).
    rpc_timeout: float = 8.0
    #: How long one operation is retried (same request_id) and waited for before the
    #: harness calls it unresolved and stops using that VM.
    op_patience: float = 45.0
    #: How long a write or read of a disk is retried while its driver is down.
    io_patience: float = 30.0
    #: Deadline of one fixture call (write/read of a disk through a driver).
    io_timeout: float = 4.0
    #: The run stops issuing operations after base + per op seconds (it never hangs).
    run_seconds_base: float = 60.0
    run_seconds_per_op: float = 2.0

    # --- kills -----------------------------------------------------------------------
    #: Seconds a killed process stays down: short, or longer than the host's call timeout.
    short_outage: tuple[float, float] = (0.1, 1.5)
    long_outage: tuple[float, float] = (6.0, 9.0)
    long_outage_share: float = 0.3
    #: Share of kills that wait for a freeze to be held, or for a revert to run, first.
    while_frozen_share: float = 0.3
    during_revert_share: float = 0.2
    #: How long such a kill waits for its moment before killing anyway.
    moment_wait: float = 5.0
    #: Deadline for a process to serve again after a restart (and at the first start).
    start_timeout: float = 60.0

    # --- the checks ------------------------------------------------------------------
    #: How often the freeze monitor looks at the agent's freezes during the run.
    freeze_poll: float = 0.2
    #: Slack for sampling: a freeze counts as outliving its lease or its operation
    #: only this long after the fact.
    freeze_grace: float = 1.0
    #: How long the end waits for every operation to finish and no snapshot to be
    #: transitional, once every process runs again.
    settle_seconds: float = 60.0
    #: Without a host Reconcile RPC the end waits this many reconcile intervals.
    reconcile_passes: float = 3.0

    # --- the host (written to host.toml) -------------------------------------------------
    # Call timeouts stay above what a healthy but busy stack needs (an ONTAP
    # revert takes ~2 s on two busy cores while four VMs revert): a run must find
    # the host's faults, not deadlines too short for the machine.
    lease_seconds: float = 8.0
    quiesce_lease_seconds: float = 5.0
    take_timeout_seconds: float = 5.0
    call_timeout_seconds: float = 5.0
    health_interval_seconds: float = 0.5
    reconcile_interval_seconds: float = 1.0
    post_processing_timeout_seconds: float = 20.0
    max_snapshots_per_vm: int = 64
    queue_bound: int = 8
    #: The reconciler leaves objects younger than this alone; the end waits it
    #: out before the pass that must leave nothing behind.
    orphan_grace_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.long_outage[0] <= self.call_timeout_seconds:
            raise ValueError(
                "long_outage must start above call_timeout_seconds: those outages exist "
                "to outlast the host's calls"
            )

    def run_seconds(self, ops: int) -> float:
        return self.run_seconds_base + self.run_seconds_per_op * ops

    def host_settings(self) -> dict[str, float | int]:
        return {
            "lease_seconds": self.lease_seconds,
            "quiesce_lease_seconds": self.quiesce_lease_seconds,
            "take_timeout_seconds": self.take_timeout_seconds,
            "call_timeout_seconds": self.call_timeout_seconds,
            "health_interval_seconds": self.health_interval_seconds,
            "reconcile_interval_seconds": self.reconcile_interval_seconds,
            "post_processing_timeout_seconds": self.post_processing_timeout_seconds,
            "max_snapshots_per_vm": self.max_snapshots_per_vm,
            "queue_bound": self.queue_bound,
            "orphan_grace_seconds": self.orphan_grace_seconds,
        }

    def host_toml(self, drivers: Sequence[str], agents: Sequence[str]) -> str:
        """The host's configuration: these settings and the stack's sockets."""
        lines = ["# Generated by the chaos harness (tests/chaos/knobs.py).", "[host]"]
        settings = self.host_settings()
        lines += [f"{key} = {value}" for key, value in settings.items()]
        lines.append("")
        for order, address in enumerate(drivers):
            lines += ["[[drivers]]", f'address = "{address}"', f"order = {order}", ""]
        for address in agents:
            lines += ["[[agents]]", f'address = "{address}"', ""]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT = Knobs()
