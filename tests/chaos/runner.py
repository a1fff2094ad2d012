"""One chaos run: start the stack, run the workload under kills, then check the invariants.

The end, in order: every process runs again; operations settle (nothing
unfinished, nothing transitional); no VM is frozen; every acknowledged READY
snapshot is still READY and a revert to each restores every disk; one reconcile
pass (the host's Reconcile RPC when its client has one, else a few reconcile
intervals); no array or agent object without a live catalog record. Freezes are
also sampled during the run, and every revert that did not succeed is checked
for one side right after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from tests.chaos import journals
from tests.chaos.checks import (
    TRANSITIONAL,
    StoredObject,
    Violation,
    check_not_running,
    check_one_side,
    check_orphans,
    check_restored,
    check_revert_failed,
    check_settled,
    check_still_ready,
    compared,
    dedupe,
    live_ids,
    plan_text,
)
from tests.chaos.disks import Disk, DiskIO, local_path
from tests.chaos.freezes import FreezeMonitor, FreezeSource
from tests.chaos.killer import Killer, plan_kills, targets_of
from tests.chaos.knobs import DEFAULT, Knobs
from tests.chaos.processes import Cluster, StartFailed
from tests.chaos.report import Report
from tests.chaos.workload import ControlPlane, OpRecord, Outcome, Progress, VMModel, Workload
from vmsnap_host.client import Health, HostClient, Operation, VMSnapshot, VMSnapshotState
from vmsnap_sdk import VM, AgentClient, DriverClient, Page
from vmsnap_sdk.errors import TransientError, VMSnapError
from vmsnap_stack import Layout

#: The stack's driver components and the disk each VM gets on them.
ARRAY_DISKS = (("vda", "element", "driver-element"), ("vdb", "ontap", "driver-ontap"))
LOCAL_DISK = "vdc"

_T = TypeVar("_T")


@dataclass(frozen=True)
class Options:
    ops: int
    kills: int
    seed: int
    hypervisor: str = "sim"
    #: Host replicas (more than one needs db="postgres") and the catalog they share.
    replicas: int = 1
    db: str = "sqlite"
    home: Path | None = None
    #: Keep the home (logs, state) even when the run passed.
    keep: bool = False
    knobs: Knobs = field(default=DEFAULT)


class HarnessError(RuntimeError):
    """The harness could not do its job (no verdict on the host)."""


async def run(options: Options, command: str) -> Report:
    knobs = options.knobs
    report = Report(
        seed=options.seed,
        ops=options.ops,
        kills=options.kills,
        vms=knobs.vms,
        hypervisor=options.hypervisor,
        command=command,
        knobs=knobs.as_json(),
    )
    home = options.home or Path(tempfile.mkdtemp(prefix="vmsnap-chaos-", dir="/tmp"))
    if options.db == "postgres":
        home.chmod(0o711)  # as root the stack's PostgreSQL runs as postgres, which must get in
    report.home = str(home)
    started = time.monotonic()
    cluster = Cluster(
        Layout(home), knobs, options.hypervisor, replicas=options.replicas, db=options.db
    )
    try:
        limit = knobs.run_seconds(options.ops) + 3 * knobs.settle_seconds + 4 * knobs.start_timeout
        await asyncio.wait_for(_run(options, cluster, report), limit)
    except TimeoutError:
        report.error = "the run did not finish within its overall limit; see the logs"
    except (HarnessError, StartFailed) as exc:
        report.error = str(exc)
    except VMSnapError as exc:
        report.error = f"the stack answered {exc.code.name} where the harness cannot go on: {exc}"
    finally:
        report.seconds = time.monotonic() - started
        await cluster.stop()
    if report.ok and not options.keep and options.home is None:
        shutil.rmtree(home, ignore_errors=True)
        report.home = ""
    return report


async def _run(options: Options, cluster: Cluster, report: Report) -> None:
    knobs = options.knobs
    await cluster.start()
    host = HostClient.connect(cluster.host_address, timeout=knobs.rpc_timeout)
    io = DiskIO({d.name: d.component.address for d in cluster.drivers}, knobs)
    sim_state = cluster.layout.agent_state if options.hypervisor == "sim" else None
    source = FreezeSource(cluster.agent, sim_state)
    ended: dict[str, float] = {}
    monitor = FreezeMonitor(source, knobs, ended)
    background: list[asyncio.Task[None]] = []
    try:
        await _wait_host_sees_all(host, cluster, knobs.start_timeout)
        vms = await _define_vms(options, cluster, host, io)
        progress = Progress()
        tag = f"chaos{options.seed}-{random.Random().getrandbits(24):06x}"
        workload = Workload(tag, vms, host, io, knobs, progress, ended)
        killer = Killer(
            cluster,
            plan_kills(options.seed, options.kills, options.ops, targets_of(cluster), knobs),
            progress,
            source,
            knobs,
        )
        background = [asyncio.create_task(monitor.run()), asyncio.create_task(killer.run())]
        try:
            await asyncio.wait_for(workload.run(), knobs.run_seconds(options.ops))
        except TimeoutError:
            report.notes.append(
                f"the workload did not finish within {knobs.run_seconds(options.ops):.0f} s; "
                "its operations in flight were abandoned"
            )
        report.op_log = workload.log
        report.kill_log = killer.log
        background[1].cancel()
        await killer.wait_restarts()
        report.notes += killer.notes
        report.notes += [f"request_id replay: {m}" for m in workload.control.replay_mismatches]
        missed = len(killer.plan) - len(killer.log)
        if missed:
            report.notes.append(f"{missed} planned kills did not happen (the workload ended first)")
        await _finish(options, cluster, host, io, workload, monitor, report)
        report.local_disk = "checked" if workload.local_checked else "not checkable"
        report.compared = workload.compared
        report.freeze_source = source.via
    finally:
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(BaseException):
                await task
        await io.close()
        await source.close()
        await host.close()


async def _wait_host_sees_all(host: HostClient, cluster: Cluster, timeout: float) -> None:
    """Until the host reports every driver and the agent SERVING."""
    deadline = time.monotonic() + timeout
    want = len(cluster.drivers)
    while True:
        try:
            drivers = await host.list_drivers()
            agents = await host.list_agents()
        except VMSnapError:
            drivers, agents = [], []
        serving = [d for d in drivers if d.health is Health.SERVING]
        if len(serving) >= want and any(a.health is Health.SERVING for a in agents):
            return
        if time.monotonic() > deadline:
            raise HarnessError(
                f"the host sees {len(serving)}/{want} drivers and "
                f"{sum(a.health is Health.SERVING for a in agents)} agents SERVING after "
                f"{timeout:.0f} s"
            )
        await asyncio.sleep(0.3)


async def _define_vms(
    options: Options, cluster: Cluster, host: HostClient, io: DiskIO
) -> list[VMModel]:
    knobs = options.knobs
    per_vm = [
        options.ops // knobs.vms + (1 if i < options.ops % knobs.vms else 0)
        for i in range(knobs.vms)
    ]
    vms = []
    qemu = options.hypervisor == "qemu"
    for i in range(knobs.vms):
        vm_id = f"chaos-{i}"
        disks = []
        # The last ones are local alone when the run has more than one VM.
        local_only = knobs.vms > 1 and i >= knobs.vms - knobs.local_only_vms
        for disk, kind, driver in [] if local_only else ARRAY_DISKS:
            locator = await io.create(driver, f"{vm_id}-{disk}")
            disks.append(Disk(disk, locator, kind, driver=driver))
        local = f"file:///var/lib/vmsnap/{vm_id}/root.qcow2"
        if qemu:
            # The QEMU stack maps file:///var/lib/vmsnap/ to $HOME/disks/ (a qcow2 image).
            path = cluster.layout.home / "disks" / vm_id / "root.qcow2"
            disks.append(Disk(LOCAL_DISK, local, "local", path=path, image="qcow2"))
        else:
            path = local_path(cluster.layout.agent_state, local)
            disks.append(Disk(LOCAL_DISK, local, "local", path=path))
        vm = VM(
            id=vm_id,
            name=vm_id,
            memory_mib=256,
            volumes=tuple(d.volume(knobs.disk_bytes) for d in disks),
        )
        await host.define_vm(vm)
        if not qemu:
            await host.start_vm(vm_id)
        model = VMModel(vm_id, disks, random.Random(f"vm-{options.seed}-{i}"), per_vm[i])
        model.stay_stopped, model.running = qemu, not qemu
        vms.append(model)
    return vms


# --- the end -----------------------------------------------------------------------------


async def _finish(
    options: Options,
    cluster: Cluster,
    host: HostClient,
    io: DiskIO,
    workload: Workload,
    monitor: FreezeMonitor,
    report: Report,
) -> None:
    knobs = options.knobs
    restarted = await cluster.ensure_all_up()
    if restarted:
        report.notes.append(f"restarted at the end: {', '.join(restarted)}")
    try:
        await _wait_host_sees_all(host, cluster, knobs.start_timeout)
    except HarnessError as exc:
        # Every process serves, yet the host does not see it: a finding in itself; the
        # checks go on (and may fail because of it).
        report.notes.append(f"at the end, with every process serving: {exc}")
    violations: list[Violation] = list(workload.violations)

    # Nothing unfinished, nothing transitional.
    running, snapshots = await _settle(host, knobs.settle_seconds)
    violations += check_settled(running, snapshots)

    # No freeze once nothing runs (and every one the monitor caught during the run).
    await monitor.sample(idle=not running)

    # Acknowledged READY snapshots: still READY, and each restores its disks.
    acknowledged = {s: vm for vm in workload.vms for s in vm.acknowledged}
    deleted = {s for vm in workload.vms for s in vm.deleted}
    states = {s.id: s.state for s in snapshots}
    violations += check_still_ready(acknowledged, deleted, states)
    ready = {s.id: s for s in snapshots if s.state is VMSnapshotState.READY}
    results = await asyncio.gather(
        *(_revert_each(vm, ready, host, workload, knobs) for vm in workload.vms)
    )
    for records, found in results:
        report.op_log += records
        violations += found

    # The reverts just made must settle too.
    running, snapshots = await _settle(host, knobs.settle_seconds)
    seen = {v.subject for v in violations}
    violations += [v for v in check_settled(running, snapshots) if v.subject not in seen]

    # One reconcile pass, then nothing on the arrays or the agent without a live record.
    report.reconcile = await _reconcile(host, knobs)
    objects = await _stored_objects(cluster)
    snapshots = await _retry(lambda: host.all_vm_snapshots(show_removed=True), knobs)
    violations += check_orphans(objects, live_ids(snapshots))

    await monitor.sample(idle=True)
    violations += list(monitor.violations.values())

    # No array overwrote a disk while its VM was RUNNING: the arrays' overwrites
    # against the sim agent's power journal (a QEMU run keeps none).
    if options.hypervisor == "sim":
        owned = journals.owners((vm.id, vm.disks) for vm in workload.vms)
        overwrites = journals.overwritten(cluster.layout.arrays, owned)
        report.overwrites = len(overwrites)
        violations += check_not_running(
            overwrites, journals.power(cluster.layout.agent_state), owned
        )
    report.violations = dedupe(violations)


async def _settle(host: HostClient, timeout: float) -> tuple[list[Operation], list[VMSnapshot]]:
    """Wait until no operation runs and no snapshot is transitional; what was seen last."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            running = await _running_operations(host)
            snapshots = await host.all_vm_snapshots(show_removed=True)
        except TransientError:
            if time.monotonic() > deadline:
                raise HarnessError("the host did not answer while settling") from None
            await asyncio.sleep(0.5)
            continue
        busy = running or any(s.state in TRANSITIONAL for s in snapshots)
        if not busy or time.monotonic() > deadline:
            return running, snapshots
        await asyncio.sleep(0.5)


