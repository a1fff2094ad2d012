"""Changed-block deltas and export, end to end (issue 15's "delta round trip").

Real processes over unix sockets: the Element emulator, the SolidFire driver, the
sim agent and the host; the export runs as the ``vmsnap`` CLI. A 1 GiB volume
(thin: the emulator stores only written blocks, the images are sparse qcow2)
gets some data, snapshot s1, then 16 MiB changed in scattered ranges, snapshot
s2. The delta s1 -> s2 lists exactly the changed ranges; s1 exports full, s2 as
an incremental on it; ``qemu-img convert`` of the incremental gives the volume
at s2 byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from tests.drivers.conftest import DriverProcess, run_driver
from tests.drivers.test_with_host import Stack
from vmsnap_emulators.testing import start_emulator
from vmsnap_host.client import HostClient, VMSnapshot
from vmsnap_host.exporter import Exporter, ExportError
from vmsnap_sdk import VM, DriverClient, Volume, VolumeSnapshot
from vmsnap_sdk._blocks_wire import ref_to_pb
from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk.blocks import SnapshotRef
from vmsnap_sdk.errors import FailedPrecondition, InvalidArgument

pytestmark = pytest.mark.skipif(
    not os.path.exists("/usr/bin/qemu-img"), reason="qemu-img (qemu-utils) is not installed"
)

MIB = 1 << 20
GIB = 1 << 30
BLOCK = 64 << 10
#: Written before s1 (offset, length): 6 MiB.
BASE = [(0, 2 * MIB), (300 * MIB, 1 * MIB), (700 * MIB, 3 * MIB)]
#: Changed between s1 and s2: 16 MiB in 9 scattered ranges, some over BASE data,
#: one touching the end of the volume. Block aligned, so "exactly" is exact.
CHANGES = [
    (BLOCK, 4 * BLOCK),  # inside the first base range
    (5 * MIB, 3 * MIB),
    (100 * MIB + 3 * BLOCK, 2 * MIB),
    (300 * MIB + (512 << 10), 1 * MIB),  # straddles the end of a base range
    (512 * MIB, 4 * MIB),
    (640 * MIB, 2 * MIB - 4 * BLOCK),
    (701 * MIB, 1 * MIB),
    (900 * MIB, 1 * MIB),
    (GIB - 2 * MIB, 2 * MIB),  # the last blocks of the volume
]


def _pattern(seed: int, length: int) -> bytes:
    # Distinct per block, cheap to make (os.urandom of 16 MiB is fine too, but this
    # makes a failure reproducible).
    unit = seed.to_bytes(4, "little") * (BLOCK // 4)
    out = bytearray()
    for i in range(0, length, BLOCK):
        out += bytes((b + i // BLOCK) & 0xFF for b in unit[:64]) + unit[64:]
    return bytes(out[:length])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, DriverProcess]]:
    # One stack for the module (its tests use distinct VMs and volumes): starting
    # four processes is most of a test's time.
    tmp_path = tmp_path_factory.mktemp("export-stack")
    sockdir = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    with (
        start_emulator("element", tmp_path / "element", durable=False) as element,
        run_driver(
            "solidfire", element, "--conformance-fixture", "--cluster", "vmsnap-element"
        ) as solidfire,
    ):
        s = Stack(sockdir, tmp_path)
        try:
            agent = s.start(
                "agent",
                ["-m", "vmsnap_agent.cli", "--hypervisor", "sim", "--state", str(tmp_path / "a")],
            )
            config = tmp_path / "host.toml"
            config.write_text(
                "[host]\nhealth_interval_seconds = 0.2\n\n"
                f'[[drivers]]\naddress = "{solidfire.address}"\n\n'
                f'[[agents]]\naddress = "{agent}"\n'
            )
            s.start(
                "host",
                [
                    "-m",
                    "vmsnap_host",
                    "--db",
                    str(tmp_path / "host.db"),
                    "--config",
                    str(config),
                    "--instance-id",
                    "export-test",
                ],
            )
            yield s, solidfire
        finally:
            s.close()
            shutil.rmtree(sockdir, ignore_errors=True)


@pytest.fixture
async def clients(
    stack: tuple[Stack, DriverProcess],
) -> AsyncIterator[tuple[HostClient, DriverClient, str]]:
    s, solidfire = stack
    address = f"unix://{s.sock}/host.sock"
    host = HostClient.connect(address, timeout=30)
    driver = DriverClient.connect(solidfire.address, timeout=30)
    try:
        deadline = time.monotonic() + 20
        while not any(d.health.name == "SERVING" for d in await host.list_drivers()):
            assert time.monotonic() < deadline, "the host never saw the driver serving"
            await asyncio.sleep(0.1)
        yield host, driver, address
    finally:
        await host.close()
        await driver.close()


async def _snapshot(host: HostClient, vm_id: str, name: str) -> VMSnapshot:
    op = await host.create_vm_snapshot(vm_id, name, wait=30)
    op = await host.wait(op.id, timeout=60)
    assert op.done and op.error is None, op
    return await host.get_vm_snapshot(op.vm_snapshot_id)


async def _two_snapshots(
    host: HostClient, driver: DriverClient
) -> tuple[Volume, VMSnapshot, VMSnapshot]:
    volume = await driver.create_test_volume("big", GIB)
    assert volume.size_bytes == GIB
    for i, (offset, length) in enumerate(BASE):
        await _write(driver, volume, offset, _pattern(i + 1, length))
    await host.define_vm(
        VM(
            id="vm1",
            name="vm1",
            memory_mib=64,
            volumes=(Volume(disk="vda", locator=volume.locator),),
        )
    )
    s1 = await _snapshot(host, "vm1", "s1")
    for i, (offset, length) in enumerate(CHANGES):
        await _write(driver, volume, offset, _pattern(100 + i, length))
    s2 = await _snapshot(host, "vm1", "s2")
    return volume, s1, s2


async def _write(driver: DriverClient, volume: Volume, offset: int, data: bytes) -> None:
    for at in range(0, len(data), 4 * MIB):
        await driver.write_volume(volume.locator, offset + at, data[at : at + 4 * MIB])


def _expected_at_s2() -> list[tuple[int, bytes]]:
    """(offset, bytes) writes in order; later ones win."""
    writes = [(o, _pattern(i + 1, n)) for i, (o, n) in enumerate(BASE)]
    writes += [(o, _pattern(100 + i, n)) for i, (o, n) in enumerate(CHANGES)]
    return writes


def _coalesced(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for offset, length in sorted(pairs):
        if out and offset <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][0] + out[-1][1], offset + length) - out[-1][0]
        else:
            out.append([offset, length])
    return [(o, n) for o, n in out]


async def _vmsnap(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "vmsnap_host.cli", "--host", address, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _run(argv: list[str]) -> None:
    result = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _assert_image_equals(raw: Path, writes: list[tuple[int, bytes]], size: int) -> None:
    """The raw image holds ``writes`` (later ones win) and zeros elsewhere: the
    expected disk is built as a sparse file and compared byte for byte by
    ``qemu-img compare`` (which skips holes on both sides quickly)."""
    assert raw.stat().st_size == size
    expected = raw.with_name("expected.raw")
    with expected.open("wb") as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)
    result = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "raw", str(expected), str(raw)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_delta_round_trip_exact_ranges_small_incremental_same_bytes(
    clients: tuple[HostClient, DriverClient, str], tmp_path: Path
) -> None:
    host, driver, address = clients
    _volume, s1, s2 = await _two_snapshots(host, driver)

    # The delta lists exactly the changed ranges (coalesced extents).
    delta = await host.disk_ranges(s2.id, "vda", since=s1.id)
    assert delta.block_size == BLOCK and delta.capacity_bytes == GIB
    assert [(r.offset, r.length) for r in delta.ranges] == _coalesced(CHANGES)
    assert delta.total_bytes == 16 * MIB
    # Paged: 2 ranges per message, the same answer.
    paged = await host.disk_ranges(s2.id, "vda", since=s1.id, max_results=2)
    assert paged.ranges == delta.ranges
    # Resumed in the middle: only what ends after the offset.
    resumed = await host.disk_ranges(s2.id, "vda", since=s1.id, starting_offset=512 * MIB)
    assert resumed.ranges == tuple(r for r in delta.ranges if r.end > 512 * MIB)
    allocated = await host.disk_ranges(s1.id, "vda")
    assert [(r.offset, r.length) for r in allocated.ranges] == _coalesced(BASE)

    out = tmp_path / "exports"
    full = await _vmsnap(address, "snapshot", "export", s1.id, "--to", str(out), "--json")
    assert full.returncode == 0, full.stderr
    inc = await _vmsnap(
        address, "snapshot", "export", s2.id, "--to", str(out), "--since", s1.id, "--json"
    )
    assert inc.returncode == 0, inc.stderr
    manifest = json.loads(inc.stdout)
    (disk,) = manifest["disks"]
    assert disk["kind"] == "incremental" and disk["backing"] == f"{s1.id}.vda.qcow2"
    assert disk["data_bytes"] == 16 * MIB and disk["virtual_size"] == GIB
    image = out / disk["file"]
    # Small: the changed bytes plus qcow2 metadata, <= 2 % of the 1 GiB disk a full
    # export represents (raw); the full export of s1 holds only its 6 MiB of data.
    assert disk["file_bytes"] == image.stat().st_size
    assert image.stat().st_size <= 16 * MIB + 1 * MIB
    assert image.stat().st_size / GIB <= 0.02
    assert json.loads(full.stdout)["disks"][0]["data_bytes"] == 6 * MIB

    await _run(["qemu-img", "check", str(image)])
    raw = tmp_path / "rebuilt.raw"
    await _run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)])
    assert raw.stat().st_blocks * 512 < 64 * MIB, "the rebuilt image should be sparse"
    await asyncio.to_thread(_assert_image_equals, raw, _expected_at_s2(), GIB)
    # The array agrees, at every changed range (read through the host).
    for r in delta.ranges[:3]:
        got = await host.read_snapshot_disk(s2.id, "vda", r.offset, r.length)
        with raw.open("rb") as f:
            f.seek(r.offset)
            assert got == f.read(r.length)


async def test_export_refuses_a_changed_base_and_bad_bounds(
    clients: tuple[HostClient, DriverClient, str], tmp_path: Path
) -> None:
    host, driver, _address = clients
    volume = await driver.create_test_volume("small", 8 * MIB)
    await host.define_vm(
        VM(
            id="vm2",
            name="vm2",
            memory_mib=64,
            volumes=(Volume(disk="vda", locator=volume.locator),),
        )
    )
    s1 = await _snapshot(host, "vm2", "a")
    await driver.write_volume(volume.locator, 0, b"\x01" * BLOCK)
    s2 = await _snapshot(host, "vm2", "b")

    # Bounds: INVALID_ARGUMENT naming the field, on the host and on the driver.
    with pytest.raises(InvalidArgument, match="max_results"):
        await host.disk_ranges(s2.id, "vda", max_results=10001)
    with pytest.raises(InvalidArgument, match="chunk_size"):
        await host.read_snapshot_disk(s2.id, "vda", 0, BLOCK, chunk_size=100)
    with pytest.raises(InvalidArgument, match="length"):
        await host.read_snapshot_disk(s2.id, "vda", 0, 0)
    ref = SnapshotRef(s2.id, _ref_volume(s2))
    stub_error = await _driver_bound_errors(driver, ref)
    assert stub_error == {"max_results": "INVALID_ARGUMENT", "chunk_size": "INVALID_ARGUMENT"}
    # A delta against itself or a newer snapshot is no delta.
    with pytest.raises(FailedPrecondition, match="not older"):
        await host.disk_ranges(s1.id, "vda", since=s2.id)

    # In process (the CLI path is the round trip's): the chain's checks.
    out = tmp_path / "x"
    exporter = Exporter(host)
    await exporter.export(s1.id, out)
    with pytest.raises(ExportError, match="export the older snapshot"):
        await exporter.export(s2.id, tmp_path / "y", since=s1.id)
    # A base changed after its export breaks the chain: refused, not silently used.
    base = out / f"{s1.id}.vda.qcow2"
    await _run(["qemu-io", "-f", "qcow2", str(base), "-c", "write -q 0 4096"])
    with pytest.raises(ExportError, match="sha256"):
        await exporter.export(s2.id, out, since=s1.id)


def _ref_volume(snap: VMSnapshot) -> VolumeSnapshot:
    v = snap.groups[0].volumes[0]
    return VolumeSnapshot(disk=v.disk, locator=v.locator, handle=v.handle)


async def _driver_bound_errors(driver: DriverClient, ref: SnapshotRef) -> dict[str, str]:
    out: dict[str, str] = {}
    stub = driver._stub
    try:
        async for _ in stub.GetMetadataAllocated(
            driver_pb2.GetMetadataAllocatedRequest(snapshot=ref_to_pb(ref), max_results=-1)
        ):
            pass
    except grpc.aio.AioRpcError as exc:
        out["max_results"] = exc.code().name
    try:
        async for _ in stub.ReadSnapshot(
            driver_pb2.ReadSnapshotRequest(
                snapshot=ref_to_pb(ref), offset=0, length=BLOCK, chunk_size=8 * MIB
            )
        ):
            pass
    except grpc.aio.AioRpcError as exc:
        out["chunk_size"] = exc.code().name
    return out


@pytest.mark.skipif(
    os.environ.get("VMSNAP_DENSE_EXPORT") != "1",
    reason="on demand (VMSNAP_DENSE_EXPORT=1): writes a dense 1 GiB volume and a 1 GiB image",
)
async def test_dense_volume_incremental_is_under_2_percent_of_the_full_export(
    clients: tuple[HostClient, DriverClient, str], tmp_path: Path
) -> None:
    """The acceptance ratio taken literally: every block of the 1 GiB volume holds
    data, so the full export of s2 is a 1 GiB image; the incremental on s1 holds
    the 16 MiB that changed."""
    host, driver, _address = clients
    volume = await driver.create_test_volume("dense", GIB)
    fill = _pattern(7, 4 * MIB)
    for offset in range(0, GIB, 4 * MIB):
        await driver.write_volume(volume.locator, offset, fill)
    await host.define_vm(
        VM(
            id="vm3",
            name="vm3",
            memory_mib=64,
            volumes=(Volume(disk="vda", locator=volume.locator),),
        )
    )
    s1 = await _snapshot(host, "vm3", "dense-1")
    for i, (offset, length) in enumerate(CHANGES):
        await _write(driver, volume, offset, _pattern(100 + i, length))
    s2 = await _snapshot(host, "vm3", "dense-2")
    exporter = Exporter(host)
    full = await exporter.export(s2.id, tmp_path / "full")
    await exporter.export(s1.id, tmp_path / "chain")
    inc = await exporter.export(s2.id, tmp_path / "chain", since=s1.id)
    full_bytes, inc_bytes = full.disks[0].file_bytes, inc.disks[0].file_bytes
    print(
        f"full export {full_bytes} bytes, incremental {inc_bytes} bytes, "
        f"ratio {inc_bytes / full_bytes:.4f}"
    )
    assert full.disks[0].data_bytes == GIB
    assert inc_bytes / full_bytes <= 0.02
    await _run(
        [
            "qemu-img",
            "compare",
            str(tmp_path / "full" / full.disks[0].file),
            str(tmp_path / "chain" / inc.disks[0].file),
        ]
    )
