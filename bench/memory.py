"""The pause window of a memory snapshot on QEMU, against the guest's RAM size.

``measure_memory(quick)`` boots the test guest (a local qcow2 disk and a raw disk
standing for an array's) with 256, 512 and 1024 MiB of RAM (256 and 512 when
quick), fills half of it with non-zero bytes in a tmpfs (text: pages the
migration stream cannot skip as zero), and saves the device and RAM state to a
file the way ``QUIESCE_METHOD_PAUSE_AND_SAVE_MEMORY`` does
(:mod:`vmsnap_agent.qemu.memory`), then resumes at once (no array in between: the
floor of the pause). Per RAM size, in each mode:

* ``memory_<mib>mib_live_pause_ms`` — live pre-copy (the agent's default): the RAM
  is copied while the guest runs; QEMU stops it for the last dirty pages and the
  device state (``pause-before-switchover`` holds it there for the local disks'
  cut). Pause = QEMU's STOP event → resumed.
* ``memory_<mib>mib_stop_pause_ms`` — stop first, then the whole save inside the
  pause (what ``savevm`` / ``snapshot-save`` do).
* ``memory_<mib>mib_live_save_ms`` / ``..._state_mib`` — the whole live save and the
  file it wrote.
* ``memory_background_snapshot`` — 1 when QEMU accepts the ``background-snapshot``
  migration capability here, else 0 (it needs userfaultfd write-protection from the
  kernel; the note says what QEMU answered).

Medians of 1 (quick) or 3 samples per figure. The figures are printed, nothing is
asserted. TCG unless ``VMSNAP_QEMU_ACCEL=kvm``. About 1 min (quick) to 3 min.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.qemu import Skipped
from vmsnap_agent.qemu import DiskFormat, DiskSpec, QemuHypervisor, build_guest_image
from vmsnap_agent.qemu import memory as mem
from vmsnap_agent.qemu.errors import QmpCommandError
from vmsnap_agent.qemu.process import qemu_binary

MiB = 1 << 20


def measure_memory(quick: bool) -> tuple[dict[str, float], str]:
    """(figures, the note on background-snapshot)."""
    if qemu_binary() is None:
        raise Skipped("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    sizes = (256, 512) if quick else (256, 512, 1024)
    samples = 1 if quick else 3
    work = Path(tempfile.mkdtemp(prefix="vsm-", dir="/tmp"))
    try:
        return asyncio.run(_measure(work, sizes, samples))
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _measure(
    work: Path, sizes: tuple[int, ...], samples: int
) -> tuple[dict[str, float], str]:
    figures: dict[str, float] = {}
    note = ""
    async with QemuHypervisor(work / "state", guest=build_guest_image()) as hv:
        for mib in sizes:
            vm_id = f"m{mib}"
            local = work / f"{vm_id}.qcow2"
            array = work / f"{vm_id}.raw"
            await _run("qemu-img", "create", "-q", "-f", "qcow2", str(local), "64M")
            await _run("truncate", "-s", "32M", str(array))
            await hv.define_vm(
                vm_id,
                mib,
                [
                    DiskSpec("vda", str(local), DiskFormat.QCOW2, locator=f"file://{local}"),
                    DiskSpec("vdb", str(array), locator="ontap://svm/vol/bench.raw"),
                ],
            )
            await hv.start_vm(vm_id)
            try:
                await hv.wait_guest_agent(vm_id, timeout=120)
                async with hv.guest_agent(vm_id) as ga:
                    code, _, err = await ga.exec_command(
                        "/bin/sh",
                        # 1 MiB of text, then copies of it (cat moves big blocks).
                        [
                            "-c",
                            "yes vmsnap | head -c 1048576 > /run/one && i=0 && "
                            f"while [ $i -lt {mib // 2} ]; do cat /run/one; i=$((i + 1)); "
                            "done > /run/fill",
                        ],
                        timeout=600,
                    )
                assert code == 0, err
                qmp = hv.qmp(vm_id)
                for live in (True, False):
                    pauses, saves, state = [], [], 0
                    for i in range(samples):
                        path = work / f"{vm_id}-{live}-{i}.state"

                        async def no_cut() -> None:
                            return None

                        started = time.time()
                        saved = await mem.save(qmp, path, no_cut, live=live)
                        await mem.resume(qmp)
                        resumed = time.time()
                        pauses.append((resumed - saved.paused_at) * 1000)
                        saves.append((resumed - started) * 1000)
                        state = saved.size_bytes
                        await mem.remove(path)
                    mode = "live" if live else "stop"
                    figures[f"memory_{mib}mib_{mode}_pause_ms"] = statistics.median(pauses)
                    figures[f"memory_{mib}mib_{mode}_save_ms"] = statistics.median(saves)
                    figures[f"memory_{mib}mib_{mode}_state_mib"] = state / MiB
                if not note:
                    figures["memory_background_snapshot"], note = await _background(qmp)
            finally:
                await hv.stop_vm(vm_id, force=True)
    return figures, note


async def _background(qmp: object) -> tuple[float, str]:
    """Whether QEMU takes the background-snapshot capability here (and why not)."""
    from vmsnap_agent.qemu.qmp import QmpSession

    assert isinstance(qmp, QmpSession)
    caps = [
        {"capability": "pause-before-switchover", "state": False},
        {"capability": "background-snapshot", "state": True},
    ]
    try:
        await qmp.execute("migrate-set-capabilities", {"capabilities": caps})
    except QmpCommandError as exc:
        return 0.0, f"QEMU refused background-snapshot: {exc}"
    await qmp.execute(
        "migrate-set-capabilities",
        {"capabilities": [{"capability": "background-snapshot", "state": False}]},
    )
    return 1.0, "background-snapshot accepted (userfaultfd write-protection available)"


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv)
    if await proc.wait() != 0:
        raise RuntimeError(f"{argv[0]} failed")


if __name__ == "__main__":
    import json
    import sys

    found, why = measure_memory(quick="--quick" in sys.argv)
    print(json.dumps({"figures": found, "background_snapshot": why}, indent=2))
