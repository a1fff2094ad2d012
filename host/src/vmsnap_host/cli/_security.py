"""``vmsnap audit``, ``vmsnap auth`` and ``vmsnap certs``: the audit log, credentials
and the development CA of a stack on mutual TLS (issue 12)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vmsnap_host.cli import _output as out
from vmsnap_host.cli._common import JsonOption, fail, run, want_json
from vmsnap_host.client import read_token, vmsnap_home
from vmsnap_sdk.errors import VMSnapError

audit_app = typer.Typer(
    help="The audit log: who did what (admin).\n\nExample: vmsnap audit list --refused",
    no_args_is_help=True,
)
auth_app = typer.Typer(
    help="Credentials for a host with authentication on.\n\n"
    "Example: vmsnap auth hash-token /etc/vmsnap/token-ci",
    no_args_is_help=True,
)
certs_app = typer.Typer(
    help="Certificates for a stack on mutual TLS.\n\nExample: vmsnap certs init",
    no_args_is_help=True,
)


@audit_app.command("list")
def audit_list(
    principal: Annotated[str, typer.Option(help="Only this principal's calls.")] = "",
    project: Annotated[str, typer.Option(help="Only this project's.")] = "",
    refused: Annotated[bool, typer.Option("--refused", help="Only refused calls.")] = False,
    limit: Annotated[int, typer.Option(metavar="N", help="At most this many (newest first).")] = 50,
    json_: JsonOption = False,
) -> None:
    """Who did what: every mutating call and every refused one, newest first (admin)."""
    page = run(
        lambda host: host.list_audit_records(
            principal=principal, project=project, only_refused=refused, page_size=limit
        )
    )
    if want_json(json_):
        out.print_json(page.items)
    else:
        out.console.print(out.audit_table(page.items))


@auth_app.command("hash-token")
def auth_hash_token(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A file holding the token.")],
) -> None:
    """Print the SHA-256 of a token, for token_sha256 in [[auth.principals]]."""
    # Here, not at the top: the module imports PyJWT and cryptography, which no
    # other command needs (each `vmsnap` start would pay ~0.1 s for them).
    from vmsnap_host.auth.authenticate import token_sha256

    try:
        token = read_token(file)
    except VMSnapError as exc:
        fail(exc.message)
    print(token_sha256(token))


@certs_app.command("init")
def certs_init(
    home: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="vmsnap home (default: $VMSNAP_HOME or ~/.vmsnap)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Make a new CA and every certificate anew.")
    ] = False,
) -> None:
    """Make a development CA and a certificate for every process of the stack
    (host, drivers, agent) and the CLI's client certificate, in $VMSNAP_HOME/certs."""
    from vmsnap_host.cli._stack_commands import load_stack

    # The certificates are named after the stack's components (vmsnap-stack).
    stack = load_stack("certs init")
    layout = stack.Layout((home or vmsnap_home()).expanduser().resolve())
    directory = stack.certs_dir(layout)
    existed = {p.name for p in directory.glob("*.crt")} if directory.exists() else set()
    if force:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
        existed = set()
    stack.ensure_certs(layout, stack.Stack(layout).components)
    made = sorted(p.name for p in directory.glob("*.crt") if p.name not in existed)
    out.console.print(
        f"certificates in {directory}: "
        + (f"made {', '.join(made)}" if made else "all there already (--force makes them anew)")
    )