async def _running_operations(host: HostClient) -> list[Operation]:
    found: list[Operation] = []
    token = ""
    while True:
        page = await host.list_operations(only_running=True, page_token=token)
        found += page.items
        token = page.next_token
        if not token:
            return found


async def _revert_each(
    vm: VMModel,
    ready: dict[str, VMSnapshot],
    host: HostClient,
    workload: Workload,
    knobs: Knobs,
) -> tuple[list[OpRecord], list[Violation]]:
    """Revert to every acknowledged snapshot of the VM that is READY; check the bytes."""
    control = ControlPlane(host, knobs, workload.control.ended)
    records: list[OpRecord] = []
    found: list[Violation] = []
    for n, snapshot_id in enumerate(s for s in vm.live() if s in ready):
        record = OpRecord(n, vm.id, "final revert", snapshot_id=snapshot_id)
        records.append(record)
        before = await workload.read_all(vm)
        expected = vm.acknowledged[snapshot_id]
        started = time.monotonic()
        try:
            op = await control.run(
                partial(
                    host.revert_vm_snapshot,
                    snapshot_id,
                    stop_vm=True,
                    request_id=f"{workload.tag}-{vm.id}-final-{n}",
                )
            )
        except Outcome as exc:
            record.outcome, record.detail = exc.outcome, exc.detail
            found += check_revert_failed(
                snapshot_id, f"{exc.outcome}: {exc.detail}", when="at the end"
            )
            continue
        finally:
            record.seconds = round(time.monotonic() - started, 3)
        record.operation_id = op.id
        actual = await workload.read_all(vm)
        workload.compared += compared(expected, actual)
        if op.error is None:
            record.outcome = "ok"
            found += check_restored(
                snapshot_id,
                expected,
                actual,
                when=f"{op.id} at the end",
                plan=plan_text(ready[snapshot_id]),
            )
        else:
            record.outcome, record.detail = f"failed:{op.error.code.name}", op.error.message
            found += check_revert_failed(snapshot_id, str(op.error), when="at the end")
            found += check_one_side(
                f"final revert {op.id} to {snapshot_id}", before, expected, actual
            )
    return records, found


