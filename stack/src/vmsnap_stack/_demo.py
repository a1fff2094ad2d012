"""``vmsnap demo``: one VM snapshot across two vendors and a local disk, told step by step.

Uses the running stack when one answers, else starts one in a temporary home
(the Element and ONTAP emulators, the reference drivers, the sim agent, the
host) and stops and removes it at the end. Every step checks that it did what
it should; the exit code is 0 only when all did.

The array disks are made and their bytes written and read through the drivers'
ConformanceFixture service (``DriverClient.create_test_volume``,
``write_volume``, ``read_volume``), not with the vendors' SDKs against the
emulators: the demo then needs nothing but the drivers' gRPC addresses, which
the host lists, so it runs the same against any stack whose drivers serve the
fixture (test arrays only), knows no password, and exercises the very code
that will snapshot those volumes. Bytes written before the snapshot must be
back after the revert, and after the delete neither driver may list anything
of the VM (``ListVMSnapshots``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from vmsnap_host.cli import _output as out
from vmsnap_host.cli._progress import follow
from vmsnap_host.client import (
    Consistency,
    DriverStatus,
    GroupKind,
    Health,
    HostClient,
    Operation,
    QuiescePolicy,
    VMSnapshot,
    VMSnapshotState,
    default_address,
    vmsnap_home,
)
from vmsnap_host.client._address import stack_tls
from vmsnap_sdk import VM, ClientTLS, DriverClient, Page, VMState, Volume
from vmsnap_sdk.errors import NotFound, VMSnapError
from vmsnap_stack._supervisor import Stack, StackError
from vmsnap_stack._table import Layout

FIXTURE = "CONFORMANCE_FIXTURE"
OPERATION_TIMEOUT = 120.0
READY_TIMEOUT = 60.0
#: A real guest's first disk: big enough for ext4 with a journal.
GUEST_DISK = 16 << 20
GUEST_WRITES_TIMEOUT = 90.0
CHUNK = 1 << 20
#: --memory: how far the guest counts before the snapshot, and after it before the
#: revert (5 counts a second).
MEMORY_COUNT = 40


class StepFailed(Exception):
    """A step did not do what it should; the message says what happened instead."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise StepFailed(message)


@dataclass
class Disk:
    """A disk of the demo VM and, for array volumes, the driver that holds it."""

    volume: Volume
    driver: DriverStatus | None = None
    client: DriverClient | None = None


