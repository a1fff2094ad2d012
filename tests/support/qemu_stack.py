"""The whole vmsnap stack on a real hypervisor, as separate processes.

Element and ONTAP emulators (Element volumes exported over NBD), the two
reference drivers (``vmsnap-driver-solidfire``, ``vmsnap-driver-netapp``) on
them, ``vmsnap-agent --hypervisor qemu`` with a locator map that reaches both
arrays' disks (and ``file://`` local images), and ``vmsnap-host`` listing them.
The tests (``tests/e2e_qemu``) and the benchmark (``bench/qemu.py``) drive it
through the host's public API only; the helpers here that look at bytes
(volumes, export files, the guest through qemu-ga) are for checking results.

Every process runs in its own process group and is stopped by :meth:`stop`;
VMs still running then are force-stopped (and SIGKILLed as a backstop), any
frozen one thawed first, so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.procs import Proc, wait_serving
from vmsnap_agent.qemu import GuestImage, QemuHypervisor, build_guest_image
from vmsnap_agent.qemu.errors import QemuAgentError
from vmsnap_agent.qemu.process import VmPaths, running_pid
from vmsnap_emulators.testing import EmulatorProcess, start_emulator
from vmsnap_sdk import VM, Volume

MiB = 1 << 20
DISK_SIZE = 32 * MiB
PASSWORD = "e2e-secret"

HOST_CONFIG = """
[host]
quiesce_lease_seconds = {lease}
# Takes are capped inside the freeze lease by the host anyway; reverts are not.
take_timeout_seconds = {take_timeout}
call_timeout_seconds = 60
health_interval_seconds = {health}
reconcile_interval_seconds = {reconcile}

[[drivers]]
address = "{solidfire}"
order = 0

[[drivers]]
address = "{netapp}"
order = 1

