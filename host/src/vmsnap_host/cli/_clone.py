"""`vmsnap vm clone SNAPSHOT NEW_VM`: a new VM from a snapshot (CreateVMFromSnapshot).

The helpers it shares with the other mutating commands (run, progress, how an
operation's end is shown) live in ``_app``; they are looked up when the command
runs, so that ``_app`` can register this command without an import cycle.
"""

from __future__ import annotations

from typing import Annotated

import typer

#: How long the host may wait inside the call: a small clone ends within it.
CLONE_WAIT = 2.0


def vm_clone(
    snapshot_id: Annotated[str, typer.Argument(help="The READY VM snapshot to clone from.")],
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
    timeout: Annotated[float, typer.Option(help="Longest wait for the operation, seconds.")] = 600.0,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Make a new VM from a snapshot: its disks are new volumes cloned by their
    drivers; the source VM is untouched; a failure leaves nothing behind."""
    from vmsnap_host.cli import _app

    parameters = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            _app.fail(f"--param {item!r}: expected KEY=VALUE")
        parameters[key] = value
    _app._mutate(
        lambda host: host.create_vm_from_snapshot(
            snapshot_id,
            new_vm_id,
            agent=agent,
            new_vm_name=name,
            parameters=parameters,
            request_id=request_id,
            wait=None if no_wait else min(CLONE_WAIT, timeout),
        ),
        no_wait,
        timeout,
        json_,
    )
    if not json_ and not no_wait:
        print(f"VM {new_vm_id} defined from snapshot {snapshot_id} (stopped)")