@dataclass
class Story:
    host: HostClient
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    disks: list[Disk] = field(default_factory=list)
    snapshot: VMSnapshot | None = None
    steps_done: int = 0
    #: A real guest (the QEMU agent) writes on vda; the counts it left.
    guest: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    #: ``--memory``: the snapshot includes the VM's RAM (disks on arrays all the same).
    memory: bool = False

    @property
    def vm_id(self) -> str:
        return f"demo-{self.tag}"

    def pattern(self, disk: Disk, what: str) -> bytes:
        return f"{what} data of {disk.volume.disk} ({self.vm_id})\n".encode().ljust(64, b".")

    async def step(self, number: int, title: str, action: Callable[[], Awaitable[str]]) -> None:
        out.console.print(f"\n[bold cyan]{number}. {title}[/]")
        try:
            detail = await action()
        except StepFailed as exc:
            out.console.print(f"   [red]✗ {exc}[/]", highlight=False)
            raise
        except VMSnapError as exc:
            out.console.print(f"   [red]✗ {exc.code.name}: {exc.message}[/]", highlight=False)
            raise StepFailed(str(exc)) from exc
        self.steps_done += 1
        out.console.print(f"   [green]✓[/] {detail}", highlight=False)

    async def run(self) -> None:
        if self.memory:
            await self.run_memory()
            return
        await self.step(1, "The stack: drivers and agent, as the host sees them", self.look)
        await self.step(2, "Define a VM with disks on two vendors and a local disk", self.define)
        await self.step(3, "Start it and write data onto its array disks", self.start)
        await self.step(4, "Take a VM snapshot", self.take)
        await self.step(5, "Change the data", self.change)
        await self.step(6, "Stop the VM (a disk-only revert needs it stopped)", self.stop)
        await self.step(7, "Revert the VM to the snapshot", self.revert)
        await self.step(8, "Delete the snapshot", self.delete)

    async def run_memory(self) -> None:
        """The memory story: RAM and disks on two arrays and a local disk, one snapshot."""
        await self.step(1, "The stack: drivers and agent, as the host sees them", self.look)
        await self.step(2, "Define a VM with disks on two vendors and a local disk", self.define)
        await self.step(3, "Start it and write data onto its array disks", self.start)
        await self.step(4, "Take a VM snapshot with its memory", self.take_memory)
        await self.step(5, "Change the data (the guest runs on)", self.change)
        await self.step(6, "Revert the running VM to the snapshot", self.revert_memory)
        await self.step(7, "Delete the snapshot", self.delete)
        await self.step(8, "Stop the VM", self.stop_at_end)

    # --- the steps ---------------------------------------------------------------

    async def look(self) -> str:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            drivers = await self.host.list_drivers()
            agents = await self.host.list_agents()
            serving = [
                d for d in drivers if d.health is Health.SERVING and FIXTURE in d.capabilities
            ]
            agent_up = any(a.health is Health.SERVING for a in agents)
            if (len(serving) >= 2 and agent_up) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        out.console.print(out.driver_table(drivers))
        out.console.print(out.agent_table(agents))
        check(agent_up, "no hypervisor agent is SERVING")
        check(
            len(serving) >= 2,
            f"the demo needs two SERVING drivers with the {FIXTURE} service; found {len(serving)}",
        )
        self.guest = any(a.hypervisor == "qemu" and a.health is Health.SERVING for a in agents)
        size = GUEST_DISK if self.guest else 1 << 20
        for driver in sorted(serving, key=lambda d: (d.order, d.name))[:2]:
            client = DriverClient.connect(
                driver.address, tls=_fixture_tls(driver.address), timeout=30
            )
            volume = await client.create_test_volume(f"demo-{self.tag}-{len(self.disks)}", size)
            disk = f"vd{'ab'[len(self.disks)]}"
            self.disks.append(Disk(Volume(disk, volume.locator, volume.size_bytes), driver, client))
            out.console.print(
                f"   {disk}: created {volume.locator} through {driver.name}'s test fixture",
                highlight=False,
            )
        local = f"file:///var/lib/vmsnap/{self.vm_id}/root.qcow2"
        self.disks.append(Disk(Volume("vdc", local, 1 << 20, "qcow2")))
        return f"{len(serving)} drivers and {len(agents)} agent(s) serving"

    async def define(self) -> str:
        name = "demo web server"
        if self.guest:
            await self._format_guest_disk()
            name += " vmsnap.writer=/dev/vda"  # the test guest's writer (kernel cmdline)
        vm = VM(
            id=self.vm_id,
            name=name,
            memory_mib=512,
            volumes=tuple(d.volume for d in self.disks),
        )
        defined = await self.host.define_vm(vm)
        out.console.print(out.vm_table([defined]))
        check(
            defined.state is VMState.STOPPED,
            f"a new VM should be STOPPED, not {defined.state.name}",
        )
        check(len(defined.volumes) == 3, f"expected 3 disks, the agent kept {len(defined.volumes)}")
        return f"VM {defined.id} defined on agent {defined.agent or '?'}"

    async def start(self) -> str:
        vm = await self.host.start_vm(self.vm_id)
        check(vm.state is VMState.RUNNING, f"the VM is {vm.state.name} after start")
        for disk in self.array_disks:
            assert disk.client is not None
            data = self.pattern(disk, "original")
            await disk.client.write_volume(disk.volume.locator, 0, data)
            check(
                await disk.client.read_volume(disk.volume.locator, 0, len(data)) == data,
                f"{disk.volume.disk}: the bytes written do not read back",
            )
        written = "RUNNING; wrote the 'original' pattern on " + ", ".join(
            d.volume.disk for d in self.array_disks
        )
        if self.guest:
            # With --memory, far enough that a rebooted guest could not count as high
            # in the seconds the revert's check takes (its count lives in its RAM).
            self.counts["start"] = await self._wait_guest_count(MEMORY_COUNT if self.memory else 0)
            written += f"; the guest's counter on vda reached {self.counts['start']}"
        return written

    @property
    def array_disks(self) -> list[Disk]:
        return [d for d in self.disks if d.client is not None]

    async def _operation(self, started: Operation, what: str) -> Operation:
        op = await follow(self.host, started, OPERATION_TIMEOUT)
        check(op.done, f"{what} still running after {OPERATION_TIMEOUT:.0f} s ({op.step})")
        check(op.error is None, f"{what} failed: {op.error}")
        return op

    async def take(self) -> str:
        for attempt in (1, 2):
            started = await self.host.create_vm_snapshot(
                self.vm_id,
                "before-upgrade",
                description="vmsnap demo",
                quiesce=QuiescePolicy.BEST_EFFORT,
            )
            op = await follow(self.host, started, OPERATION_TIMEOUT)
            if attempt == 1 and op.error is not None and op.error.reason == "HOST_RESTARTED":
                # The host (or the replica) running it died; it was rolled back, as the
                # message says: take it again, as a client should.
                out.console.print(f"  [yellow]note:[/] {op.error.message}")
                continue
            break
        op = await self._operation(op, "the take")
        snapshot = op.vm_snapshot or await self.host.get_vm_snapshot(op.vm_snapshot_id)
        self.snapshot = snapshot
        out.show_snapshot(snapshot)
        check(snapshot.state is VMSnapshotState.READY, f"the snapshot is {snapshot.state.name}")
        covered = sorted(disk for g in snapshot.groups for disk in g.disks)
        check(
            covered == sorted(d.volume.disk for d in self.disks),
            f"the plan should cover each disk once; it covers {covered}",
        )
        for disk in self.disks:
            group = next(g for g in snapshot.groups if disk.volume.disk in g.disks)
            if disk.driver is not None:
                check(
                    group.kind is GroupKind.DRIVER and group.owner == disk.driver.name,
                    f"{disk.volume.disk} should go to {disk.driver.name}, went to {group.owner}",
                )
            else:
                check(
                    group.kind is GroupKind.HYPERVISOR,
                    f"the local disk {disk.volume.disk} should go to the hypervisor, "
                    f"went to {group.owner}",
                )
        check(
            snapshot.freeze_start_time is not None,
            "a plan over several drivers needs a freeze, yet none was recorded",
        )
        check(
            snapshot.consistency is not Consistency.UNSPECIFIED,
            "the consistency achieved was not recorded",
        )
        return (
            f"READY in {len(snapshot.groups)} groups, {out.freeze_text(snapshot)}, "
            f"{snapshot.consistency.name} consistent"
        )

    async def take_memory(self) -> str:
        started = await self.host.create_vm_snapshot(
            self.vm_id, "with-memory", description="vmsnap demo --memory", include_memory=True
        )
        op = await self._operation(started, "the take")
        snapshot = op.vm_snapshot or await self.host.get_vm_snapshot(op.vm_snapshot_id)
        self.snapshot = snapshot
        out.show_snapshot(snapshot)
        check(snapshot.state is VMSnapshotState.READY, f"the snapshot is {snapshot.state.name}")
        check(snapshot.include_memory, "the snapshot does not include the memory")
        owners = {d.volume.disk: g for g in snapshot.groups for d in self.disks if d.volume.disk in g.disks}
        for disk in self.array_disks:
            group = owners.get(disk.volume.disk)
            check(
                group is not None and group.kind is GroupKind.DRIVER,
                f"{disk.volume.disk} should be cut by its driver while the VM is paused",
            )
        check(
            snapshot.freeze_seconds is not None,
            "the pause window (the VM paused while the arrays cut) was not recorded",
        )
        check(
            snapshot.memory_state_bytes > 0 and bool(snapshot.memory_state_location),
            "the saved RAM state is not recorded with the snapshot",
        )
        check(
            snapshot.consistency is Consistency.APPLICATION,
            f"a memory snapshot resumes every process: APPLICATION, not {snapshot.consistency.name}",
        )
        vm = await self.host.get_vm(self.vm_id)
        check(vm.state is VMState.RUNNING, f"the VM is {vm.state.name} after the take, not resumed")
        pause = (snapshot.freeze_seconds or 0.0) * 1000
        return (
            f"READY; the VM was paused {pause:.0f} ms while both arrays cut; RAM state "
            f"{snapshot.memory_state_bytes / (1 << 20):.1f} MiB at {snapshot.memory_state_location}"
        )

    async def revert_memory(self) -> str:
        assert self.snapshot is not None
        if self.guest:
            # The count the guest had reached before the revert (it keeps counting).
            # Far past the snapshot's count: its RAM count plus the few seconds the
            # check below needs (ext4 commits every 5 s) stay below it.
            self.counts["later"] = await self._wait_guest_count(
                self.counts["start"] + 4 * MEMORY_COUNT
            )
        started = await self.host.revert_vm_snapshot(self.snapshot.id)
        await self._operation(started, "the revert")
        vm = await self.host.get_vm(self.vm_id)
        check(
            vm.state is VMState.RUNNING,
            f"a memory snapshot reverts to RUNNING, the VM is {vm.state.name}",
        )
        restored = []
        for disk in self.array_disks:
            assert disk.client is not None
            data = self.pattern(disk, "original")
            got = await disk.client.read_volume(disk.volume.locator, 0, len(data))
            check(got == data, f"{disk.volume.disk} holds {got[:40]!r}…, not the original data")
            restored.append(disk.volume.disk)
        done = f"RUNNING again; original data back on {', '.join(restored)}"
        if self.guest:
            # vda as the array restored it holds the count of the snapshot instant; the
            # guest's next counts come from its RAM as saved: above that, below the count
            # before the revert. A rebooted guest would start again at 1.
            at_cut, _, _ = await self._guest_disk()
            resumed = await self._wait_guest_change(at_cut)
            check(
                self.counts["start"] <= at_cut < resumed < self.counts["later"],
                f"the guest counts {resumed} after the revert (vda held {at_cut}); from its "
                f"restored RAM it should go on from the snapshot's count, above "
                f"{self.counts['start']} and below the {self.counts['later']} it had reached",
            )
            done += (
                f"; the guest went on counting from its restored RAM: {at_cut} → {resumed} "
                f"(it had reached {self.counts['later']} before the revert)"
            )
        return done

    async def stop_at_end(self) -> str:
        vm = await self.host.stop_vm(self.vm_id, force=True)
        check(vm.state is VMState.STOPPED, f"the VM is {vm.state.name} after stop")
        return "STOPPED"

    async def change(self) -> str:
        for disk in self.array_disks:
            assert disk.client is not None
            data = self.pattern(disk, "changed")
            await disk.client.write_volume(disk.volume.locator, 0, data)
            check(
                await disk.client.read_volume(disk.volume.locator, 0, len(data)) == data,
                f"{disk.volume.disk}: the new bytes do not read back",
            )
        if self.guest:
            await asyncio.sleep(2.0)  # the guest keeps counting
            return "wrote the 'changed' pattern over the original one; the guest kept writing"
        return "wrote the 'changed' pattern over the original one"

    async def stop(self) -> str:
        vm = await self.host.stop_vm(self.vm_id)
        check(vm.state is VMState.STOPPED, f"the VM is {vm.state.name} after stop")
        if self.guest:
            count, _, _ = await self._guest_disk()
            check(count > self.counts["start"], f"the guest's counter is {count} at stop")
            self.counts["stop"] = count
            return f"STOPPED; the guest's counter on disk is {count}"
        return "STOPPED"

    async def revert(self) -> str:
        assert self.snapshot is not None
        started = await self.host.revert_vm_snapshot(self.snapshot.id)
        await self._operation(started, "the revert")
        snapshot = await self.host.get_vm_snapshot(self.snapshot.id)
        check(snapshot.state is VMSnapshotState.READY, f"the snapshot is {snapshot.state.name}")
        check(snapshot.current, "the reverted-to snapshot should be the VM's current one")
        restored = []
        for disk in self.array_disks:
            assert disk.client is not None
            data = self.pattern(disk, "original")
            got = await disk.client.read_volume(disk.volume.locator, 0, len(data))
            check(got == data, f"{disk.volume.disk} holds {got[:40]!r}…, not the original data")
            restored.append(disk.volume.disk)
        vm = await self.host.get_vm(self.vm_id)
        check(
            vm.state is VMState.STOPPED,
            f"a disk-only revert leaves the VM STOPPED, not {vm.state.name}",
        )
        done = f"original data back on {', '.join(restored)}; vdc reverted by the hypervisor"
        if self.guest:
            count, clean, report = await self._guest_disk()
            check(clean, f"e2fsck -fn finds the reverted file system of vda not clean:\n{report}")
            check(
                self.counts["start"] <= count < self.counts["stop"],
                f"the reverted counter is {count}; it should be the count at the snapshot "
                f"(between {self.counts['start']} and {self.counts['stop']})",
            )
            done += f"; vda's ext4 is clean with the snapshot-time counter {count}"
        return done

    async def delete(self) -> str:
        assert self.snapshot is not None
        started = await self.host.delete_vm_snapshot(self.snapshot.id)
        await self._operation(started, "the delete")
        try:
            state = (await self.host.get_vm_snapshot(self.snapshot.id)).state
        except NotFound:
            state = VMSnapshotState.REMOVED
        check(state is VMSnapshotState.REMOVED, f"the snapshot is {state.name} after delete")
        for disk in self.array_disks:
            assert disk.client is not None and disk.driver is not None
            left = (await disk.client.list_snapshots(Page(size=1000), vm_id=self.vm_id)).snapshots
            check(
                not left,
                f"{disk.driver.name} still holds snapshots of {self.vm_id}: "
                + ", ".join(s.vm_snapshot_id for s in left),
            )
        names = " and ".join(d.driver.name for d in self.array_disks if d.driver is not None)
        return f"REMOVED; ListVMSnapshots on {names} finds nothing of {self.vm_id}"

    # --- a real guest's disk (QEMU) ---------------------------------------------------
    # On the QEMU agent (``vmsnap demo --hypervisor qemu``) the VM is a real guest: its
    # first array disk carries an ext4 file system (made with ``mkfs.ext4`` and written
    # through the fixture) on which the guest's writer (``vmsnap.writer=/dev/vda`` in
    # the VM's name, see vmsnap_agent.qemu) counts up five times a second. The demo
    # checks that the guest wrote, that the revert brings back an earlier count on a
    # file system ``e2fsck -fn`` finds clean, and the byte patterns as on the sim.

    async def _format_guest_disk(self) -> None:
        """mkfs.ext4 locally, then the image's non-zero chunks onto vda through the fixture."""
        disk = self.array_disks[0]
        assert disk.client is not None
        data = await asyncio.to_thread(_ext4_image, disk.volume.size_bytes or GUEST_DISK)
        for offset in range(0, len(data), CHUNK):
            chunk = data[offset : offset + CHUNK]
            if chunk.strip(b"\0"):
                await disk.client.write_volume(disk.volume.locator, offset, chunk)

    async def _guest_disk(self) -> tuple[int, bool, str]:
        """vda's counter file and whether ``e2fsck -fn`` finds its file system clean."""
        disk = self.array_disks[0]
        assert disk.client is not None
        size = disk.volume.size_bytes or GUEST_DISK
        chunks = [
            await disk.client.read_volume(disk.volume.locator, offset, min(CHUNK, size - offset))
            for offset in range(0, size, CHUNK)
        ]
        return await asyncio.to_thread(_inspect_ext4, b"".join(chunks))

    async def _wait_guest_count(self, above: int) -> int:
        """Until the guest's counter, as it reached the disk, is above ``above``."""
        deadline = time.monotonic() + GUEST_WRITES_TIMEOUT
        while True:
            count, _, _ = await self._guest_disk()
            if count > above:
                return count
            check(
                time.monotonic() < deadline,
                f"the guest wrote nothing on vda within {GUEST_WRITES_TIMEOUT:.0f} s",
            )
            await asyncio.sleep(1.0)

    async def _wait_guest_change(self, old: int) -> int:
        """The first count on vda other than ``old`` (a rebooted guest's would be small)."""
        deadline = time.monotonic() + GUEST_WRITES_TIMEOUT
        while True:
            count, _, _ = await self._guest_disk()
            if count != old:
                return count
            check(
                time.monotonic() < deadline,
                f"the guest wrote nothing on vda within {GUEST_WRITES_TIMEOUT:.0f} s",
            )
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        for disk in self.array_disks:
            assert disk.client is not None
            with contextlib.suppress(VMSnapError):
                await disk.client.delete_test_volume(disk.volume.locator)
            await disk.client.close()


