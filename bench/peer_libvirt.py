"""vmsnap beside libvirt on the same one-disk guest, in the same run.

The peer is what Apache CloudStack 4.21's KVM strategy calls: libvirt's
``virDomainSnapshotCreateXML`` with QUIESCE | DISK_ONLY | ATOMIC | NO_METADATA
(qemu-ga freeze, an external overlay made in one QMP transaction, thaw), then an
active block commit of the overlay into its base and a pivot back to it.

Both guests are the test guest of ``tests/agent_qemu`` (same kernel, initrd,
command line, 256 MiB, 1 vCPU, q35, TCG) with one disk: a 32 MiB qcow2 image
holding ext4, mounted, a writer appending to it every 200 ms; so qemu-ga's freeze
freezes one file system in both. vmsnap's guest runs under ``vmsnap-agent
--hypervisor qemu`` behind the host (``tests/support/qemu_stack.py``); libvirt's
under a **session** libvirtd the bench starts for the run (as the user
``nobody`` when the bench runs as root: nothing of it is system-wide; private
sockets, config, logs and images under one temporary directory, stopped and
removed at the end). The samples of both are interleaved, so the machine's load
falls on both alike.

Per sample:

* libvirt: snapshot (ms), commit + pivot (ms), and their sum (whole take + merge
  back); the guest frozen window from libvirtd's own debug log (the qemu-ga
  freeze's reply read → the thaw command sent);
* vmsnap: a quiesced ``CreateVMSnapshot`` with ``wait`` through the host (quiesce
  REQUIRED; the plan is the agent's native snapshot alone, so the host asks for
  ``GUEST_FREEZE_AND_CUT``: freeze, native cut, thaw, then the take adopting the
  cut and an Unquiesce with nothing to commit) timed by the client after 1.5 s
  idle, as a periodic take
  starts (the agent keeps its qemu-ga connection open, as libvirtd does; this run
  lets it close after 4 s idle, only so that the bench can read the guest's hook
  log through qemu-ga at the end); then the agent
  alone, Quiesce → Unquiesce, with ``GUEST_FREEZE_AND_OVERLAY`` and with
  ``GUEST_FREEZE``; the frozen window of each (freeze answered → thaw sent) from
  the agent's log;
* both guests: the frozen window as the guest saw it, from the fsfreeze hook's
  ``/proc/uptime`` stamps (written before the freeze and after the thaw; 10 ms
  resolution).

Needs ``libvirtd`` and the system Python's ``libvirt`` module (Debian:
``apt-get install libvirt-daemon-system python3-libvirt``), QEMU and the test
guest's packages; :class:`Skipped` otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.qemu import Skipped, deployed, frozen_by_token
from bench.stats import median

SYSTEM_PYTHON = "/usr/bin/python3"
WORKER = Path(__file__).with_name("libvirt_worker.py")
KERNEL_ARGS = "vmsnap.writer=/dev/vda"
DISK_SIZE = 32 << 20
VM_ID = "peer"
INSTALL = "apt-get install libvirt-daemon-system python3-libvirt"
# libvirtd's debug lines: "2026-11-30 07:21:10.123+0000: 7163: debug : fn:42 : text"
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\+0000: \d+: \w+ : \S+ : (.*)$")


@dataclass
class PeerResult:
    figures: dict[str, float] = field(default_factory=dict)
    versions: str = ""


def check() -> None:
    """Skipped with what to install when the peer cannot run here."""
    from vmsnap_agent.qemu.process import qemu_binary

    if qemu_binary() is None:
        raise Skipped("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    if shutil.which("libvirtd") is None:
        raise Skipped(f"libvirt is not installed ({INSTALL})")
    probe = (
        subprocess.run([SYSTEM_PYTHON, "-c", "import libvirt"], capture_output=True, check=False)
        if Path(SYSTEM_PYTHON).exists()
        else None
    )
    if probe is None or probe.returncode != 0:
        raise Skipped(f"the system Python has no libvirt module ({INSTALL})")
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        raise Skipped("running as root needs setpriv (util-linux) to start a session libvirtd")


def hook_windows(log: str) -> list[float]:
    """Frozen windows (ms) from the fsfreeze hook's log: each "freeze" → next "thaw"."""
    windows: list[float] = []
    frozen: float | None = None
    for line in log.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        if parts[0] == "freeze":
            frozen = float(parts[1])
        elif parts[0] == "thaw" and frozen is not None:
            windows.append((float(parts[1]) - frozen) * 1000)
            frozen = None
    return windows


