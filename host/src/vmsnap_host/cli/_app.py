"""The ``vmsnap`` command line: one Typer app, each command a thin layer over HostClient."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from vmsnap_host.cli import _output as out
from vmsnap_host.cli._demo import run_demo
from vmsnap_host.cli._progress import follow
from vmsnap_host.cli._up import run_up
from vmsnap_host.client import (
    HostClient,
    Operation,
    QuiescePolicy,
    UndefineResult,
    default_address,
    vmsnap_home,
)
from vmsnap_sdk import VM, ClientTLS, Volume
from vmsnap_sdk.errors import Unavailable, VMSnapError

_T = TypeVar("_T")

app = typer.Typer(
    name="vmsnap",
    help="Consistent VM snapshots across storage from several vendors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
vm_app = typer.Typer(help="VMs (passed through to their hypervisor agents).", no_args_is_help=True)
snapshot_app = typer.Typer(help="VM snapshots.", no_args_is_help=True)
drivers_app = typer.Typer(help="Registered storage drivers.", no_args_is_help=True)
agents_app = typer.Typer(help="Registered hypervisor agents.", no_args_is_help=True)
operations_app = typer.Typer(help="Long-running operations.", no_args_is_help=True)
findings_app = typer.Typer(help="What the reconciler found and did.", no_args_is_help=True)
app.add_typer(vm_app, name="vm")
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(drivers_app, name="drivers")
app.add_typer(agents_app, name="agents")
app.add_typer(operations_app, name="operations")
app.add_typer(findings_app, name="findings")

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

_state: dict[str, str | None] = {
    "host": None,
    "tls_ca": None,
    "tls_cert": None,
    "tls_key": None,
    "tls_server_name": None,
}


@app.callback()
def _root(
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            metavar="ADDRESS",
            help="Host address, or several replicas' separated by commas, or a dns: name "
            "(default: $VMSNAP_HOST, else the stack in $VMSNAP_HOME).",
        ),
    ] = None,
    tls_ca: Annotated[
        str | None, typer.Option(metavar="FILE", help="PEM CA of a host that serves TLS.")
    ] = None,
    tls_cert: Annotated[
        str | None, typer.Option(metavar="FILE", help="PEM client certificate (mutual TLS).")
    ] = None,
    tls_key: Annotated[
        str | None, typer.Option(metavar="FILE", help="PEM client key (mutual TLS).")
    ] = None,
    tls_server_name: Annotated[
        str | None, typer.Option(metavar="NAME", help="Expected name in the host's certificate.")
    ] = None,
) -> None:
    _state.update(
        host=host,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_server_name=tls_server_name,
    )


def _tls() -> ClientTLS | None:
    if not (_state["tls_ca"] or _state["tls_cert"] or _state["tls_key"]):
        return None
    if bool(_state["tls_cert"]) != bool(_state["tls_key"]):
        fail("--tls-cert and --tls-key go together")
    return ClientTLS(
        ca_file=_state["tls_ca"],
        cert_file=_state["tls_cert"],
        key_file=_state["tls_key"],
        server_name=_state["tls_server_name"],
    )


def fail(message: str, code: int = 1) -> NoReturn:
    """One clear line on stderr, then a non-zero exit."""
    out.errors.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run(work: Callable[[HostClient], Awaitable[_T]]) -> _T:
    """Connect to the host, run ``work``, turn any failure into one line and exit 1."""
    address = _state["host"] or default_address()
    tls = _tls()

    async def main() -> _T:
        async with HostClient.connect(address, tls) as host:
            return await work(host)

    try:
        return asyncio.run(main())
    except Unavailable as exc:
        fail(
            f"UNAVAILABLE: no vmsnap host answers at {address} ({exc.message}); "
            "start one with `vmsnap up`, or pass --host"
        )
    except VMSnapError as exc:
        fail(f"{exc.code.name}: {exc.message}")


# --- the stack ---------------------------------------------------------------------------


@app.command()
def up(
    home: Annotated[
        Path | None, typer.Option(help="vmsnap home (default: $VMSNAP_HOME or ~/.vmsnap).")
    ] = None,
    hypervisor: Annotated[
        str,
        typer.Option(
            help="Hypervisor agent to run: sim, or qemu (real guests on the Element and "
            "ONTAP emulators with the reference drivers)."
        ),
    ] = "sim",
    replicas: Annotated[
        int,
        typer.Option(
            min=1,
            max=9,
            help="Host replicas to run (more than one needs --db postgres); clients "
            "reach them all and fail over.",
        ),
    ] = 1,
    db: Annotated[
        str,
        typer.Option(
            help="The catalog: sqlite (a file in the home), or postgres (a PostgreSQL "
            "server of the stack's own, from Debian's postgresql package)."
        ),
    ] = "sqlite",
) -> None:
    """Run the embedded stack until Ctrl-C or SIGTERM: array emulators, drivers, agent, host."""
    sys.exit(run_up((home or vmsnap_home()).expanduser().resolve(), hypervisor, replicas, db))


@app.command()
def demo(
    hypervisor: Annotated[
        str,
        typer.Option(
            help="Hypervisor agent of a stack started for the demo: sim, or qemu (a real "
            "guest writes on its disks)."
        ),
    ] = "sim",
    memory: Annotated[
        bool,
        typer.Option(
            "--memory",
            help="Include the VM's RAM: paused with its memory saved while the arrays cut, "
            "reverted back to RUNNING.",
        ),
    ] = False,
) -> None:
    """Tell the story of one VM snapshot across two vendors and a local disk; exit 0 if all went right."""
    sys.exit(run_demo(_state["host"], hypervisor, memory))


# --- VMs -------------------------------------------------------------------------------------


def _parse_disk(spec: str) -> Volume:
    """``vda=ontap://svm/vol/path[,size=BYTES][,format=qcow2]``."""
    disk, sep, rest = spec.partition("=")
    if not sep or not rest:
        fail(f"--disk {spec!r}: expected DISK=LOCATOR[,size=BYTES][,format=raw|qcow2]")
    locator, *options = rest.split(",")
    size, fmt = 0, "raw"
    for option in options:
        key, _, value = option.partition("=")
        if key == "size" and value.isdigit():
            size = int(value)
        elif key == "format" and value in ("raw", "qcow2"):
            fmt = value
        else:
            fail(f"--disk {spec!r}: unknown option {option!r} (size=BYTES, format=raw|qcow2)")
    return Volume(disk=disk, locator=locator, size_bytes=size, format=fmt)


