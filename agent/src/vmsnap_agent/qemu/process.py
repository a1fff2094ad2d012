"""The qemu-system-x86_64 process of a VM: command line, start, liveness, kill.

VMs run daemonized (``-daemonize``) so that they outlive the agent process: an
agent restart re-attaches through the pidfile and the QMP socket, it does not
reboot the guests. Every path the VM uses lives in its own directory under the
agent's state dir (see :class:`VmPaths`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidSpec, VmStateError
from .guest_image import GuestImage
from .model import DiskSpec, VmSpec, parse_nbd_url

QEMU_BINARY = "qemu-system-x86_64"
# sun_path is 108 bytes including the NUL; QEMU refuses longer socket paths.
_MAX_SOCKET_PATH = 107
GUEST_AGENT_PORT = "org.qemu.guest_agent.0"


def qemu_binary() -> str | None:
    return shutil.which(os.environ.get("VMSNAP_QEMU_BINARY", QEMU_BINARY))


def accelerator() -> str:
    """TCG unless VMSNAP_QEMU_ACCEL says otherwise.

    Not "kvm when /dev/kvm exists": nested or sandboxed hosts expose a /dev/kvm
    whose guests hang or abort (seen on the build machines), while TCG always
    works. Production hosts set VMSNAP_QEMU_ACCEL=kvm (or "kvm:tcg").
    """
    return os.environ.get("VMSNAP_QEMU_ACCEL", "tcg")


@dataclass(frozen=True)
class VmPaths:
    root: Path
    # The sockets live apart, under a short hashed name: unix socket paths are
    # limited to 107 bytes and VM ids may have 128 characters.
    run: Path

    @classmethod
    def for_vm(cls, state_dir: Path, vm_id: str) -> VmPaths:
        digest = hashlib.sha256(vm_id.encode()).hexdigest()[:16]
        return cls(root=state_dir / "vms" / vm_id, run=state_dir / "run" / digest)

    @property
    def spec(self) -> Path:
        return self.root / "vm.json"

    @property
    def quiesce(self) -> Path:
        return self.root / "quiesce.json"

    @property
    def qmp(self) -> Path:
        return self.run / "qmp.sock"

    @property
    def qga(self) -> Path:
        return self.run / "qga.sock"

    @property
    def pidfile(self) -> Path:
        return self.root / "qemu.pid"

    @property
    def console(self) -> Path:
        return self.root / "console.log"

    @property
    def clean_stop(self) -> Path:
        return self.root / "clean-stop"

    @property
    def overlays(self) -> Path:
        return self.root / "overlays"

    @property
    def spares(self) -> Path:
        """Overlay files made ahead of a quiesce (spares.py); same file system as
        ``overlays``, where a quiesce renames them."""
        return self.root / "spares"

    def check_socket_lengths(self) -> None:
        for p in (self.qmp, self.qga):
            if len(str(p)) > _MAX_SOCKET_PATH:
                raise InvalidSpec(f"state dir too deep for a unix socket path: {p}")


def node_key(disk: str) -> str:
    """The disk's name as it appears in QEMU ids: node names have at most 31 chars,
    so long names (the contract allows 63) are shortened with a hash."""
    if len(disk) <= 24:
        return disk
    return f"{disk[:15]}-{hashlib.sha256(disk.encode()).hexdigest()[:8]}"


def format_node(disk: str) -> str:
    """Node name of the disk's format layer as started (the base of any overlay)."""
    return f"d-{node_key(disk)}"


def overlay_node(disk: str) -> str:
    return f"ov-{node_key(disk)}"


def device_id(disk: str) -> str:
    return f"vd-{node_key(disk)}"


#: Seconds QEMU holds a disk's requests while it reconnects to a dropped NBD server.
NBD_RECONNECT_DELAY = 30


def blockdev_options(disk: DiskSpec) -> dict[str, Any]:
    """-blockdev options: a named format node over a file or NBD protocol node."""
    proto: dict[str, Any]
    if disk.is_nbd:
        src = parse_nbd_url(disk.path)
        server: dict[str, Any] = (
            {"type": "unix", "path": src.socket}
            if src.socket
            else {"type": "inet", "host": src.host, "port": str(src.port)}
        )
        proto = {
            "driver": "nbd",
            "server": server,
            "export": src.export,
            # An array link that drops (a target restarting) pauses the guest's I/O
            # while QEMU reconnects, instead of failing it at once.
            "reconnect-delay": NBD_RECONNECT_DELAY,
        }
    else:
        proto = {"driver": "file", "filename": disk.path}
    proto["node-name"] = f"{format_node(disk.name)}-p"
    return {
        "driver": str(disk.format),
        "node-name": format_node(disk.name),
        "read-only": disk.read_only,
        "file": proto,
    }


