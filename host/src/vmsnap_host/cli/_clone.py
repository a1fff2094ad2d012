"""`vmsnap vm clone SNAPSHOT NEW_VM`: a new VM from a snapshot (CreateVMFromSnapshot).

It shares how a mutating command follows its operation (progress, Ctrl-C, how
the end is shown) with ``vmsnap snapshot create`` (``_snapshot._mutate``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from vmsnap_host.cli._common import Exit, fail, want_json
from vmsnap_host.cli._snapshot import _mutate, resolved
from vmsnap_host.client import HostClient, Operation


def vm_clone(
    snapshot_id: Annotated[
        str,
        typer.Argument(
            metavar="SNAPSHOT", help="The READY snapshot: id, unique id prefix or VM/NAME."
        ),
    ],
    new_vm_id: Annotated[str, typer.Argument(help="Id of the new VM (defined on no agent).")],
    *,
    agent: Annotated[
        str, typer.Option(help="Agent to define the new VM on (default: the snapshot's).")
    ] = "",
    name: Annotated[str, typer.Option(help="Name of the new VM (default: its id).")] = "",
    param: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE passed to the drivers' CloneVolumes.")
    ] = None,
    request_id: Annotated[str | None, typer.Option(help="Client id for a safe retry.")] = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Print the operation id and return at once.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Longest wait for the operation, seconds.")
    ] = 600.0,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Make a new VM from a snapshot: its disks are new volumes cloned by their
    drivers; the source VM is untouched; a failure leaves nothing behind."""
    parameters = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--param {item!r}: expected KEY=VALUE", Exit.USAGE)
        parameters[key] = value

    async def start(host: HostClient) -> Operation:
        return await host.create_vm_from_snapshot(
            await resolved(host, snapshot_id),  # a full id, a unique prefix or VM/NAME
            new_vm_id,
            agent=agent,
            new_vm_name=name,
            parameters=parameters,
            request_id=request_id,
        )

    json_ = want_json(json_)
    _mutate(start, no_wait, timeout, json_)
    if not json_ and not no_wait:
        print(f"VM {new_vm_id} defined from snapshot {snapshot_id} (stopped)")