@vm_app.command("define")
def vm_define(
    vm_id: Annotated[str, typer.Argument(help="VM id.")],
    *,
    disk: Annotated[
        list[str],
        typer.Option(help="DISK=LOCATOR[,size=BYTES][,format=raw|qcow2]; repeat per disk."),
    ],
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    memory: Annotated[int, typer.Option(help="Memory in MiB.")] = 1024,
    agent: Annotated[str, typer.Option(help="Agent to define it on (when several).")] = "",
    json_: JsonOption = False,
) -> None:
    """Define a VM on a hypervisor agent."""
    vm = VM(
        id=vm_id,
        name=name or vm_id,
        memory_mib=memory,
        volumes=tuple(_parse_disk(d) for d in disk),
    )
    defined = run(lambda host: host.define_vm(vm, agent=agent))
    _show_vm(defined, json_)


def _show_vms(vms: list[VM], json_: bool) -> None:
    if json_:
        out.print_json(vms)
    else:
        out.console.print(out.vm_table(vms))


def _show_vm(vm: VM, json_: bool) -> None:
    if json_:
        out.print_json(vm)
    else:
        out.console.print(out.vm_table([vm]))


@vm_app.command("list")
def vm_list(json_: JsonOption = False) -> None:
    """VMs of all agents."""
    _show_vms(run(lambda host: host.list_vms()), json_)


@vm_app.command("show")
def vm_show(vm_id: str, json_: JsonOption = False) -> None:
    """One VM with its state and disks."""
    _show_vm(run(lambda host: host.get_vm(vm_id)), json_)


@vm_app.command("start")
def vm_start(vm_id: str, json_: JsonOption = False) -> None:
    """Start a VM."""
    _show_vm(run(lambda host: host.start_vm(vm_id)), json_)


@vm_app.command("stop")
def vm_stop(
    vm_id: str,
    force: Annotated[bool, typer.Option(help="Power off at once.")] = False,
    json_: JsonOption = False,
) -> None:
    """Stop a VM."""
    _show_vm(run(lambda host: host.stop_vm(vm_id, force=force)), json_)


