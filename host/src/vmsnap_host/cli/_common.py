"""What every command of the ``vmsnap`` CLI shares: global options, the host
connection, one-line errors and the exit codes they map to.

A command group is a module with its own ``typer.Typer``; it calls :func:`run`
to talk to the host and :func:`fail` to stop with a message. Both turn a
failure into one line on stderr that names the CLI's commands and flags (never
an RPC or a proto field) and an exit code from :data:`EXIT_CODES`, so scripts
can tell "not there" from "refused" from "try again later".
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, NoReturn, TypeVar

import grpc
import typer
from rich.markup import escape

from vmsnap_host.cli import _output as out
from vmsnap_host.cli._hints import cli_words
from vmsnap_host.client import HostClient, default_address
from vmsnap_sdk import ClientTLS
from vmsnap_sdk.errors import (
    PermissionDenied,
    Reason,
    Unauthenticated,
    Unavailable,
    VMSnapError,
)

_T = TypeVar("_T")


class Exit(IntEnum):
    """The exit codes of ``vmsnap`` (one table: README, ``--help``, tests)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    REFUSED = 4
    UNAVAILABLE = 5
    STILL_RUNNING = 6
    INTERRUPTED = 130


#: (code, name, when) — the table shown in ``vmsnap --help`` and the README.
EXIT_CODES: tuple[tuple[Exit, str], ...] = (
    (Exit.OK, "done"),
    (Exit.FAILED, "failed: the operation ended in error, or an internal error"),
    (
        Exit.USAGE,
        "usage: a bad command line, an argument the host refused, an ambiguous id prefix, "
        "up/demo without vmsnap-stack installed",
    ),
    (Exit.NOT_FOUND, "not found: no such VM, snapshot, operation, driver or agent"),
    (Exit.REFUSED, "refused: the state does not allow it (VM running, name in use, limit, …)"),
    (
        Exit.UNAVAILABLE,
        "unavailable: no host answers, or the host could not reach a driver or "
        "agent, or is busy; the same command may work later",
    ),
    (Exit.STILL_RUNNING, "still running: --timeout passed before the operation ended"),
    (Exit.INTERRUPTED, "interrupted (Ctrl-C)"),
)

_BY_CODE: dict[grpc.StatusCode, Exit] = {
    grpc.StatusCode.INVALID_ARGUMENT: Exit.USAGE,
    grpc.StatusCode.OUT_OF_RANGE: Exit.USAGE,
    grpc.StatusCode.NOT_FOUND: Exit.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: Exit.REFUSED,
    grpc.StatusCode.FAILED_PRECONDITION: Exit.REFUSED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Exit.REFUSED,
    grpc.StatusCode.UNIMPLEMENTED: Exit.REFUSED,
    grpc.StatusCode.PERMISSION_DENIED: Exit.REFUSED,
    grpc.StatusCode.UNAUTHENTICATED: Exit.REFUSED,
    grpc.StatusCode.UNAVAILABLE: Exit.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Exit.UNAVAILABLE,
    grpc.StatusCode.ABORTED: Exit.UNAVAILABLE,
    grpc.StatusCode.CANCELLED: Exit.UNAVAILABLE,
}


def exit_code(code: grpc.StatusCode) -> Exit:
    """The exit code for an error with this gRPC status code."""
    return _BY_CODE.get(code, Exit.FAILED)


def exit_codes_epilog() -> str:
    """The exit-code table as ``--help`` shows it."""
    rows = "\n\n".join(f"  {int(code):>3}  {text}" for code, text in EXIT_CODES)
    return f"Exit codes:\n\n{rows}"


@dataclass
class Options:
    """The global options (accepted anywhere on the line: see ``_argv.hoist``)."""

    host: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None
    token_file: str | None = None
    json: bool = False
    wide: bool = False
    no_trunc: bool = False


options = Options()

JsonOption = Annotated[
    bool, typer.Option("--json", help="Machine-readable output (full ids, every field).")
]


def want_json(json_: bool) -> bool:
    """Whether to print JSON: the command's ``--json`` or the global one."""
    return json_ or options.json


def full_ids() -> bool:
    """Whether tables show whole ids: ``-o wide``, ``--no-trunc`` or stdout not a terminal."""
    return options.wide or options.no_trunc or not out.console.is_terminal


def fail(message: str, code: int = Exit.FAILED) -> NoReturn:
    """One clear line on stderr, then exit with ``code``. The message is printed as
    written: a host's ``[[agents]]`` is no Rich markup."""
    out.errors.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(int(code))


def fail_error(exc: VMSnapError) -> NoReturn:
    """A host's (or driver's) error as one line in the CLI's words, with the exit code
    of its status code."""
    fail(f"{exc.code.name}: {cli_words(exc.message)}", exit_code(exc.code))


def tls() -> ClientTLS | None:
    if not (options.tls_ca or options.tls_cert or options.tls_key):
        return None
    if bool(options.tls_cert) != bool(options.tls_key):
        fail("--tls-cert and --tls-key go together", Exit.USAGE)
    return ClientTLS(
        ca_file=options.tls_ca,
        cert_file=options.tls_cert,
        key_file=options.tls_key,
        server_name=options.tls_server_name,
    )


def address() -> str:
    return options.host or default_address()


def run(
    work: Callable[[HostClient], Awaitable[_T]],
    on_interrupt: Callable[[], NoReturn] | None = None,
) -> _T:
    """Connect to the host, run ``work``, turn any failure into one line and its exit code.

    An UNAVAILABLE is the host's own answer (a driver or agent it could not
    reach, its catalog) when it carries a vmsnap reason or the host answers its
    health check; only when neither holds does the message say no host answers.
    """
    target = address()
    credentials = tls()

    async def main() -> _T:
        # options.host, not target: without --host the client also finds the local
        # stack's TLS settings and admin token (vmsnap up --tls/--auth).
        async with HostClient.connect(
            options.host, credentials, token_file=options.token_file
        ) as host:
            try:
                return await work(host)
            except Unavailable as exc:
                if exc.reason == Reason.UNAVAILABLE and not await host.serving(timeout=2.0):
                    raise _NoHost(exc.message) from exc
                raise

    try:
        return asyncio.run(main())
    except _NoHost as exc:
        fail(
            f"UNAVAILABLE: no vmsnap host answers at {target} ({exc}); "
            "start one with `vmsnap up`, or pass --host",
            Exit.UNAVAILABLE,
        )
    except Unauthenticated as exc:
        fail(
            f"UNAUTHENTICATED: the host at {target} refused the call: {exc.message}. "
            "Pass --token-file FILE (or set VMSNAP_TOKEN_FILE), or a client certificate "
            "(--tls-cert, --tls-key)",
            Exit.REFUSED,
        )
    except PermissionDenied as exc:
        fail(
            f"PERMISSION_DENIED: the host at {target} refused the call: {exc.message}", Exit.REFUSED
        )
    except VMSnapError as exc:
        fail_error(exc)
    except KeyboardInterrupt:
        if on_interrupt is not None:
            on_interrupt()
        fail("interrupted", Exit.INTERRUPTED)


def hint_host() -> str:
    """`` --host ADDRESS`` when one was given, for commands a hint shows."""
    return f" --host {options.host}" if options.host else ""


class _NoHost(Exception):
    """The host itself did not answer."""