[[agents]]
address = "{agent}"
"""


@dataclass(frozen=True)
class StackOptions:
    #: The host's freeze lease (the agent thaws by itself when it runs out).
    lease_seconds: float = 30.0
    #: Seconds each ONTAP job stays queued then running: stretches a take's freeze.
    ontap_job_delay: float = 0.0
    #: How long a silent qemu-ga is waited for.
    guest_agent_timeout: float = 2.0
    #: The agent closes an unused qemu-ga connection after this long (None: kept
    #: open, the agent's default): tests reach the guest through qemu-ga beside it.
    guest_agent_idle_close: float | None = 1.0
    #: The host's health checks and reconcile passes: quick for tests (orphans found
    #: within a second); the bench sets the host's defaults (5 s and 10 s), the
    #: background calls a deployment makes beside its takes.
    health_interval: float = 0.5
    reconcile_interval: float = 1.0


class QemuStack:
    """Start with :meth:`start` (or ``with QemuStack(...) as stack``); stop with :meth:`stop`."""

    def __init__(self, work: Path | None = None, options: StackOptions | None = None) -> None:
        # Short: unix socket paths are limited to 107 bytes.
        self.work = work or Path(tempfile.mkdtemp(prefix="vse-", dir="/tmp"))
        self._own_work = work is None
        self.options = options or StackOptions()
        self.element: EmulatorProcess | None = None
        self.ontap: EmulatorProcess | None = None
        self.procs: dict[str, Proc] = {}
        self.guest: GuestImage | None = None

    # --- addresses and names ---------------------------------------------------------------

    def address(self, name: str) -> str:
        return f"unix://{self.work}/{name}.sock"

    @property
    def host_address(self) -> str:
        return self.address("host")

    @property
    def agent_state(self) -> Path:
        return self.work / "agent"

    @property
    def cluster(self) -> str:
        assert self.element is not None
        return str(self.element.info["cluster"])

    @property
    def svm(self) -> str:
        assert self.ontap is not None
        return str(self.ontap.info["svm"])

    @property
    def ontap_export(self) -> Path:
        """The ONTAP SVM's export directory (what a hypervisor mounts over NFS)."""
        assert self.ontap is not None
        return Path(self.ontap.info["export_dir"])

    @property
    def nbd_url(self) -> str:
        assert self.element is not None
        return str(self.element.info["nbd"]["url"])

    def locator_map(self) -> list[str]:
        return [
            f"element://{self.cluster}/={self.nbd_url}",
            f"ontap://{self.svm}/={self.ontap_export}/",
        ]

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> QemuStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self.guest = build_guest_image()  # cached; the agent process finds the same
            (self.work / "password").write_text(PASSWORD)
            self.element = start_emulator(
                "element",
                self.work / "element",
                password=PASSWORD,
                extra_args=["--nbd-listen", "127.0.0.1:0"],
                durable=False,
            )
            ontap_args = ["--job-delay", str(self.options.ontap_job_delay)]
            self.ontap = start_emulator(
                "ontap",
                self.work / "ontap",
                password=PASSWORD,
                extra_args=ontap_args,
                durable=False,
            )
            self.start_driver("solidfire", self.element)
            self.start_driver("netapp", self.ontap, "--job-poll-interval", "0.05")
            self.start_agent()
            self.start_host()
        except BaseException:
            self.stop()
            raise

    def _run(self, name: str, args: list[str], address: str) -> Proc:
        old = self.procs.pop(name, None)
        if old is not None:
            old.stop(5)
        Path(address.removeprefix("unix://")).unlink(missing_ok=True)
        proc = Proc([sys.executable, *args], self.work / f"{name}.log")
        self.procs[name] = proc
        try:
            wait_serving(address, timeout=60)
        except TimeoutError:
            raise RuntimeError(f"{name} did not start:\n{proc.output()[-3000:]}") from None
        return proc

    def start_driver(self, vendor: str, emu: EmulatorProcess, *extra: str) -> None:
        self._run(
            vendor,
            [
                "-m",
                f"vmsnap_driver_{vendor}",
                "--listen",
                self.address(vendor),
                # A host name: the Element SDK verifies TLS for names only.
                "--url",
                f"https://localhost:{emu.port}",
                "--user",
                emu.user,
                "--password-file",
                str(self.work / "password"),
                "--ca-file",
                emu.cert,
                *extra,
            ],
            self.address(vendor),
        )

    def start_agent(self) -> None:
        maps = [arg for m in self.locator_map() for arg in ("--map", m)]
        self._run(
            "agent",
            [
                "-m",
                "vmsnap_agent.cli",
                "--hypervisor",
                "qemu",
                "--listen",
                self.address("agent"),
                "--state",
                str(self.agent_state),
                "--name",
                "qemu-e2e",
                "--guest-agent-timeout",
                str(self.options.guest_agent_timeout),
                *(
                    ["--guest-agent-idle-close", str(self.options.guest_agent_idle_close)]
                    if self.options.guest_agent_idle_close is not None
                    else []
                ),
                *maps,
            ],
            self.address("agent"),
        )

    def start_host(self) -> None:
        config = self.work / "host.toml"
        config.write_text(
            HOST_CONFIG.format(
                lease=self.options.lease_seconds,
                take_timeout=60,
                health=self.options.health_interval,
                reconcile=self.options.reconcile_interval,
                solidfire=self.address("solidfire"),
                netapp=self.address("netapp"),
                agent=self.address("agent"),
            )
        )
        self._run(
            "host",
            [
                "-m",
                "vmsnap_host",
                "--listen",
                self.host_address,
                "--db",
                str(self.work / "host.db"),
                "--config",
                str(config),
                "--instance-id",
                "e2e-host",
            ],
            self.host_address,
        )

    def crash_element(self) -> None:
        """SIGKILL the Element emulator and start it again on the same ports (NBD too)."""
        assert self.element is not None
        ports = (self.element.port, int(self.element.info["nbd"]["port"]))
        self.element.kill()
        args = self.element.extra_args
        args[args.index("--nbd-listen") + 1] = f"127.0.0.1:{ports[1]}"
        self.element.start(port=ports[0])

    def kill(self, name: str) -> None:
        """SIGKILL one process (``host``, ``agent``, ``solidfire``, ``netapp``)."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.stop()

    def stop(self) -> None:
        for name in ("host", "agent", "netapp", "solidfire"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                proc.stop(10)
        try:
            if self.agent_state.exists():
                asyncio.run(self._stop_vms())
        finally:
            self.kill_leftover_vms()
            for emu in (self.ontap, self.element):
                if emu is not None:
                    with contextlib.suppress(Exception):
                        emu.stop()
            self.ontap = self.element = None
            if self._own_work:
                shutil.rmtree(self.work, ignore_errors=True)

    async def _stop_vms(self) -> None:
        """Thaw and force-stop whatever VM the tests left (the agent process is gone)."""
        async with QemuHypervisor(self.agent_state, guest=self.guest) as hv:
            for vm in await hv.list_vms():
                with contextlib.suppress(Exception):
                    if vm.quiesce_token:
                        await asyncio.wait_for(hv.unquiesce(vm.quiesce_token), 60)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(hv.stop_vm(vm.vm_id, force=True), 60)

    def kill_leftover_vms(self) -> None:
        for vm_dir in (self.agent_state / "vms").glob("*"):
            pid = running_pid(VmPaths.for_vm(self.agent_state, vm_dir.name))
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[str]:
        """What a finished run must not leave: QEMU processes, overlays, sockets of VMs."""
        found = []
        for vm_dir in (self.agent_state / "vms").glob("*"):
            paths = VmPaths.for_vm(self.agent_state, vm_dir.name)
            if running_pid(paths) is not None:
                found.append(f"QEMU of {vm_dir.name} still runs")
            found += [f"overlay {p}" for p in paths.overlays.glob("*")]
        run = self.agent_state / "run"
        found += [f"socket {p}" for p in run.rglob("*") if p.is_socket()] if run.exists() else []
        return found

    # --- arrays: make disks, read bytes ------------------------------------------------------

    def element_rpc(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.element is not None
        body = json.dumps({"method": method, "params": params, "id": 1}).encode()
        _, data = self.element.request("POST", "/json-rpc/12.3", body)
        reply: dict[str, Any] = json.loads(data)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply["result"]
        return result

    def element_volume(self, name: str, size: int, *, ext4_from: Path | None = None) -> str:
        """A new Element volume (its locator); ``ext4_from`` copies an image in over NBD."""
        try:
            account = self.element_rpc("GetAccountByName", {"username": "e2e"})["account"]
        except RuntimeError:
            account = self.element_rpc("AddAccount", {"username": "e2e"})
        volume = self.element_rpc(
            "CreateVolume",
            {
                "name": name,
                "accountID": account["accountID"],
                "totalSize": size,
                "enable512e": True,
            },
        )
        volume_id = int(volume["volumeID"])
        if ext4_from is not None:
            subprocess.run(
                [
                    "qemu-img",
                    "convert",
                    "-n",
                    "-f",
                    "raw",
                    "-O",
                    "raw",
                    str(ext4_from),
                    f"{self.nbd_url}{volume_id}",
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
        return f"element://{self.cluster}/{volume_id}"

    def element_image(self, locator: str, dest: Path) -> Path:
        """Copy an Element volume's bytes to a local raw file (over NBD)."""
        volume_id = locator.rsplit("/", 1)[1]
        subprocess.run(
            [
                "qemu-img",
                "convert",
                "-f",
                "raw",
                "-O",
                "raw",
                f"{self.nbd_url}{volume_id}",
                str(dest),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        return dest

    def ontap_volume(self, name: str, size: int = 64 * MiB) -> Path:
        """A new ONTAP volume: its directory in the export."""
        assert self.ontap is not None
        body = json.dumps({"name": name, "svm": {"name": self.svm}, "size": size}).encode()
        status, data = self.ontap.request(
            "POST",
            "/api/storage/volumes?return_timeout=60",
            body,
            headers={"Content-Type": "application/json"},
        )
        if status >= 300:
            raise RuntimeError(f"ONTAP volume {name}: {status} {data!r}")
        path = self.ontap_export / name
        deadline = time.monotonic() + 60
        while not path.is_dir():
            if time.monotonic() > deadline:
                raise RuntimeError(f"ONTAP volume {name} has no directory {path}")
            time.sleep(0.05)
        return path

    def ontap_locator(self, path: Path) -> str:
        return f"ontap://{self.svm}/{path.relative_to(self.ontap_export)}"

    def probe(self) -> QemuHypervisor:
        """Not opened: reaches a VM's qemu-ga socket while the agent process owns QMP."""
        # Its qemu-ga connections close after each use: QEMU serves one client at a
        # time, and the agent process keeps its own open while it works.
        return QemuHypervisor(self.agent_state, guest=self.guest, guest_agent_idle_close=0)

    def frozen_token(self, vm_id: str) -> str | None:
        """The agent's active quiesce of the VM, from its state dir."""
        path = VmPaths.for_vm(self.agent_state, vm_id).quiesce
        try:
            return str(json.loads(path.read_text())["token"])
        except (OSError, ValueError, KeyError):
            return None


def make_ext4(path: Path, size: int, *, label: str = "") -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    args = ["mkfs.ext4", "-q", "-F"]
    if label:
        args += ["-L", label]
    subprocess.run([*args, str(path)], check=True, capture_output=True)
    return path


def fsck(image: Path) -> tuple[bool, str]:
    """``e2fsck -fn``: consistent as it is, without journal replay?"""
    done = subprocess.run(
        ["e2fsck", "-fn", str(image)], capture_output=True, text=True, check=False
    )
    return done.returncode == 0, done.stdout + done.stderr


def replay_and_fsck(image: Path) -> tuple[bool, str]:
    """What a crash-consistent image needs: ``e2fsck -fy`` (journal replay), then ``-fn``."""
    fix = subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, text=True, check=False)
    ok, out = fsck(image)
    return ok, fix.stdout + out


def read_ext4_file_bytes(image: Path, name: str) -> bytes:
    """A file's bytes inside an ext4 image (empty when it is not there)."""
    done = subprocess.run(
        ["debugfs", "-R", f"cat /{name}", str(image)], capture_output=True, check=False
    )
    return done.stdout


def read_ext4_file(image: Path, name: str) -> str:
    """A file's content inside an ext4 image (``debugfs``; no mount needed)."""
    done = subprocess.run(
        ["debugfs", "-R", f"cat /{name}", str(image)], capture_output=True, text=True, check=False
    )
    return done.stdout


@dataclass
class Disks:
    element: str  # locator
    ontap: Path  # the image file in the ONTAP export
    local: Path  # a qcow2 image the hypervisor snapshots natively


def three_disks(stack: QemuStack, tag: str) -> Disks:
    """An ext4 Element volume, an ext4 file in an ONTAP volume, a local qcow2 file."""
    seed = make_ext4(stack.work / f"{tag}-seed.img", DISK_SIZE)
    element = stack.element_volume(f"{tag}-vda", DISK_SIZE, ext4_from=seed)
    seed.unlink()
    datastore = stack.ontap_volume(f"ds_{tag}".replace("-", "_"))
    (datastore / tag).mkdir()
    ontap = make_ext4(datastore / tag / "vdb.img", DISK_SIZE)
    return Disks(element, ontap, stack.work / f"{tag}-vdc.qcow2")


def vm_of(stack: QemuStack, vm_id: str, disks: Disks, *flags: str) -> VM:
    """The VM definition; ``flags`` (``vmsnap.writer=/dev/vda``, ...) ride in the name."""
    return VM(
        id=vm_id,
        name=" ".join((vm_id, *flags)),
        memory_mib=256,
        volumes=(
            Volume("vda", disks.element, DISK_SIZE),
            Volume("vdb", stack.ontap_locator(disks.ontap), DISK_SIZE),
            Volume("vdc", f"file://{disks.local}", DISK_SIZE, "qcow2"),
        ),
    )


async def guest_sh(stack: QemuStack, vm_id: str, script: str, timeout: float = 30) -> str:
    """Run a shell script in the guest through qemu-ga; its stdout."""
    async with stack.probe().guest_agent(vm_id) as ga:
        code, out, err = await ga.exec_command("/bin/sh", ["-c", script], timeout=timeout)
    assert code == 0, f"{script!r} exited {code}: {err.decode(errors='replace')}"
    return out.decode(errors="replace")


async def wait_guest(stack: QemuStack, vm_id: str, timeout: float = 90) -> None:
    """Until qemu-ga answers (the guest booted)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                await guest_sh(stack, vm_id, "true")
                return
            except (QemuAgentError, OSError, AssertionError):
                pass
            await asyncio.sleep(0.3)
