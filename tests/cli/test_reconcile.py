"""`vmsnap reconcile` and `vmsnap findings list` against a running host.

Real processes over unix sockets: the host, the sim agent and a fake driver.
The faults are planted before they start: the catalog gets a failed snapshot
and a READY one, the driver's state file holds the failed snapshot's object
(an orphan), another installation's object, and not the READY one's (lost);
the agent holds a freeze of the finished operation that made the failed one.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import Proc, wait_serving
from vmsnap_host.client import HostClient
from vmsnap_host.model import (
    Claim,
    Group,
    GroupKind,
    OperationRecord,
    OperationType,
    Snapshot,
    SnapshotState,
)
from vmsnap_host.store import Store
from vmsnap_sdk import (
    VM,
    AgentClient,
    Priority,
    QuiesceMethod,
    SnapshotResult,
    Volume,
    VolumeSnapshot,
)

DRIVER = "io.vmsnap.test.a"
CONFIG = """
[host]
orphan_grace_seconds = 0
call_timeout_seconds = 5
reconcile_interval_seconds = 3600

[[drivers]]
address = "unix://{sock}/a.sock"

[[agents]]
address = "unix://{sock}/agent.sock"
"""


@dataclass
class Planted:
    sock: Path
    work: Path
    orphan: str = field(default_factory=lambda: uuid.uuid4().hex)
    lost: str = field(default_factory=lambda: uuid.uuid4().hex)
    foreign: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: The (finished) operation that made the orphan; a freeze it still holds is stale.
    orphan_op: str = field(default_factory=lambda: uuid.uuid4().hex)
    procs: list[Proc] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"unix://{self.sock}/host.sock"

    @property
    def agent(self) -> str:
        return f"unix://{self.sock}/agent.sock"

    def driver_snapshots(self) -> set[str]:
        return set(json.loads((self.work / "a.json").read_text())["snapshots"])

    def vmsnap(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "vmsnap_host.cli", "--host", self.host, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def vmsnap_json(self, *args: str) -> Any:
        return json.loads(self.vmsnap(*args, "--json"))


def _plant_catalog(path: Path, planted: Planted) -> None:
    store = Store.open_sqlite(path)
    try:
        for sid, state in (
            (planted.orphan, SnapshotState.ERROR),
            (planted.lost, SnapshotState.READY),
        ):
            result = SnapshotResult(
                sid, (VolumeSnapshot("vda", "a://pool/1", f"{sid}@vda"),), vm_id="vm1"
            )
            snap = Snapshot(
                id=sid,
                vm_id="vm1",
                name=f"n-{sid[:6]}",
                state=state,
                agent="sim-1",
                groups=(
                    Group(GroupKind.DRIVER, DRIVER, (Claim("vda", Priority.PLUGIN, ""),), result),
                ),
            )
            op = OperationRecord(
                id=planted.orphan_op if sid == planted.orphan else uuid.uuid4().hex,
                type=OperationType.CREATE,
                vm_id="vm1",
                vm_snapshot_id=sid,
                request_id=uuid.uuid4().hex,
                done=True,
            )
            store.write_blocking(store.w_create(snap, op))
    finally:
        store.close()


def _driver_state(planted: Planted) -> dict[str, Any]:
    def holding(sid: str, vm_id: str) -> dict[str, Any]:
        return {
            "volumes": [["vda", "a://pool/1", f"{sid}@vda"]],
            "vm_id": vm_id,
            "consistency": "CRASH",
        }

    return {
        "calls": [],
        "snapshots": {
            planted.orphan: holding(planted.orphan, "vm1"),
            planted.foreign: holding(planted.foreign, "their-vm"),
        },
        "reverted": [],
    }


async def _freeze(address: str, operation_id: str) -> None:
    agent = AgentClient.connect(address, timeout=30)
    try:
        await agent.define_vm(
            VM(id="vm-frozen", name="vm-frozen", volumes=(Volume("vda", "file:///f.img"),))
        )
        await agent.start_vm("vm-frozen")
        await agent.quiesce("vm-frozen", QuiesceMethod.OVERLAY, 600, False, operation_id)
    finally:
        await agent.close()


async def _frozen(address: str) -> bool:
    agent = AgentClient.connect(address, timeout=30)
    try:
        return bool(await agent.list_quiesces("vm-frozen"))
    finally:
        await agent.close()


@pytest.fixture
def planted(sockdir: Path, tmp_path: Path) -> Iterator[Planted]:
    p = Planted(sockdir, tmp_path)
    _plant_catalog(tmp_path / "host.db", p)
    (tmp_path / "a.json").write_text(json.dumps(_driver_state(p)))
    (tmp_path / "host.toml").write_text(CONFIG.format(sock=sockdir))
    starts = {
        "agent": [
            "-m",
            "vmsnap_agent.cli",
            "--hypervisor",
            "sim",
            "--state",
            str(tmp_path / "agent"),
        ],
        "a": [
            "-m",
            "tests.fakes.driver",
            "--name",
            DRIVER,
            "--scheme",
            "a",
            "--state",
            str(tmp_path / "a.json"),
        ],
        "host": [
            "-m",
            "vmsnap_host",
            "--db",
            str(tmp_path / "host.db"),
            "--config",
            str(tmp_path / "host.toml"),
        ],
    }
    try:
        for name, args in starts.items():
            address = f"unix://{sockdir}/{name}.sock"
            proc = Proc([sys.executable, *args, "--listen", address], tmp_path / f"{name}.log")
            p.procs.append(proc)
            try:
                wait_serving(address)
            except TimeoutError:
                raise AssertionError(f"{name} did not start:\n{proc.output()}") from None
        asyncio.run(_freeze(f"unix://{sockdir}/agent.sock", p.orphan_op))
        yield p
    finally:
        for proc in reversed(p.procs):
            proc.stop(10)


def test_reconcile_dry_run_then_for_real_and_the_findings_kept(planted: Planted) -> None:
    dry = planted.vmsnap_json("reconcile", "--dry-run")
    actions = {(f["kind"], f["object_id"] or f["peer"]): f["action"] for f in dry["findings"]}
    assert actions[("ORPHAN", planted.orphan)] == "WOULD_DELETE"
    assert actions[("MISSING", planted.lost)] == "WOULD_MARK"
    assert actions[("FOREIGN", DRIVER)] == "KEPT"
    stale = [f for f in dry["findings"] if f["kind"] == "STALE_FREEZE"]
    assert [(f["vm_id"], f["action"]) for f in stale] == [("vm-frozen", "WOULD_THAW")]
    assert planted.driver_snapshots() == {planted.orphan, planted.foreign}  # nothing changed
    assert asyncio.run(_frozen(planted.agent))

    report = planted.vmsnap_json("reconcile")
    by_kind = {f["kind"]: f for f in report["findings"]}
    assert by_kind["ORPHAN"]["action"] == "DELETED"
    assert by_kind["ORPHAN"]["vm_snapshot_id"] == planted.orphan
    assert by_kind["MISSING"]["action"] == "MARKED"
    assert planted.foreign in by_kind["FOREIGN"]["detail"]
    assert by_kind["STALE_FREEZE"]["action"] == "THAWED"
    assert f"operation {planted.orphan_op} is finished" in by_kind["STALE_FREEZE"]["detail"]
    assert not asyncio.run(_frozen(planted.agent))
    assert report["omitted"] == 0
    # The orphan is gone from the array; another installation's object is not.
    assert planted.driver_snapshots() == {planted.foreign}

    shown = planted.vmsnap_json("snapshot", "show", planted.lost)
    assert shown["state"] == "READY"
    assert f"driver {DRIVER} no longer holds {planted.lost}" in shown["missing"]
    assert "missing:" in planted.vmsnap("snapshot", "show", planted.lost)

    kept = planted.vmsnap_json("findings", "list")
    recorded = [(f["kind"], f["action"]) for f in kept]
    assert recorded.index(("ORPHAN", "DELETED")) < recorded.index(("ORPHAN", "WOULD_DELETE"))
    assert all(f["time"] for f in kept)

    table = planted.vmsnap("reconcile")
    assert "MISSING" in table and "marked earlier" in table
    assert "kind" in table and "action" in table

    async def pages() -> list[int]:
        sizes = []
        async with HostClient.connect(planted.host, timeout=30) as host:
            page = await host.list_findings(page_size=2)
            sizes.append(len(page.items))
            while page.next_token:
                page = await host.list_findings(page_size=2, page_token=page.next_token)
                sizes.append(len(page.items))
        return sizes

    sizes = asyncio.run(pages())
    assert sum(sizes) == len(planted.vmsnap_json("findings", "list", "--limit", "1000"))
    assert len(sizes) > 1 and all(s <= 2 for s in sizes)