def build_argv(
    spec: VmSpec, paths: VmPaths, guest: GuestImage | None, loadvm: str | None
) -> list[str]:
    """The command line; ``guest`` is the test guest to boot (None: boot the first disk)."""
    binary = qemu_binary()
    if binary is None:
        raise VmStateError(
            f"{QEMU_BINARY} is not installed (apt-get install qemu-system-x86)",
            reason="QEMU_MISSING",
        )
    argv = [
        binary,
        "-name",
        spec.vm_id,
        "-nodefaults",
        "-nographic",
        "-machine",
        f"q35,accel={accelerator()}",
        "-m",
        str(spec.memory_mib),
        "-smp",
        str(spec.vcpus),
        "-serial",
        f"file:{paths.console}",
        "-qmp",
        f"unix:{paths.qmp},server=on,wait=off",
        "-pidfile",
        str(paths.pidfile),
        "-daemonize",
    ]
    if guest is not None:
        cmdline = f"{guest.base_cmdline} {spec.kernel_args}".strip()
        argv += ["-kernel", str(guest.kernel), "-initrd", str(guest.initrd), "-append", cmdline]
        # The test guest never reboots on purpose: a panic ends the process.
        argv += ["-no-reboot"]
    for i, disk in enumerate(spec.disks):
        device = f"virtio-blk-pci,drive={format_node(disk.name)},id={device_id(disk.name)}"
        if guest is None and i == 0:
            device += ",bootindex=0"
        argv += ["-blockdev", json.dumps(blockdev_options(disk)), "-device", device]
    if spec.guest_agent:
        argv += [
            "-chardev",
            f"socket,id=qga0,path={paths.qga},server=on,wait=off",
            "-device",
            "virtio-serial-pci,id=vser0",
            "-device",
            f"virtserialport,chardev=qga0,name={GUEST_AGENT_PORT}",
        ]
    if loadvm:
        argv += ["-loadvm", loadvm]
    return argv


async def launch(argv: list[str], paths: VmPaths) -> int:
    """Start QEMU; returns once it has daemonized (sockets listening) with its pid."""
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.run.mkdir(parents=True, exist_ok=True)
    for stale in (paths.qmp, paths.qga, paths.pidfile):
        stale.unlink(missing_ok=True)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise VmStateError(
            f"qemu failed to start ({proc.returncode}): {(err or out).decode(errors='replace')}",
            reason="QEMU_START_FAILED",
        )
    pid = read_pid(paths)
    if pid is None:
        raise VmStateError("qemu started but wrote no pidfile", reason="QEMU_START_FAILED")
    return pid


def read_pid(paths: VmPaths) -> int | None:
    try:
        return int(paths.pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _thread_states(pid: int) -> list[bytes]:
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            # the state follows the parenthesised comm, which may contain spaces
            states.append(stat.read_bytes().rsplit(b")", 1)[1].split()[0])
        except (OSError, IndexError):
            continue
    return states


def is_alive(pid: int, paths: VmPaths) -> bool:
    """True when ``pid`` is a live QEMU of this VM (guards against pid reuse, zombies).

    Looks at every thread: a killed QEMU's main thread turns zombie while its
    other threads are still exiting, and until they are gone the image locks are
    still held.
    """
    if not any(state not in (b"Z", b"X") for state in _thread_states(pid)):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if cmdline:
        return str(paths.qmp).encode() in cmdline
    # An exiting process (zombie main thread) shows an empty cmdline: still ours,
    # unless the pid was reused by a kernel thread (empty cmdline too, parent kthreadd).
    try:
        ppid = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1]
    except (OSError, IndexError):
        return False
    return ppid != b"2"


def running_pid(paths: VmPaths) -> int | None:
    pid = read_pid(paths)
    return pid if pid is not None and is_alive(pid, paths) else None


async def wait_exit(pid: int, paths: VmPaths, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while is_alive(pid, paths):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def kill(pid: int, paths: VmPaths) -> None:
    """SIGTERM, then SIGKILL: the last resort when QMP ``quit`` did not work."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        if not is_alive(pid, paths):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if await wait_exit(pid, paths, grace):
            return


def cleanup_runtime_files(paths: VmPaths) -> None:
    for p in (paths.qmp, paths.qga, paths.pidfile):
        p.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        paths.run.rmdir()
