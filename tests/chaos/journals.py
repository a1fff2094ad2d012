"""The journals a run's processes keep for the "not_running" invariant.

The chaos harness starts every process with :data:`ENV`: the sim agent appends
each VM's power state to ``<agent state>/power.jsonl``
(``vmsnap_agent.sim.POWER_LOG``), and each array emulator each call that
overwrote a volume's or a disk file's data to ``overwrites.jsonl`` in its state
directory (``vmsnap_emulators.overwrites``), both on CLOCK_MONOTONIC. Read here
at the end of a run into :class:`~tests.chaos.checks.Power` and
:class:`~tests.chaos.checks.Overwrite`, with the locators of the harness's disks
as the key both sides share.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path

from tests.chaos.checks import Overwrite, Power
from tests.chaos.disks import Disk
from vmsnap_agent.sim import POWER_LOG, POWER_LOG_ENV
from vmsnap_emulators import overwrites

#: What every process of a run gets in its environment.
ENV = {POWER_LOG_ENV: "1", overwrites.ENV: "1"}


def power(agent_state: Path) -> list[Power]:
    """The sim agent's power journal (a line a kill cut short is skipped)."""
    return [
        Power(float(e["mono"]), str(e["vm"]), str(e["state"]))
        for e in overwrites.read(agent_state / POWER_LOG)
    ]


def disk_key(disk: Disk) -> str | None:
    """What an emulator's journal says of this disk: an Element volume's id, an
    ONTAP disk file's volume and path; None for the agent's own disks."""
    rest = disk.locator.split("://", 1)[-1]
    if disk.kind == "element":
        return f"element:{rest.rsplit('/', 1)[-1]}"
    if disk.kind == "ontap":
        _svm, volume, path = rest.split("/", 2)
        return f"ontap:{volume}/{path}"
    return None


def overwritten(arrays: Path, keys: Collection[str]) -> list[Overwrite]:
    """Every overwrite the emulators under ``arrays`` journaled, keyed as
    :func:`disk_key` keys disks; an ONTAP volume's restore overwrote each of
    ``keys`` in that volume."""
    found = []
    for path in sorted(arrays.rglob(overwrites.FILE)):
        element = path.relative_to(arrays).parts[0] == "element"
        for e in overwrites.read(path):
            mono, call = float(e["mono"]), str(e["call"])
            if element:
                found += [Overwrite(mono, call, f"element:{v}") for v in e.get("volumes", [])]
            elif "path" in e:
                found.append(Overwrite(mono, call, f"ontap:{e['volume']}/{e['path']}"))
            else:
                prefix = f"ontap:{e['volume']}/"
                found += [Overwrite(mono, call, k) for k in keys if k.startswith(prefix)]
    return found


def owners(vms: Iterable[tuple[str, list[Disk]]]) -> dict[str, tuple[str, str]]:
    """Each journal key of the VMs' array disks → (VM id, disk name)."""
    found = {}
    for vm_id, disks in vms:
        for disk in disks:
            key = disk_key(disk)
            if key is not None:
                found[key] = (vm_id, disk.name)
    return found