def _ext4_image(size: int) -> bytes:
    """The bytes of a fresh ext4 file system of ``size`` bytes (``mkfs.ext4``)."""
    with tempfile.TemporaryDirectory(prefix="vmsnap-demo-") as work:
        image = Path(work) / "disk.img"
        with open(image, "wb") as f:
            f.truncate(size)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
        return image.read_bytes()


def _inspect_ext4(data: bytes) -> tuple[int, bool, str]:
    """(the /counter file as a number, clean for ``e2fsck -fn``, its report) of an image.

    The counter is read after a journal replay on the copy: a file system still
    mounted in the guest keeps its recent metadata in the journal.
    """
    with tempfile.TemporaryDirectory(prefix="vmsnap-demo-") as work:
        image = Path(work) / "disk.img"
        image.write_bytes(data)
        fsck = subprocess.run(
            ["e2fsck", "-fn", str(image)], capture_output=True, text=True, check=False
        )
        subprocess.run(
            ["e2fsck", "-y", "-E", "journal_only", str(image)], capture_output=True, check=False
        )
        cat = subprocess.run(
            ["debugfs", "-R", "cat /counter", str(image)],
            capture_output=True,
            text=True,
            check=False,
        )
    text = cat.stdout.strip()
    return (int(text) if text.isdigit() else 0), fsck.returncode == 0, fsck.stdout


