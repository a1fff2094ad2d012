"""The ``vmsnap`` command line: the root app, its global options, and one
``add_typer`` line per command group (each group is its own module).

To add a group: write ``_<group>.py`` with ``app = typer.Typer(...)`` and add one
``app.add_typer(...)`` line below. Commands use :func:`._common.run` and
:func:`._common.fail`, which give one-line errors and the documented exit codes.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperOption

from vmsnap_host.cli import (
    _operations,
    _peers,
    _policy,
    _security,
    _snapshot,
    _stack_commands,
    _vm,
    _volume,
)
from vmsnap_host.cli._argv import hoist
from vmsnap_host.cli._common import Exit, exit_codes_epilog, fail, options
from vmsnap_host.cli._events import events

app = typer.Typer(
    name="vmsnap",
    help="Consistent VM snapshots across storage from several vendors.\n\n"
    "Global options (--host, --json, -o, --no-trunc, --tls-*, --token-file) are accepted anywhere "
    "on the line. Examples:\n\n"
    "  vmsnap up\n\n"
    "  vmsnap snapshot create web before-upgrade\n\n"
    "  vmsnap snapshot list web --json\n\n"
    "  vmsnap snapshot revert web/before-upgrade --stop-vm --host unix:///run/vmsnap/host.sock",
    epilog=exit_codes_epilog(),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(_vm.app, name="vm")
app.add_typer(_snapshot.app, name="snapshot")
app.add_typer(_volume.app, name="volume")
app.add_typer(_peers.drivers_app, name="drivers")
app.add_typer(_peers.agents_app, name="agents")
app.add_typer(_operations.operations_app, name="operations")
app.add_typer(_operations.findings_app, name="findings")
app.command()(_stack_commands.up)
app.command()(_stack_commands.demo)
app.command()(_operations.reconcile)
app.command("events")(events)
app.add_typer(_security.audit_app, name="audit")
app.add_typer(_security.auth_app, name="auth")
app.add_typer(_security.certs_app, name="certs")
app.add_typer(_policy.policy_app, name="policy")

_OUTPUTS = ("table", "wide", "json")


def _version(value: bool) -> None:
    if value:
        from importlib import metadata  # only here: it costs a noticeable part of start-up

        print(f"vmsnap {metadata.version('vmsnap-host')}")
        raise typer.Exit()


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
    json_: Annotated[
        bool, typer.Option("--json", help="Machine-readable output (full ids, every field).")
    ] = False,
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            metavar="table|wide|json",
            help="table (ids cut to 12 characters on a terminal), wide (whole ids and more "
            "columns) or json.",
        ),
    ] = "table",
    no_trunc: Annotated[
        bool, typer.Option("--no-trunc", help="Whole ids in tables (always so in a pipe).")
    ] = False,
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
    token_file: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            envvar="VMSNAP_TOKEN_FILE",
            help="Bearer token for a host with authentication on (default: $VMSNAP_TOKEN_FILE, "
            "else the admin token of the stack in $VMSNAP_HOME when it has one).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    if output not in _OUTPUTS:
        fail(f"-o {output!r}: choose table, wide or json", Exit.USAGE)
    options.host = host
    options.json = json_ or output == "json"
    options.wide = output == "wide"
    options.no_trunc = no_trunc
    options.tls_ca = tls_ca
    options.tls_cert = tls_cert
    options.tls_key = tls_key
    options.tls_server_name = tls_server_name
    options.token_file = token_file


def _readable_metavars(command: Any) -> None:
    """No ``<bool>``/``<str>`` in help: flags show no metavar, other options and
    arguments their upper-case name unless they set a better one."""
    for param in command.params:
        if isinstance(param, TyperOption):
            if param.is_flag:
                param.metavar = ""
            elif param.metavar is None:
                param.metavar = (param.name or "value").upper()
        elif isinstance(param, TyperArgument):
            # Typer's rich help adds the Python type beside an argument's name.
            setattr(param, "display_type_rich", lambda ctx: None)  # noqa: B010
    make_help = command.get_help_option

    def help_option(ctx: Any) -> Any:
        option = make_help(ctx)
        if option is not None:
            option.metavar = ""
        return option

    setattr(command, "get_help_option", help_option)  # noqa: B010
    for sub in getattr(command, "commands", {}).values():
        _readable_metavars(sub)


def command() -> Any:
    """The Click command tree of ``vmsnap`` (for tests and completion)."""
    root = typer.main.get_command(app)
    _readable_metavars(root)
    return root


def main() -> Any:
    """Entry point of the ``vmsnap`` console script."""
    root = command()
    try:
        return root.main(args=hoist(sys.argv[1:], root), prog_name="vmsnap")
    except KeyboardInterrupt:
        sys.exit(Exit.INTERRUPTED)
