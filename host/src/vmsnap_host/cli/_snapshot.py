"""``vmsnap snapshot``: take, list, show, revert and delete VM snapshots.

A snapshot is named on the command line by its full id, a unique prefix of it,
or ``VM/NAME`` (:mod:`vmsnap_host.cli._resolve`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, NoReturn

import typer

from vmsnap_host.cli import _output as out
from vmsnap_host.cli._common import (
    Exit,
    JsonOption,
    fail,
    full_ids,
    hint_host,
    options,
    run,
    want_json,
)
from vmsnap_host.cli._hints import cli_words
from vmsnap_host.cli._progress import follow
from vmsnap_host.cli._resolve import Unresolved, resolve
from vmsnap_host.client import HostClient, Operation, QuiescePolicy, VMSnapshot

app = typer.Typer(
    help="VM snapshots: name one by id, a unique id prefix, or VM/NAME.",
    no_args_is_help=True,
    epilog="Example: vmsnap snapshot create web before-upgrade && "
    "vmsnap snapshot revert web/before-upgrade --stop-vm",
)

SnapshotArg = Annotated[
    str,
    typer.Argument(
        metavar="SNAPSHOT", help="Snapshot id, a unique prefix of it, or VM/NAME (web/nightly)."
    ),
]
NoWait = Annotated[
    bool, typer.Option("--no-wait", help="Print the operation id and return at once.")
]
Timeout = Annotated[float, typer.Option(metavar="SECONDS", help="Longest wait for the operation.")]
RequestId = Annotated[
    str | None,
    typer.Option(
        metavar="ID", help="Your id for this request: the same command with it is a safe retry."
    ),
]


def _finish(op: Operation, json_: bool) -> None:
    if json_:
        out.print_json(op)
    elif op.vm_snapshot is not None:
        out.show_snapshot(op.vm_snapshot)
    if not op.done:
        fail(
            f"operation {op.id} is still running ({op.step}); follow it with "
            f"`vmsnap operations show {op.id}`",
            Exit.STILL_RUNNING,
        )
    if op.error is not None:
        fail(
            f"{op.error.code.name}: {cli_words(op.error.message)} (operation {op.id})",
            Exit.FAILED,
        )


def _interrupted(started: Operation | None) -> NoReturn:
    """Ctrl-C while following: the operation goes on in the host; say how to follow
    or cancel it, and exit 130 (128 + SIGINT)."""
    cli = f"vmsnap{hint_host()}"
    if started is None:
        out.errors.print(
            "interrupted before the host answered; if it accepted the request, "
            f"`{cli} operations list --running` shows its operation",
            highlight=False,
            soft_wrap=True,
        )
    else:
        out.errors.print(
            f"interrupted; operation {started.id} goes on in the host.\n"
            f"  follow it: {cli} events --follow --operation {started.id}\n"
            f"        or: {cli} operations show {started.id}\n"
            f"  cancel it: {cli} operations cancel {started.id}",
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(int(Exit.INTERRUPTED))


def _mutate(
    start: Callable[[HostClient], Awaitable[Operation]], no_wait: bool, timeout: float, json_: bool
) -> None:
    started: list[Operation] = []

    async def work(host: HostClient) -> Operation:
        op = await start(host)
        started.append(op)
        if no_wait:
            return op
        return await follow(host, op, timeout, quiet=json_)

    op = run(work, on_interrupt=lambda: _interrupted(started[0] if started else None))
    if no_wait:
        if json_:
            out.print_json(op)
        else:
            print(op.id)
        return
    _finish(op, json_)


async def resolved(host: HostClient, ref: str) -> str:
    """The full id ``ref`` names, or the CLI's exit with the reason."""
    try:
        return await resolve(host, ref)
    except Unresolved as exc:
        if exc.ambiguous:
            fail(str(exc), Exit.USAGE)
        fail(f"NOT_FOUND: {exc}", Exit.NOT_FOUND)


_POLICIES = {
    "off": QuiescePolicy.OFF,
    "best-effort": QuiescePolicy.BEST_EFFORT,
    "required": QuiescePolicy.REQUIRED,
}