@vm_app.command("undefine")
def vm_undefine(
    vm_id: str,
    delete_snapshots: Annotated[
        bool,
        typer.Option(
            "--delete-snapshots", help="Delete the VM's snapshots first (else it must have none)."
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Longest wait for the snapshots' deletes, seconds.")
    ] = 600.0,
    json_: JsonOption = False,
) -> None:
    """Remove a stopped VM from its agent (its disks stay)."""

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
    if json_:
        out.print_json(result)
    if not result.undefined:
        running = [op.id for op in result.delete_operations if not op.done]
        fail(
            f"VM {vm_id} is not undefined yet: {len(running)} snapshot deletes still run "
            f"({', '.join(running[:5])}); follow them with `vmsnap operations show ID`"
        )
    if not json_:
        deleted = len(result.delete_operations)
        out.console.print(
            f"VM {vm_id} undefined" + (f" ({deleted} snapshots deleted)" if deleted else "")
        )


# --- snapshots ------------------------------------------------------------------------------

NoWait = Annotated[
    bool, typer.Option("--no-wait", help="Print the operation id and return at once.")
]
Timeout = Annotated[float, typer.Option(help="Longest wait for the operation, seconds.")]


def _finish(op: Operation, json_: bool) -> None:
    if json_:
        out.print_json(op)
    elif op.vm_snapshot is not None:
        out.show_snapshot(op.vm_snapshot)
    if not op.done:
        fail(
            f"operation {op.id} is still running ({op.step}); follow it with `vmsnap operations show {op.id}`"
        )
    if op.error is not None:
        fail(f"{op.error.code.name}: {op.error.message} (operation {op.id})")


def _mutate(
    start: Callable[[HostClient], Awaitable[Operation]], no_wait: bool, timeout: float, json_: bool
) -> None:
    async def work(host: HostClient) -> Operation:
        started = await start(host)
        if no_wait:
            return started
        return await follow(host, started, timeout, quiet=json_)

    op = run(work)
    if no_wait:
        if json_:
            out.print_json(op)
        else:
            print(op.id)
        return
    _finish(op, json_)


#: How long `snapshot create` lets the host wait inside the Create call: most takes
#: end within it (one round trip); a longer one is then followed with progress.
CREATE_WAIT = 2.0

_POLICIES = {
    "off": QuiescePolicy.OFF,
    "best-effort": QuiescePolicy.BEST_EFFORT,
    "required": QuiescePolicy.REQUIRED,
}


@snapshot_app.command("create")
def snapshot_create(
    vm_id: str,
    name: str,
    *,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    memory: Annotated[
        bool, typer.Option("--memory", help="Include the RAM (with disks on arrays the VM is paused while they cut).")
    ] = False,
    quiesce: Annotated[str, typer.Option(help="off | best-effort | required")] = "best-effort",
    param: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE passed to the drivers.")
    ] = None,
    request_id: Annotated[str | None, typer.Option(help="Client id for a safe retry.")] = None,
    no_wait: NoWait = False,
    timeout: Timeout = 600.0,
    json_: JsonOption = False,
) -> None:
    """Take a VM snapshot (shows progress; --no-wait prints the operation id)."""
    if quiesce not in _POLICIES:
        fail(f"--quiesce {quiesce!r}: choose off, best-effort or required")
    parameters = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--param {item!r}: expected KEY=VALUE")
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
            wait=None if no_wait else min(CREATE_WAIT, timeout),
        ),
        no_wait,
        timeout,
        json_,
    )


@snapshot_app.command("revert")
def snapshot_revert(
    snapshot_id: str,
    *,
    stop_vm: Annotated[bool, typer.Option("--stop-vm", help="Stop a running VM first.")] = False,
    request_id: Annotated[str | None, typer.Option(help="Client id for a safe retry.")] = None,
    no_wait: NoWait = False,
    timeout: Timeout = 600.0,
    json_: JsonOption = False,
) -> None:
    """Revert a VM to a snapshot."""
    _mutate(
        lambda host: host.revert_vm_snapshot(snapshot_id, stop_vm=stop_vm, request_id=request_id),
        no_wait,
        timeout,
        json_,
    )


@snapshot_app.command("delete")
def snapshot_delete(
    snapshot_id: str,
    request_id: Annotated[str | None, typer.Option(help="Client id for a safe retry.")] = None,
    no_wait: NoWait = False,
    timeout: Timeout = 600.0,
    json_: JsonOption = False,
) -> None:
    """Delete a VM snapshot everywhere."""
    _mutate(
        lambda host: host.delete_vm_snapshot(snapshot_id, request_id=request_id),
        no_wait,
        timeout,
        json_,
    )


@snapshot_app.command("list")
def snapshot_list(
    vm: Annotated[str, typer.Option(help="Only this VM.")] = "",
    all_: Annotated[bool, typer.Option("--all", help="Include removed snapshots.")] = False,
    json_: JsonOption = False,
) -> None:
    """VM snapshots, oldest first."""
    snapshots = run(lambda host: host.all_vm_snapshots(vm, show_removed=all_))
    if json_:
        out.print_json(snapshots)
    else:
        out.console.print(out.snapshot_table(snapshots))