def libvirt_windows(log: str) -> list[float]:
    """Frozen windows (ms) from libvirtd's qemu_agent debug log: the first line read
    after ``guest-fsfreeze-freeze`` was sent (its reply) → ``guest-fsfreeze-thaw`` sent."""
    windows: list[float] = []
    sent_freeze = False
    answered: datetime | None = None
    for line in log.splitlines():
        m = _LOG_LINE.match(line)
        if m is None:
            continue
        stamp, text = datetime.fromisoformat(m.group(1)), m.group(2)
        if text.startswith("Send command") and "guest-fsfreeze-freeze" in text:
            sent_freeze, answered = True, None
        elif sent_freeze and answered is None and text.startswith("Line ["):
            answered = stamp
        elif text.startswith("Send command") and "guest-fsfreeze-thaw" in text:
            if answered is not None:
                windows.append((stamp - answered).total_seconds() * 1000)
            sent_freeze, answered = False, None
    return windows


class Libvirt:
    """A session libvirtd and the worker that drives it, under one temporary directory."""

    def __init__(self, kernel: Path, initrd: Path, cmdline: str) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="vlp-", dir="/tmp"))
        self.kernel, self.initrd, self.cmdline = kernel, initrd, cmdline
        self.daemon: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[str] | None = None

    @property
    def log(self) -> Path:
        return self.work / "libvirtd.log"

    def _env(self) -> dict[str, str]:
        home = self.work / "home"
        return {
            "HOME": str(home),
            "XDG_RUNTIME_DIR": str(self.work / "run"),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_DATA_HOME": str(home / ".local/share"),
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
        }

    def _as_user(self) -> list[str]:
        # libvirtd run by root is the system daemon; by anyone else, a session one.
        if os.geteuid() != 0:
            return []
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

    def start(self) -> None:
        from tests.support.qemu_stack import make_ext4

        self.work.chmod(0o755)
        shutil.copy(self.kernel, self.work / "vmlinuz")
        shutil.copy(self.initrd, self.work / "initrd.gz")
        shutil.copy(WORKER, self.work / "worker.py")
        seed = make_ext4(self.work / "seed.img", DISK_SIZE)
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(seed), "vda.qcow2"],
            cwd=self.work,
            check=True,
            capture_output=True,
        )
        seed.unlink()
        conf = self.work / "home/.config/libvirt"
        conf.mkdir(parents=True)
        (self.work / "run").mkdir(mode=0o700)
        # The agent channel at debug level: the freeze reply and thaw send stamps.
        (conf / "libvirtd.conf").write_text(
            f'log_filters="1:qemu.qemu_agent 3:*"\nlog_outputs="1:file:{self.log}"\n'
        )
        if os.geteuid() == 0:
            user = pwd.getpwnam("nobody")
            for path in [self.work, *self.work.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)
        self.daemon = subprocess.Popen(
            [*self._as_user(), "libvirtd"],
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.work / "libvirtd.err").open("wb"),
            cwd=self.work,
            start_new_session=True,
        )
        sock = self.work / "run/libvirt/libvirt-sock"
        deadline = time.monotonic() + 30
        while not sock.exists():
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "session libvirtd did not start: "
                    + (self.work / "libvirtd.err").read_text(errors="replace")[-2000:]
                )
            time.sleep(0.05)
        self.worker = subprocess.Popen(
            [*self._as_user(), SYSTEM_PYTHON, "worker.py", str(self.work), self.cmdline],
            env=self._env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(self.work / "worker.err").open("wb"),
            cwd=self.work,
            text=True,
            start_new_session=True,
        )

    def call(self, command: str) -> dict[str, Any]:
        assert self.worker is not None
        stdin, stdout = self.worker.stdin, self.worker.stdout
        assert stdin is not None and stdout is not None
        stdin.write(command + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            err = (self.work / "worker.err").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the libvirt worker died on {command!r}: {err}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"libvirt {command!r}: {reply['error']}")
        return reply

    def stop(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            with contextlib.suppress(Exception):
                self.call("quit")
            _end(self.worker)
        # libvirtd stops its guests' QEMU as it exits only for autodestroy domains:
        # whatever the worker could not destroy is killed by the pidfile libvirt wrote.
        for pidfile in (self.work / "run/libvirt/qemu/run").glob("*.pid"):
            _kill_pidfile(pidfile)
        if self.daemon is not None:
            _end(self.daemon)
        # The session libvirtd spawns its own virtlogd (it exits after 2 min idle).
        _kill_pidfile(self.work / "run/libvirt/virtlogd.pid")
        shutil.rmtree(self.work, ignore_errors=True)


def _end(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()


def _kill_pidfile(path: Path) -> None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def measure_peer(quick: bool) -> PeerResult:
    check()
    from tests.support.qemu_stack import QemuStack, StackOptions, make_ext4
    from vmsnap_agent.qemu import build_guest_image

    # 15: both sides' takes are mostly the guest's hook and fsfreeze, whose time
    # varies by tens of ms from one freeze to the next; medians of 9 moved the
    # ratio by about 5 % from run to run.
    samples = 3 if quick else 15
    guest = build_guest_image()
    cmdline = f"{guest.base_cmdline} {KERNEL_ARGS}"
    peer = Libvirt(guest.kernel, guest.initrd, cmdline)
    # The agent's default keeps its qemu-ga connection for good; 4 s idle (longer
    # than the 1.5 s between samples) lets the bench's own probe in at the end.
    options = deployed(StackOptions(lease_seconds=30, guest_agent_idle_close=4.0))
    with QemuStack(options=options) as stack:
        try:
            peer.start()
            boot = peer.call("boot")
            seed = make_ext4(stack.work / "peer-seed.img", DISK_SIZE)
            image = stack.work / "peer-vda.qcow2"
            subprocess.run(
                ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(seed), str(image)],
                check=True,
                capture_output=True,
            )
            seed.unlink()
            result = asyncio.run(_measure(stack, peer, image, samples))
            result.figures["peer_libvirt_boot_s"] = float(boot["boot_s"])
            lib, qemu = int(boot["libvirt"]), int(boot["qemu"])
            result.versions = (
                f"libvirt {lib // 1_000_000}.{lib // 1000 % 1000}.{lib % 1000}, "
                f"QEMU {qemu // 1_000_000}.{qemu // 1000 % 1000}.{qemu % 1000}"
            )
            return result
        finally:
            peer.stop()


async def _measure(stack: Any, peer: Libvirt, image: Path, samples: int) -> PeerResult:
    from tests.support.qemu_stack import guest_sh, wait_guest
    from vmsnap_host.client import HostClient, QuiescePolicy
    from vmsnap_sdk import VM, AgentClient, QuiesceMethod, Volume

    host = HostClient.connect(stack.host_address, timeout=120)
    agent = AgentClient.connect(stack.address("agent"), timeout=120)
    f: dict[str, float] = {}
    lv: dict[str, list[float]] = {"snapshot": [], "commit": [], "total": []}
    take_ms: list[float] = []
    alone_ms: dict[str, list[float]] = {"overlay_guest": [], "guest": []}
    tokens: dict[str, list[str]] = {"overlay_guest": [], "guest": []}
    methods = {
        "overlay_guest": QuiesceMethod.GUEST_FREEZE_AND_OVERLAY,
        "guest": QuiesceMethod.GUEST_FREEZE,
    }
    try:
        vm = VM(
            id=VM_ID,
            name=f"{VM_ID} {KERNEL_ARGS}",
            memory_mib=256,
            volumes=(Volume("vda", f"file://{image}", DISK_SIZE, "qcow2"),),
        )
        await host.define_vm(vm)
        await host.start_vm(VM_ID)
        await wait_guest(stack, VM_ID)
        loop = asyncio.get_running_loop()
        for i in range(-1, samples):  # -1: a warm-up of each, not counted
            one = await loop.run_in_executor(None, peer.call, f"snap {i + 1}")
            await asyncio.sleep(1.5)  # idle, as between periodic takes
            started = time.perf_counter()
            op = await host.create_vm_snapshot(
                VM_ID, f"peer-{i + 1}", quiesce=QuiescePolicy.REQUIRED, wait=120
            )
            if not op.done:
                op = await host.wait(op.id, timeout=120)
            elapsed = (time.perf_counter() - started) * 1000
            if not op.succeeded:
                raise RuntimeError(f"bench snapshot failed: {op.error}")
            deleted = await host.delete_vm_snapshot(op.vm_snapshot_id)
            await host.wait(deleted.id, timeout=120)
            window: dict[str, float] = {}
            for name, method in methods.items():
                t0 = time.perf_counter()
                q = await agent.quiesce(VM_ID, method, 30, False, "")
                await agent.unquiesce(q.token)
                window[name] = (time.perf_counter() - t0) * 1000
                if i >= 0:
                    tokens[name].append(q.token)
            if i < 0:
                continue
            lv["snapshot"].append(float(one["snapshot_ms"]))
            lv["commit"].append(float(one["commit_pivot_ms"]))
            lv["total"].append(float(one["total_ms"]))
            take_ms.append(elapsed)
            for name, ms in window.items():
                alone_ms[name].append(ms)
        await asyncio.sleep(4.5)  # the agent's idle qemu-ga connection closes
        vm_hooks = hook_windows(await guest_sh(stack, VM_ID, "cat /run/vmsnap/fsfreeze-hook.log"))
        lv_hooks = hook_windows(str(peer.call("hook")["log"]))
        await host.stop_vm(VM_ID, force=True)
    finally:
        await agent.close()
        await host.close()

    # Each sample froze vmsnap's guest three times: the host's take, then the agent
    # alone with each method; libvirt's once. The warm-up is dropped.
    vm_hooks = vm_hooks[-3 * samples :]
    lv_hooks = lv_hooks[-samples:]
    by_token = frozen_by_token(stack.work / "agent.log")
    known = {t for ts in tokens.values() for t in ts}
    take_tokens = [t for t in by_token if t not in known][-samples:]
    vm_frozen = {
        "take": [by_token[t] for t in take_tokens],
        **{name: [by_token[t] for t in ts if t in by_token] for name, ts in tokens.items()},
    }
    lv_frozen = libvirt_windows(peer.log.read_text(errors="replace"))[-samples:]

    f["peer_libvirt_snapshot_ms"] = median(lv["snapshot"])
    f["peer_libvirt_commit_pivot_ms"] = median(lv["commit"])
    f["peer_libvirt_take_merge_ms"] = median(lv["total"])
    f["peer_vmsnap_take_merge_ms"] = median(take_ms)
    f["peer_take_merge_ratio"] = f["peer_vmsnap_take_merge_ms"] / f["peer_libvirt_take_merge_ms"]
    for name, round_trips in alone_ms.items():
        f[f"peer_vmsnap_quiesce_unquiesce_{name}_ms"] = median(round_trips)
    if lv_frozen:
        f["peer_libvirt_frozen_ms"] = median(lv_frozen)
    for name, values in vm_frozen.items():
        if values:
            f[f"peer_vmsnap_frozen_{name}_ms"] = median(values)
            if lv_frozen:
                f[f"peer_frozen_ratio_{name}"] = median(values) / median(lv_frozen)
    if lv_hooks:
        f["peer_libvirt_hook_frozen_ms"] = median(lv_hooks)
    if len(vm_hooks) == 3 * samples:
        for k, name in enumerate(("take", "overlay_guest", "guest")):
            values = vm_hooks[k::3]
            f[f"peer_vmsnap_hook_frozen_{name}_ms"] = median(values)
            if lv_hooks and median(lv_hooks) > 0:
                f[f"peer_hook_frozen_ratio_{name}"] = median(values) / median(lv_hooks)
    return PeerResult(f)


if __name__ == "__main__":
    r = measure_peer(quick=bool(os.environ.get("QUICK", "1")))
    print(r.versions)
    print(json.dumps(r.figures, indent=2))
