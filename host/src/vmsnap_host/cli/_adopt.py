"""``vmsnap snapshot discover VM`` and ``vmsnap snapshot adopt VM SET_ID --name N``:
array snapshots made outside vmsnap, listed and made catalog snapshots."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from vmsnap_host.client import Discovery

adopt_app = typer.Typer()


def discovery_table(found: Discovery) -> Table:
    table = Table("set id", "name", "created", "disks", "complete", "consistency")
    for s in found.sets:
        table.add_row(
            s.id,
            s.name,
            s.create_time.astimezone().strftime("%Y-%m-%d %H:%M:%S") if s.create_time else "-",
            "\n".join(f"{v.disk} ({v.handle})" for v in s.volumes),
            "yes" if s.complete else "no: misses a disk",
            s.consistency.name,
        )
    return table


@adopt_app.command("discover")
def snapshot_discover(
    vm_id: Annotated[str, typer.Argument(metavar="VM")],
    json_: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Array snapshots of the VM's volumes that vmsnap did not make (changes nothing)."""
    from vmsnap_host.cli import _common as _app  # run, fail and the global options
    from vmsnap_host.cli import _output as out

    found = _app.run(lambda host: host.discover_snapshots(vm_id))
    if json_:
        out.print_json(found)
        return
    out.console.print(discovery_table(found))
    if found.unsupported_drivers:
        out.errors.print(
            "drivers that cannot list unmanaged snapshots (their disks are in no set): "
            + ", ".join(found.unsupported_drivers),
            highlight=False,
        )


@adopt_app.command("adopt")
def snapshot_adopt(
    vm_id: Annotated[str, typer.Argument(metavar="VM")],
    set_id: Annotated[str, typer.Argument(metavar="SET_ID", help="From `snapshot discover`.")],
    name: Annotated[str, typer.Option("--name", help="The new snapshot's name.")],
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    request_id: Annotated[str | None, typer.Option(help="Client id for a safe retry.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Make a discovered set a READY VM snapshot (revert and delete then work on it)."""
    from vmsnap_host.cli import _common as _app
    from vmsnap_host.cli import _output as out

    snapshot = _app.run(
        lambda host: host.adopt_snapshot(
            vm_id, set_id, name, description=description, request_id=request_id
        )
    )
    if json_:
        out.print_json(snapshot)
    else:
        out.show_snapshot(snapshot)


__all__ = ["adopt_app", "discovery_table"]
