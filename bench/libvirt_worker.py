"""The libvirt side of ``bench/peer_libvirt.py``, run by the system Python.

python3-libvirt is a Debian package built for ``/usr/bin/python3``, not for the
bench's virtualenv, so this script imports nothing but the standard library and
``libvirt``; ``peer_libvirt.py`` runs it as the unprivileged user that owns the
session libvirtd, feeds it one command per line on stdin and reads one JSON
object per line on stdout:

* ``boot``  — define and start the test guest (transient domain), wait for qemu-ga;
* ``snap N`` — one sample: ``virDomainSnapshotCreateXML`` with QUIESCE | DISK_ONLY |
  ATOMIC | NO_METADATA (an external overlay of vda), then an active block commit
  of the overlay into its base and a pivot back to the base: what Apache
  CloudStack 4.21's KVM disk-only strategy does; times in ms;
* ``hook`` — the guest's fsfreeze hook log (read with guest-file-* through libvirt);
* ``quit`` — destroy the guest and exit.

The block job's readiness is awaited with libvirt's BLOCK_JOB_2 event (no poll
interval adds to libvirt's figure).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
import threading
import time

import libvirt  # type: ignore[import-not-found]
import libvirt_qemu  # type: ignore[import-not-found]

DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{work}/vmlinuz</kernel>
    <initrd>{work}/initrd.gz</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{work}/vda.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='{work}/console.log'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>"""

SNAPSHOT = """<domainsnapshot>
  <name>{name}</name>
  <disks>
    <disk name='vda' snapshot='external'><source file='{file}'/></disk>
  </disks>
</domainsnapshot>"""

FLAGS = (
    libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
)
HOOK_LOG = "/run/vmsnap/fsfreeze-hook.log"


class Worker:
    def __init__(self, work: str, cmdline: str) -> None:
        self.work = work
        self.cmdline = cmdline
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=self._events, daemon=True).start()
        self.conn = libvirt.open("qemu:///session")
        self.dom: libvirt.virDomain | None = None
        self.ready = threading.Event()
        self.conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, self._on_job, None
        )

    @staticmethod
    def _events() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    def _on_job(
        self, conn: object, dom: object, disk: str, job: int, status: int, opaque: object
    ) -> None:
        if status == libvirt.VIR_DOMAIN_BLOCK_JOB_READY:
            self.ready.set()

    def boot(self) -> dict[str, object]:
        started = time.monotonic()
        xml = DOMAIN.format(name="vmsnap-bench", work=self.work, cmdline=self.cmdline)
        self.dom = self.conn.createXML(xml, 0)
        deadline = time.monotonic() + 180
        while True:
            try:
                libvirt_qemu.qemuAgentCommand(self.dom, '{"execute":"guest-ping"}', 5, 0)
                break
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        return {
            "boot_s": time.monotonic() - started,
            "libvirt": self.conn.getLibVersion(),
            "qemu": self.conn.getVersion(),
        }

    def snap(self, i: int) -> dict[str, object]:
        assert self.dom is not None
        overlay = f"{self.work}/vda.s{i}.qcow2"
        self.ready.clear()
        t0 = time.perf_counter()
        self.dom.snapshotCreateXML(SNAPSHOT.format(name=f"s{i}", file=overlay), FLAGS)
        t1 = time.perf_counter()
        self.dom.blockCommit("vda", None, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
        if not self.ready.wait(120):
            raise RuntimeError("the active block commit never became ready")
        # Without the ASYNC flag the pivot returns once the job has completed.
        self.dom.blockJobAbort("vda", libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        t2 = time.perf_counter()
        os.unlink(overlay)
        return {
            "snapshot_ms": (t1 - t0) * 1000,
            "commit_pivot_ms": (t2 - t1) * 1000,
            "total_ms": (t2 - t0) * 1000,
            "wall_start": time.time() - (t2 - t0),
        }

    def _agent(self, command: str, arguments: dict[str, object]) -> object:
        assert self.dom is not None
        reply = libvirt_qemu.qemuAgentCommand(
            self.dom, json.dumps({"execute": command, "arguments": arguments}), 10, 0
        )
        return json.loads(reply)["return"]

    def hook(self) -> dict[str, object]:
        handle = self._agent("guest-file-open", {"path": HOOK_LOG, "mode": "r"})
        try:
            data = self._agent("guest-file-read", {"handle": handle, "count": 1 << 16})
        finally:
            self._agent("guest-file-close", {"handle": handle})
        assert isinstance(data, dict)
        return {"log": base64.b64decode(data.get("buf-b64", "")).decode(errors="replace")}

    def quit(self) -> dict[str, object]:
        if self.dom is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self.dom.destroy()
        self.conn.close()
        return {"ok": True}


def main() -> int:
    work, cmdline = sys.argv[1], sys.argv[2]
    worker = Worker(work, cmdline)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "boot":
                out = worker.boot()
            elif words[0] == "snap":
                out = worker.snap(int(words[1]))
            elif words[0] == "hook":
                out = worker.hook()
            elif words[0] == "quit":
                out = worker.quit()
            else:
                out = {"error": f"unknown command {words[0]!r}"}
        except Exception as exc:  # noqa: BLE001 - reported to the bench, which fails the section
            out = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(out), flush=True)
        if words[0] == "quit":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