def _fixture_tls(address: str) -> ClientTLS | None:
    """A driver of the local stack on mutual TLS is reached with the CLI's certificate."""
    path = Path(address.removeprefix("unix://"))
    if address.startswith("unix://") and path.parent == vmsnap_home() / "run":
        return stack_tls(path.stem)
    return None


def run_demo(address: str | None, hypervisor: str, memory: bool = False) -> int:
    """The exit code of ``vmsnap demo``."""
    try:
        return asyncio.run(_demo(address, hypervisor, memory))
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Interrupted: the stack the demo started was stopped on the way out.
        out.errors.print("demo interrupted")
        return 130


async def _demo(address: str | None, hypervisor: str, memory: bool = False) -> int:
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    target = address or default_address()
    async with HostClient.connect(address) as probe:
        running = await probe.serving(timeout=2.0)
    stack: Stack | None = None
    home: Path | None = None
    if not running:
        if address:
            out.errors.print(f"[red]error:[/] UNAVAILABLE: no vmsnap host answers at {address}")
            return 5  # the CLI's exit code for unavailable (_common.Exit)
        home = Path(tempfile.mkdtemp(prefix="vmsnap-demo-", dir="/tmp"))
        out.console.print(f"No vmsnap stack answers at {target}: starting one in {home} …")
        try:
            stack = Stack(
                Layout(home),
                hypervisor,
                on_event=lambda m: out.console.print(f"[dim]{m}[/]"),
                durable=False,  # a throw-away home: the emulators need not fsync
            )
            await stack.start()
        except ValueError as exc:
            shutil.rmtree(home, ignore_errors=True)
            out.errors.print(f"[red]error:[/] {exc}", highlight=False)
            return 2
        except StackError as exc:
            out.errors.print(f"[red]error:[/] {exc}", highlight=False)
            out.console.print(f"the demo stack's logs are kept in {home / 'logs'}")
            return 1
        target = stack.host_address
    else:
        out.console.print(f"Using the vmsnap stack at {target}")
    ok = False
    try:
        async with HostClient.connect(address if stack is None else target) as host:
            story = Story(host, memory=memory)
            try:
                await story.run()
                ok = True
            except StepFailed:
                pass
            finally:
                if not ok and story.guest:
                    # A real guest outlives its agent: never leave it running.
                    with contextlib.suppress(VMSnapError):
                        await host.stop_vm(story.vm_id, force=True)
                await story.close()
    finally:
        if stack is not None:
            await stack.stop()
            if ok and home is not None:
                shutil.rmtree(home, ignore_errors=True)
            elif home is not None:
                out.console.print(f"the demo stack's logs are kept in {home / 'logs'}")
    if ok:
        out.console.print(
            f"\n[bold green]demo passed:[/] all {story.steps_done} steps did what they should"
        )
        return 0
    out.console.print(f"\n[bold red]demo failed[/] after {story.steps_done} good steps")
    return 1
