"""``vmsnap snapshot export``: a snapshot's array disks as qcow2 images (full or incremental).

The work is :mod:`vmsnap_host.exporter` (through the host's read-only streams);
this module is the command: options, a byte progress bar on stderr, the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from vmsnap_host.cli import _output as out
from vmsnap_host.cli._common import fail, run
from vmsnap_host.client import HostClient
from vmsnap_host.exporter import Exporter, ExportError, Manifest


def snapshot_export(
    snapshot_id: Annotated[str, typer.Argument(help="The snapshot to export.")],
    *,
    to: Annotated[Path, typer.Option("--to", help="Directory of the images and manifests.")],
    since: Annotated[
        str,
        typer.Option(
            "--since",
            metavar="OLDER_SNAPSHOT",
            help="Write incrementals on the export of this older snapshot (in the same DIR).",
        ),
    ] = "",
    disk: Annotated[
        list[str] | None, typer.Option(help="Export only this disk (repeat); default: all.")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Export the snapshot's array disks as qcow2 images with a sha256 manifest.

    Without --since every disk is a full image; with it, an incremental holding only
    the blocks that changed, whose backing file is the older export. Rebuild a disk
    with `qemu-img convert -O raw DIR/SNAPSHOT.DISK.qcow2 disk.raw`.
    """

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=out.errors,
        transient=True,
        disable=json_ or not out.errors.is_terminal,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(f"{snapshot_id} {name}", total=total or 1)
            bar.update(tasks[name], completed=done if total else 1)

        async def work(host: HostClient) -> Manifest:
            exporter = Exporter(host, progress=progress)
            return await exporter.export(snapshot_id, to, since=since, disks=disk or ())

        try:
            manifest = run(work)
        except ExportError as exc:
            fail(str(exc))
    if json_:
        typer.echo(manifest.to_json(), nl=False)
        return
    for d in manifest.disks:
        out.console.print(
            f"{d.disk}: {d.kind} {to / d.file} ({d.data_bytes} bytes of data in {d.ranges} "
            f"ranges, file {d.file_bytes} bytes, virtual {d.virtual_size})"
            + (f" on {d.backing}" if d.backing else ""),
            highlight=False,
            soft_wrap=True,
        )
    out.console.print(f"manifest: {to / (manifest.vm_snapshot_id + '.manifest.json')}")
