"""``vmsnap vm``: VMs, passed through the host to their hypervisor agents."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

import typer

from vmsnap_host.cli import _output as out
from vmsnap_host.cli._common import Exit, JsonOption, fail, run, want_json
from vmsnap_host.cli._policy import parse_labels
from vmsnap_host.client import HostClient, LabeledVM, UndefineResult
from vmsnap_sdk import VM, Volume

app = typer.Typer(
    help="VMs (passed through to their hypervisor agents).",
    no_args_is_help=True,
    epilog="Example: vmsnap vm define web --disk vda=element://vmsnap-element/1 && vmsnap vm start web",
)

VmArg = Annotated[str, typer.Argument(metavar="VM", help="VM id.")]


def _parse_disk(spec: str) -> Volume:
    """``vda=ontap://svm/vol/path[,size=BYTES][,format=qcow2]``."""
    disk, sep, rest = spec.partition("=")
    if not sep or not rest:
        fail(f"--disk {spec!r}: expected DISK=LOCATOR[,size=BYTES][,format=raw|qcow2]", Exit.USAGE)
    locator, *options = rest.split(",")
    size, fmt = 0, "raw"
    for option in options:
        key, _, value = option.partition("=")
        if key == "size" and value.isdigit():
            size = int(value)
        elif key == "format" and value in ("raw", "qcow2"):
            fmt = value
        else:
            fail(
                f"--disk {spec!r}: unknown option {option!r} (size=BYTES, format=raw|qcow2)",
                Exit.USAGE,
            )
    return Volume(disk=disk, locator=locator, size_bytes=size, format=fmt)


def _show_vms(vms: list[LabeledVM], json_: bool) -> None:
    if want_json(json_):
        out.print_json([{**out.jsonable(v.vm), "labels": v.labels} for v in vms])
    else:
        out.console.print(out.vm_table([v.vm for v in vms], {v.vm.id: v.labels for v in vms}))


def _show_vm(vm: VM, json_: bool, labels: dict[str, str] | None = None) -> None:
    if want_json(json_):
        out.print_json(vm if labels is None else {**out.jsonable(vm), "labels": labels})
    else:
        out.console.print(out.vm_table([vm], None if labels is None else {vm.id: labels}))


@app.command("define")
def vm_define(
    vm_id: VmArg,
    *,
    disk: Annotated[
        list[str],
        typer.Option(
            metavar="DISK=LOCATOR",
            help="DISK=LOCATOR[,size=BYTES][,format=raw|qcow2]; repeat per disk. A LOCATOR "
            "is element://CLUSTER/VOLUME_ID, ontap://SVM/VOLUME/PATH or file:///PATH "
            "(`vmsnap volume create` makes array volumes on the embedded stack).",
        ),
    ],
    name: Annotated[str, typer.Option(metavar="TEXT", help="Display name.")] = "",
    memory: Annotated[int, typer.Option(metavar="MIB", help="Memory in MiB.")] = 1024,
    agent: Annotated[
        str, typer.Option(metavar="AGENT", help="Agent to define it on (when several).")
    ] = "",
    label: Annotated[
        list[str] | None,
        typer.Option(metavar="KEY=VALUE", help="A label kept by the host; repeat per label."),
    ] = None,
    project: Annotated[
        str,
        typer.Option(metavar="PROJECT", help="Project it belongs to (default: your only project)."),
    ] = "",
    json_: JsonOption = False,
) -> None:
    """Define a VM on a hypervisor agent.

    Example: vmsnap vm define web --disk vda=element://vmsnap-element/1 --disk vdb=file:///var/lib/web.qcow2
    """
    vm = VM(
        id=vm_id,
        name=name or vm_id,
        memory_mib=memory,
        volumes=tuple(_parse_disk(d) for d in disk),
    )
    labels, _ = parse_labels(label or [], allow_remove=False)
    defined = run(lambda host: host.define_vm(vm, agent=agent, project=project, labels=labels))
    _show_vm(defined, json_, labels)


@app.command("list")
def vm_list(json_: JsonOption = False) -> None:
    """VMs of all agents."""
    _show_vms(run(lambda host: host.list_labeled_vms()), json_)


@app.command("show")
def vm_show(vm_id: VmArg, json_: JsonOption = False) -> None:
    """One VM with its state and disks."""
    labeled = run(lambda host: host.get_labeled_vm(vm_id))
    _show_vm(labeled.vm, json_, labeled.labels)


@app.command("start")
def vm_start(vm_id: VmArg, json_: JsonOption = False) -> None:
    """Start a VM."""
    _show_vm(run(lambda host: host.start_vm(vm_id)), json_)


@app.command("stop")
def vm_stop(
    vm_id: VmArg,
    force: Annotated[bool, typer.Option("--force", help="Power off at once.")] = False,
    json_: JsonOption = False,
) -> None:
    """Stop a VM (a stopped VM stays stopped)."""
    _show_vm(run(lambda host: host.stop_vm(vm_id, force=force)), json_)


@app.command("undefine")
def vm_undefine(
    vm_id: VmArg,
    delete_snapshots: Annotated[
        bool,
        typer.Option(
            "--delete-snapshots", help="Delete the VM's snapshots first (else it must have none)."
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="Longest wait for the snapshots' deletes."),
    ] = 600.0,
    json_: JsonOption = False,
) -> None:
    """Remove a stopped VM from its agent (its disks stay).

    Example: vmsnap vm stop web && vmsnap vm undefine web --delete-snapshots
    """

    async def work(host: HostClient) -> UndefineResult:
        # One request_id for every call: each continues the same undefine.
        request_id = uuid.uuid4().hex
        give_up = time.monotonic() + timeout
        while True:
            result = await host.undefine_vm(
                vm_id, delete_snapshots=delete_snapshots, request_id=request_id
            )
            pending = [op for op in result.delete_operations if not op.done]
            if result.undefined or time.monotonic() >= give_up:
                return result
            for op in pending:
                await host.wait(op.id, timeout=max(0.0, give_up - time.monotonic()))

    result = run(work)
    if want_json(json_):
        out.print_json(result)
    if not result.undefined:
        running = [op.id for op in result.delete_operations if not op.done]
        fail(
            f"VM {vm_id} is not undefined yet: {len(running)} snapshot deletes still run "
            f"({', '.join(running[:5])}); follow them with `vmsnap operations show ID`",
            Exit.STILL_RUNNING,
        )
    if not want_json(json_):
        deleted = len(result.delete_operations)
        out.console.print(
            f"VM {vm_id} undefined" + (f" ({deleted} snapshots deleted)" if deleted else "")
        )


from vmsnap_host.cli._clone import vm_clone  # noqa: E402 - registered below

app.command("clone")(vm_clone)

from vmsnap_host.cli._freeze import freeze_app  # noqa: E402 - registered below

app.add_typer(freeze_app)  # vmsnap vm freeze VM --lease 10s -- COMMAND


@app.command("label")
def vm_label(
    vm_id: VmArg,
    changes: Annotated[
        list[str],
        typer.Argument(
            metavar="KEY=VALUE|KEY-", help="KEY=VALUE to set, KEY- to remove (as kubectl label)."
        ),
    ],
    json_: JsonOption = False,
) -> None:
    """Set or remove labels of a VM (policy selectors match them).

    Example: vmsnap vm label web tier=db backup=nightly old-
    """
    labels, remove = parse_labels(changes, allow_remove=True)
    now = run(lambda host: host.set_vm_labels(vm_id, labels, remove=remove))
    if want_json(json_):
        out.print_json(now)
    else:
        out.console.print(f"{vm_id}: {out.labels_text(now) or '(no labels)'}")