async def _reconcile(host: HostClient, knobs: Knobs) -> str:
    await asyncio.sleep(knobs.orphan_grace_seconds + 0.5)  # every leftover is past the grace
    reconcile = getattr(host, "reconcile", None)
    if callable(reconcile):
        await _retry(reconcile, knobs)
        return "host Reconcile RPC"
    wait = knobs.reconcile_passes * knobs.reconcile_interval_seconds + 1.0
    await asyncio.sleep(wait)
    return f"no Reconcile RPC in this host's client: waited {wait:.0f} s ({knobs.reconcile_passes:g} intervals)"


async def _stored_objects(cluster: Cluster) -> list[StoredObject]:
    objects: list[StoredObject] = []
    for driver in cluster.drivers:
        client = DriverClient.connect(driver.component.address, timeout=10)
        try:
            token = ""
            while True:
                page = await client.list_snapshots(Page(size=100, token=token))
                objects += [
                    StoredObject(driver.name, r.vm_snapshot_id, r.vm_id) for r in page.snapshots
                ]
                token = page.next_token
                if not token:
                    break
        finally:
            await client.close()
    agent = AgentClient.connect(cluster.agent.component.address, timeout=10)
    try:
        natives = await agent.list_native_snapshots("")
    finally:
        await agent.close()
    objects += [StoredObject("agent", n.snapshot_id, n.vm_id) for n in natives]
    return objects


async def _retry(call: Callable[[], Awaitable[_T]], knobs: Knobs) -> _T:
    """A read retried while the host or a driver restarts."""
    deadline = time.monotonic() + knobs.op_patience
    while True:
        try:
            return await call()
        except TransientError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.3)
