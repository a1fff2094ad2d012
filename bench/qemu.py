"""QEMU: the real freeze window of a 3-disk VM (not wired yet).

The QEMU agent (`vmsnap-agent --hypervisor qemu`) is being wired on another
branch. When it lands, :func:`measure_qemu` starts it with a 3-disk VM, takes
snapshots through the host with the hypervisor strategy only and then with
two no-op drivers, and returns both median freeze windows; ``__main__``
already reports them as ``qemu_freeze_ms`` and ``qemu_freeze_with_drivers_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass


class Skipped(Exception):
    """A benchmark that cannot run here; the message says why."""


@dataclass(frozen=True)
class QemuResult:
    freeze_ms: float  # hypervisor strategy only (overlays on 3 disks)
    freeze_with_drivers_ms: float  # 1 disk native, 2 on no-op drivers


def measure_qemu(quick: bool) -> QemuResult:
    raise Skipped(
        "the QEMU hypervisor agent is not in this tree yet (branch qemu); "
        "bench/qemu.py:measure_qemu is the one function to fill in"
    )
