"""``vmsnap volume``: test volumes on the embedded stack's emulated arrays.

A VM's disks must exist on its arrays before the VM is defined. On the embedded
stack (``vmsnap up``) the arrays are emulators, and their drivers serve the
ConformanceFixture service (test arrays only): this group creates and deletes
volumes through it, the same way ``vmsnap demo`` and the conformance suite do,
so it needs nothing but the drivers' addresses, which the host lists, and no
array password. The fixture has no listing call, so ``volume list`` shows the
volumes this CLI created in ``$VMSNAP_HOME`` (recorded in
``$VMSNAP_HOME/volumes.json``, which lives and dies with the arrays' data).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.table import Table

from vmsnap_host.cli import _output as out
from vmsnap_host.cli._common import Exit, JsonOption, exit_code, fail, run, want_json
from vmsnap_host.client import DriverStatus, Health, HostClient, vmsnap_home
from vmsnap_sdk import DriverClient
from vmsnap_sdk.errors import VMSnapError

FIXTURE = "CONFORMANCE_FIXTURE"

app = typer.Typer(
    help="Test volumes on the embedded stack's emulated arrays (through the drivers' "
    "test fixture; not for real arrays).",
    no_args_is_help=True,
    epilog="Example: vmsnap volume create web-vda --driver solidfire --size 16MiB",
)

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
}


def parse_size(text: str) -> int:
    """``16MiB``, ``1G``, ``4096`` → bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS or int(match.group(1)) <= 0:
        fail(f"--size {text!r}: expected a positive size such as 16MiB, 1GiB or 4096", Exit.USAGE)
    return int(match.group(1)) * _UNITS[unit]


@dataclass(frozen=True)
class Record:
    """A volume this CLI created."""

    locator: str
    name: str
    driver: str
    size_bytes: int


def _records_file() -> Path:
    return vmsnap_home() / "volumes.json"


def _load() -> list[Record]:
    try:
        data = json.loads(_records_file().read_text())
        return [Record(**item) for item in data]
    except (OSError, ValueError, TypeError):
        return []


def _save(records: list[Record]) -> None:
    path = _records_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(r) for r in records], indent=2))
    os.replace(tmp, path)


def _choose(drivers: list[DriverStatus], wanted: str) -> DriverStatus:
    """The driver ``--driver`` names (exactly, or by a unique part of its name or
    address); without it, the only driver that serves the fixture."""
    fixture = [d for d in drivers if FIXTURE in d.capabilities]
    if not fixture:
        fail(
            "no registered driver serves the test fixture (drivers started with "
            "--conformance-fixture, as `vmsnap up` does); see `vmsnap drivers list`",
            Exit.REFUSED,
        )
    exact = [d for d in fixture if d.name == wanted]
    matches = exact or [
        d for d in fixture if wanted and (wanted.lower() in d.name.lower() or wanted in d.address)
    ]
    if not wanted and len(fixture) == 1:
        matches = fixture
    names = ", ".join(d.name for d in fixture)
    if not matches:
        how = f"no driver matches --driver {wanted!r}" if wanted else "several drivers can"
        fail(f"{how}: choose one of {names} with --driver", Exit.USAGE)
    if len(matches) > 1:
        fail(
            f"--driver {wanted!r} matches several drivers ({', '.join(d.name for d in matches)}); "
            "give more of the name",
            Exit.USAGE,
        )
    chosen = matches[0]
    if chosen.health is not Health.SERVING:
        fail(
            f"driver {chosen.name} is {chosen.health.name.lower().replace('_', ' ')}"
            f"{': ' + chosen.health_message if chosen.health_message else ''}; "
            "see `vmsnap drivers list`",
            Exit.UNAVAILABLE,
        )
    return chosen


def _driver_failed(driver: DriverStatus, exc: VMSnapError) -> NoReturn:
    fail(
        f"{exc.code.name}: driver {driver.name} ({driver.address}): {exc.message}",
        exit_code(exc.code),
    )


DriverOption = Annotated[
    str,
    typer.Option(
        "--driver",
        metavar="DRIVER",
        help="Driver to ask: its name or a unique part of it or of its address "
        "(solidfire, ontap, element); needed when several serve the fixture.",
    ),
]


@app.command("create")
def volume_create(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Volume name: letters, digits, . _ -")
    ],
    size: Annotated[
        str, typer.Option(metavar="SIZE", help="Size: 16MiB, 1GiB, or bytes.")
    ] = "16MiB",
    driver: DriverOption = "",
    json_: JsonOption = False,
) -> None:
    """Create a test volume and print its locator (for `vmsnap vm define --disk`).

    Example: vmsnap vm define web --disk vda=$(vmsnap volume create web-vda --driver solidfire)
    """
    size_bytes = parse_size(size)

    async def work(host: HostClient) -> Record:
        chosen = _choose(await host.list_drivers(), driver)
        client = DriverClient.connect(chosen.address, timeout=60)
        try:
            volume = await client.create_test_volume(name, size_bytes)
        except VMSnapError as exc:
            _driver_failed(chosen, exc)
        finally:
            await client.close()
        return Record(volume.locator, name, chosen.name, volume.size_bytes)

    record = run(work)
    _save([r for r in _load() if r.locator != record.locator] + [record])
    if want_json(json_):
        out.print_json(record)
    else:
        print(record.locator)


@app.command("list")
def volume_list(json_: JsonOption = False) -> None:
    """The test volumes `vmsnap volume create` made in this $VMSNAP_HOME."""
    records = _load()
    if want_json(json_):
        out.print_json(records)
        return
    table = Table("locator", "name", "driver", "size", title="test volumes")
    for r in records:
        table.add_row(r.locator, r.name, r.driver, f"{r.size_bytes >> 20} MiB")
    out.console.print(table)


@app.command("delete")
def volume_delete(
    locator: Annotated[
        str, typer.Argument(metavar="LOCATOR", help="The locator `volume create` printed.")
    ],
    driver: DriverOption = "",
) -> None:
    """Delete a test volume (idempotent). The VMs that use it keep a dangling disk.

    Example: vmsnap volume delete element://vmsnap-element/1
    """
    records = _load()
    recorded = next((r for r in records if r.locator == locator), None)
    wanted = driver or (recorded.driver if recorded else "")
    scheme = locator.partition("://")[0]

    async def work(host: HostClient) -> None:
        drivers = await host.list_drivers()
        if not wanted:
            # Not made here: the driver whose address names the locator's scheme.
            by_scheme = [d for d in drivers if scheme and scheme in d.address]
            chosen = _choose(by_scheme or drivers, "")
        else:
            chosen = _choose(drivers, wanted)
        client = DriverClient.connect(chosen.address, timeout=60)
        try:
            await client.delete_test_volume(locator)
        except VMSnapError as exc:
            _driver_failed(chosen, exc)
        finally:
            await client.close()

    run(work)
    _save([r for r in records if r.locator != locator])