@app.command("create")
def snapshot_create(
    vm_id: Annotated[str, typer.Argument(metavar="VM", help="VM id.")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="Snapshot name, unique per VM.")],
    *,
    description: Annotated[str, typer.Option(metavar="TEXT", help="Free text.")] = "",
    memory: Annotated[
        bool,
        typer.Option(
            "--memory",
            help="Include the RAM (with disks on arrays the VM is paused while they cut).",
        ),
    ] = False,
    quiesce: Annotated[
        str, typer.Option(metavar="off|best-effort|required", help="Freeze the guest first?")
    ] = "best-effort",
    param: Annotated[
        list[str] | None,
        typer.Option(metavar="KEY=VALUE", help="Passed to the drivers; repeat per parameter."),
    ] = None,
    request_id: RequestId = None,
    no_wait: NoWait = False,
    timeout: Timeout = 600.0,
    json_: JsonOption = False,
) -> None:
    """Take a VM snapshot (shows progress; --no-wait prints the operation id).

    Example: vmsnap snapshot create web before-upgrade --quiesce required
    """
    if quiesce not in _POLICIES:
        fail(f"--quiesce {quiesce!r}: choose off, best-effort or required", Exit.USAGE)
    parameters = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--param {item!r}: expected KEY=VALUE", Exit.USAGE)
        parameters[key] = value
    _mutate(
        lambda host: host.create_vm_snapshot(
            vm_id,
            name,
            description=description,
            include_memory=memory,
            quiesce=_POLICIES[quiesce],
            parameters=parameters,
            request_id=request_id,
            # One round trip for a quick take; a longer one is followed with progress.
            # Answered at once (the operation's id is known before any wait, so
            # Ctrl-C can name it), then followed as the host pushes each step.
            wait=None,
        ),
        no_wait,
        timeout,
        want_json(json_),
    )


@app.command("revert")
def snapshot_revert(
    snapshot: SnapshotArg,
    *,
    stop_vm: Annotated[bool, typer.Option("--stop-vm", help="Stop a running VM first.")] = False,
    request_id: RequestId = None,
    no_wait: NoWait = False,
    timeout: Timeout = 600.0,
    json_: JsonOption = False,
) -> None:
    """Revert a VM to a snapshot (a disk-only snapshot needs the VM stopped: --stop-vm).

    Example: vmsnap snapshot revert web/before-upgrade --stop-vm
    """

    async def start(host: HostClient) -> Operation:
        snapshot_id = await resolved(host, snapshot)
        return await host.revert_vm_snapshot(snapshot_id, stop_vm=stop_vm, request_id=request_id)

    _mutate(start, no_wait, timeout, want_json(json_))


@app.command("delete")
def snapshot_delete(
    snapshot: SnapshotArg,
    request_id: RequestId = None,
    no_wait: NoWait = False,
    timeout: Timeout = 600.0,
    json_: JsonOption = False,
) -> None:
    """Delete a VM snapshot everywhere.

    Example: vmsnap snapshot delete web/before-upgrade
    """

    async def start(host: HostClient) -> Operation:
        return await host.delete_vm_snapshot(await resolved(host, snapshot), request_id=request_id)

    _mutate(start, no_wait, timeout, want_json(json_))


@app.command("list")
def snapshot_list(
    vm_arg: Annotated[
        str | None, typer.Argument(metavar="VM", help="Only this VM's snapshots.")
    ] = None,
    vm: Annotated[str, typer.Option("--vm", metavar="VM", help="Only this VM's snapshots.")] = "",
    all_: Annotated[bool, typer.Option("--all", help="Include removed snapshots.")] = False,
    json_: JsonOption = False,
) -> None:
    """VM snapshots, oldest first.

    Example: vmsnap snapshot list web --json
    """
    if vm_arg and vm and vm_arg != vm:
        fail(f"two VMs given ({vm_arg} and --vm {vm}); give one", Exit.USAGE)
    snapshots = run(lambda host: host.all_vm_snapshots(vm_arg or vm, show_removed=all_))
    if want_json(json_):
        out.print_json(snapshots)
    else:
        out.console.print(out.snapshot_table(snapshots, full=full_ids(), wide=options.wide))


@app.command("show")
def snapshot_show(snapshot: SnapshotArg, json_: JsonOption = False) -> None:
    """A VM snapshot with its plan, freeze window and consistency.

    Example: vmsnap snapshot show web/before-upgrade
    """

    async def work(host: HostClient) -> VMSnapshot:
        return await host.get_vm_snapshot(await resolved(host, snapshot))

    found = run(work)
    if want_json(json_):
        out.print_json(found)
    else:
        out.show_snapshot(found)


from vmsnap_host.cli._export import snapshot_export  # noqa: E402 - registered below

app.command("export")(snapshot_export)

from vmsnap_host.cli._adopt import adopt_app  # noqa: E402 - registered below

app.add_typer(adopt_app)  # vmsnap snapshot discover | adopt