@snapshot_app.command("show")
def snapshot_show(snapshot_id: str, json_: JsonOption = False) -> None:
    """A VM snapshot with its plan, freeze window and consistency."""
    snapshot = run(lambda host: host.get_vm_snapshot(snapshot_id))
    if json_:
        out.print_json(snapshot)
    else:
        out.show_snapshot(snapshot)


# --- drivers, agents, operations ---------------------------------------------------------------


@drivers_app.command("list")
def drivers_list(json_: JsonOption = False) -> None:
    """Registered storage drivers with health, versions and capabilities."""
    drivers = run(lambda host: host.list_drivers())
    if json_:
        out.print_json(drivers)
    else:
        out.console.print(out.driver_table(drivers))


@drivers_app.command("register")
def drivers_register(
    address: Annotated[str, typer.Argument(help="unix:///path.sock or 127.0.0.1:PORT")],
    order: Annotated[int, typer.Option(help="Tie-break order (lower wins ties).")] = 0,
    json_: JsonOption = False,
) -> None:
    """Register (or update) a storage driver by address."""
    driver = run(lambda host: host.register_driver(address, order=order))
    if json_:
        out.print_json(driver)
    else:
        out.console.print(out.driver_table([driver]))


@drivers_app.command("remove")
def drivers_remove(name: str) -> None:
    """Forget a driver (idempotent)."""
    run(lambda host: host.remove_driver(name))


@agents_app.command("register")
def agents_register(
    address: Annotated[str, typer.Argument(help="unix:///path.sock or 127.0.0.1:PORT")],
    json_: JsonOption = False,
) -> None:
    """Register (or update) a hypervisor agent by address."""
    agent = run(lambda host: host.register_agent(address))
    if json_:
        out.print_json(agent)
    else:
        out.console.print(out.agent_table([agent]))


@agents_app.command("remove")
def agents_remove(name: str) -> None:
    """Forget an agent (idempotent)."""
    run(lambda host: host.remove_agent(name))


@agents_app.command("list")
def agents_list(json_: JsonOption = False) -> None:
    """Registered hypervisor agents with health and versions."""
    agents = run(lambda host: host.list_agents())
    if json_:
        out.print_json(agents)
    else:
        out.console.print(out.agent_table(agents))


@operations_app.command("list")
def operations_list(
    vm: Annotated[str, typer.Option(help="Only this VM.")] = "",
    running: Annotated[bool, typer.Option("--running", help="Only operations not done.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 50,
    json_: JsonOption = False,
) -> None:
    """Operations, newest first."""
    page = run(lambda host: host.list_operations(vm, only_running=running, page_size=limit))
    if json_:
        out.print_json(page.items)
    else:
        out.console.print(out.operation_table(page.items))


@operations_app.command("show")
def operations_show(operation_id: str, json_: JsonOption = False) -> None:
    """One operation (and its VM snapshot as it stands)."""
    op = run(lambda host: host.get_operation(operation_id))
    if json_:
        out.print_json(op)
        return
    out.console.print(out.operation_table([op]))
    if op.vm_snapshot is not None:
        out.show_snapshot(op.vm_snapshot)


# --- reconciliation -------------------------------------------------------------------------


@app.command()
def reconcile(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report: delete, mark and thaw nothing.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Longest wait for the pass, seconds.")] = 300.0,
    json_: JsonOption = False,
) -> None:
    """Compare every driver's and agent's objects with the catalog now, and repair.

    Orphans older than host.orphan_grace_seconds are deleted, READY
    snapshots whose objects vanished are marked, freezes of finished
    operations are thawed. The findings are kept: `vmsnap findings list`.
    """
    report = run(lambda host: host.reconcile(dry_run, timeout=timeout))
    if json_:
        out.print_json(report)
        return
    if not report.findings:
        out.console.print("nothing to reconcile: every object matches the catalog")
        return
    out.console.print(out.finding_table(report.findings))
    if report.omitted:
        out.console.print(f"{report.omitted} more findings: `vmsnap findings list`")


@findings_app.command("list")
def findings_list(
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 50,
    json_: JsonOption = False,
) -> None:
    """Findings the reconciler kept, newest first."""
    page = run(lambda host: host.list_findings(page_size=limit))
    if json_:
        out.print_json(page.items)
    else:
        out.console.print(out.finding_table(page.items, with_time=True))


def main() -> Any:
    """Entry point of the ``vmsnap`` console script."""
    return app()
