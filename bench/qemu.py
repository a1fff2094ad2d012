"""The real freeze window on QEMU: quiesce → thaw, with and without the drivers' takes.

``measure_qemu(quick)`` starts the whole stack as processes (Element and ONTAP
emulators, the reference drivers, ``vmsnap-agent --hypervisor qemu``, the host;
see ``tests/support/qemu_stack.py``), boots the test guest with one disk on each
array (an Element volume over NBD, a file in an ONTAP volume) plus a local qcow2
disk, with the guest writer running, and measures:

* ``qemu_freeze_<method>_ms`` — the agent alone: ``Quiesce`` then ``Unquiesce`` at
  once (no driver in between), for each method (``overlay``, ``guest``,
  ``overlay_guest``): the floor of a freeze on this hypervisor (overlay
  transaction, guest fsfreeze round trips, commit of what the overlays caught),
  each after 0.5 s idle as a periodic take starts (the agent's spare overlays are
  made by then; a quiesce right after an unquiesce creates its overlays inline).
  Nothing is taken in between, so the Quiesce says ``no_native_snapshot`` (as the
  host's does for an array-only plan); ``qemu_freeze_overlay_cut_ms`` is the
  overlay freeze that also cuts the local disk for a native snapshot (a plan with
  arrays and a local disk), made and dropped unused here.
* ``qemu_freeze_with_drivers_<method>_ms`` — a full VM snapshot through the
  host's API (``CreateVMSnapshot``), the freeze window the host records: quiesce,
  the parallel takes on both arrays and the native cut, thaw. The host picks
  ``overlay`` for quiesce OFF and ``overlay_guest`` otherwise; ``guest`` alone is
  what it uses only with an agent that offers no overlays, so it has no figure here.
* ``qemu_freeze_ms`` / ``qemu_freeze_with_drivers_ms`` — the same for the method
  of a quiesced take (``overlay_guest``).
* ``qemu_ga_freeze_thaw_ms`` — qemu-ga's own ``guest-fsfreeze-freeze`` then
  ``guest-fsfreeze-thaw`` on the same guest, on an open connection (the floor a
  guest freeze can reach; libvirt keeps its connection open too).
* ``qemu_guest_frozen_<method>_ms`` — the guest's true frozen window with each
  guest method: freeze answered → thaw sent, as the agent records it
  (``guest_surely_frozen_ms`` in its log), for the agent-alone samples above.

Medians of 3 (quick) or 9 samples per figure, in milliseconds. Needs QEMU and the
test guest's packages (see ``tests/agent_qemu/README.md``); TCG unless
``VMSNAP_QEMU_ACCEL=kvm``. About 20 s (quick) to 60 s on 2 busy cores.
:class:`Skipped` when QEMU is not installed.

``python -m bench`` reads :class:`QemuResult` (``freeze_ms``,
``freeze_with_drivers_ms``); ``figures`` / :meth:`QemuResult.as_dict` hold every
key above.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.qemu_stack import (
    QemuStack,
    StackOptions,
    three_disks,
    vm_of,
    wait_guest,
)
from vmsnap_agent.qemu.guest_agent import GuestAgentClient
from vmsnap_agent.qemu.process import VmPaths, qemu_binary
from vmsnap_host.client import HostClient, QuiescePolicy
from vmsnap_host.config import Settings
from vmsnap_sdk import AgentClient, QuiesceMethod

VM_ID = "bench"
METHODS = {
    # The guest method first: its goal is against qemu-ga's own freeze + thaw,
    # measured just before it (samples apart in time drift with the machine's load).
    "guest": QuiesceMethod.GUEST_FREEZE,
    "overlay": QuiesceMethod.OVERLAY,
    "overlay_guest": QuiesceMethod.GUEST_FREEZE_AND_OVERLAY,
}
#: The agent-alone samples: (figure name, method, whether the local disk is cut for a
#: native snapshot, as when the host's plan has one beside the arrays).
SAMPLED = [
    *((name, method, False) for name, method in METHODS.items()),
    ("overlay_cut", QuiesceMethod.OVERLAY, True),
]
HOST_POLICIES = {"overlay": QuiescePolicy.OFF, "overlay_guest": QuiescePolicy.REQUIRED}
#: Seconds idle before each agent-alone sample (periodic takes are seconds apart).
IDLE_S = 0.5


def deployed(options: StackOptions) -> StackOptions:
    """``options`` with the host's default health and reconcile intervals (the
    test stacks' are 0.5 s and 1 s): the background calls beside the takes are a
    deployment's, not a test's that hunts orphans within a second."""
    defaults = Settings()
    return dataclasses.replace(
        options,
        health_interval=defaults.health_interval_seconds,
        reconcile_interval=defaults.reconcile_interval_seconds,
    )


class Skipped(Exception):
    """A benchmark that cannot run here; the message says why."""


@dataclass(frozen=True)
class QemuResult:
    #: The agent alone, quiesce → thaw, overlay+guest freeze (no driver in between).
    freeze_ms: float
    #: The host's recorded window of a quiesced take on both arrays and the hypervisor.
    freeze_with_drivers_ms: float
    #: Every figure of the module docstring, per method.
    figures: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return dict(self.figures)


def measure_qemu(quick: bool) -> QemuResult:
    """Freeze windows in ms (see the module docstring for the keys)."""
    if qemu_binary() is None:
        raise Skipped("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    samples = 3 if quick else 9
    with QemuStack(options=deployed(StackOptions(lease_seconds=30))) as stack:
        figures = asyncio.run(_measure(stack, samples))
    return QemuResult(figures["qemu_freeze_ms"], figures["qemu_freeze_with_drivers_ms"], figures)


async def _measure(stack: QemuStack, samples: int) -> dict[str, float]:
    host = HostClient.connect(stack.host_address, timeout=120)
    agent = AgentClient.connect(stack.address("agent"), timeout=120)
    figures: dict[str, float] = {}
    try:
        disks = three_disks(stack, VM_ID)
        await host.define_vm(vm_of(stack, VM_ID, disks, "vmsnap.writer=/dev/vda"))
        await host.start_vm(VM_ID)
        await wait_guest(stack, VM_ID)
        figures["qemu_ga_freeze_thaw_ms"] = await _ga_floor(stack, samples)
        for name, method, cut in SAMPLED:
            windows = []
            for _ in range(samples):
                # Idle first, as before a periodic take: the agent makes its spare
                # overlays after each unquiesce (spares.py), in about 0.1-0.3 s.
                await asyncio.sleep(IDLE_S)
                started = time.perf_counter()
                # No native snapshot follows (nothing is taken in between): said so,
                # as the host does for a plan without one; "_cut" prepares it anyway.
                q = await agent.quiesce(VM_ID, method, 30, False, "", no_native_snapshot=not cut)
                await agent.unquiesce(q.token)
                windows.append((time.perf_counter() - started) * 1000)
            figures[f"qemu_freeze_{name}_ms"] = statistics.median(windows)
            if method is not QuiesceMethod.OVERLAY:
                frozen = _guest_frozen(stack, samples)
                if frozen:
                    figures[f"qemu_guest_frozen_{name}_ms"] = statistics.median(frozen)
        for name, policy in HOST_POLICIES.items():
            windows = []
            for i in range(samples):
                op = await host.create_vm_snapshot(VM_ID, f"{name}-{i}", quiesce=policy)
                op = await host.wait(op.id, timeout=120)
                if not op.succeeded:
                    raise RuntimeError(f"bench snapshot failed: {op.error}")
                snap = await host.get_vm_snapshot(op.vm_snapshot_id)
                assert snap.freeze_seconds is not None
                windows.append(snap.freeze_seconds * 1000)
                # Arrays cap snapshots per volume (Element: 32): delete as we go.
                deleted = await host.delete_vm_snapshot(snap.id)
                await host.wait(deleted.id, timeout=120)
            figures[f"qemu_freeze_with_drivers_{name}_ms"] = statistics.median(windows)
        figures["qemu_freeze_ms"] = figures["qemu_freeze_overlay_guest_ms"]
        figures["qemu_freeze_with_drivers_ms"] = figures[
            "qemu_freeze_with_drivers_overlay_guest_ms"
        ]
        await host.stop_vm(VM_ID, force=True)
    finally:
        await agent.close()
        await host.close()
    return figures


async def _ga_floor(stack: QemuStack, samples: int) -> float:
    """qemu-ga's freeze + thaw on one open connection (before the agent process
    makes its own: QEMU serves one client on the port at a time)."""
    qga = str(VmPaths.for_vm(stack.agent_state, VM_ID).qga)
    pairs = []
    async with GuestAgentClient(qga) as ga:
        for _ in range(samples):
            start = time.perf_counter()
            await ga.execute("guest-fsfreeze-freeze")
            await ga.execute("guest-fsfreeze-thaw")
            pairs.append((time.perf_counter() - start) * 1000)
    return statistics.median(pairs)


def frozen_by_token(log: Path) -> dict[str, float]:
    """guest_surely_frozen_ms of each quiesce in the agent's log, by quiesce token,
    in the order the quiesces were logged. A quiesce whose guest thawed within it
    logs the value on its "quiesced" and its "unquiesced" line: one sample."""
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        fields = entry.get("fields")
        if not isinstance(fields, dict):
            fields = entry
        value, token = fields.get("guest_surely_frozen_ms"), fields.get("token")
        if isinstance(value, int | float) and isinstance(token, str):
            found.setdefault(token, float(value))
    return found


def _guest_frozen(stack: QemuStack, samples: int) -> list[float]:
    """The last ``samples`` guest frozen windows the agent logged (freeze answered →
    thaw sent), in ms, one per quiesce."""
    return list(frozen_by_token(Path(stack.work) / "agent.log").values())[-samples:]


if __name__ == "__main__":
    import json

    print(json.dumps(measure_qemu(quick=True).as_dict(), indent=2))
