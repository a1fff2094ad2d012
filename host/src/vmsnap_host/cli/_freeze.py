"""``vmsnap vm freeze VM --lease 10s -- COMMAND``: run a command inside a freeze.

The CLI freezes the VM (FreezeVM), starts COMMAND, renews the freeze every third
of its lease while COMMAND runs, and thaws (ThawVM) when it exits; its exit code
is COMMAND's. When the freeze lapses (a renewal refused with FREEZE_EXPIRED, or
no renewal got through before the lease ran out — the host is down), the VM's
agent has thawed the VM by itself and its writes may have resumed: COMMAND is
told by SIGTERM (and a line on stderr), and the CLI exits with 75
(EX_TEMPFAIL: retry) whatever COMMAND returns. COMMAND finds the freeze in its
environment: VMSNAP_FREEZE_VM, VMSNAP_FREEZE_OPERATION, VMSNAP_FREEZE_CONSISTENCY
(CRASH, FILESYSTEM, APPLICATION) and VMSNAP_FREEZE_LEASE_SECONDS; the token
stays with the CLI (whoever holds it can thaw).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from typing import Annotated

import typer

from vmsnap_host.client import FreezeInfo, HostClient, QuiescePolicy
from vmsnap_sdk.errors import FailedPrecondition, NotFound, Reason, VMSnapError

#: Exit code when the freeze lapsed while COMMAND ran (sysexits EX_TEMPFAIL).
LAPSED_EXIT = 75
#: Exit code when the VM could not be frozen (COMMAND did not run).
NOT_FROZEN_EXIT = 1
#: How long COMMAND has to end after SIGTERM before SIGKILL.
TERM_GRACE = 10.0

_POLICIES = {
    "off": QuiescePolicy.OFF,
    "best-effort": QuiescePolicy.BEST_EFFORT,
    "required": QuiescePolicy.REQUIRED,
}
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "": 1.0}

freeze_app = typer.Typer()


def parse_lease(text: str) -> float:
    """``500ms``, ``10s``, ``2m`` or plain seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|)\s*", text)
    if match is None:
        raise typer.BadParameter(f"{text!r}: expected a duration such as 10s, 500ms or 2m")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _say(message: str) -> None:
    print(f"vmsnap: {message}", file=sys.stderr, flush=True)


class _Lapsed(Exception):
    """The freeze ended without a thaw by this CLI."""


async def _renew_until_lapsed(host: HostClient, info: FreezeInfo, lease: float) -> str:
    """Renew every third of the lease; return why the freeze lapsed (never returns
    while it holds). The lease is counted from when each renewal was *sent*."""
    held_until = time.monotonic() + lease  # FreezeVM was sent before now
    while True:
        await asyncio.sleep(lease / 3)
        sent = time.monotonic()
        try:
            await host.renew_freeze(info.token, lease, timeout=max(0.5, lease / 3))
        except (FailedPrecondition, NotFound) as exc:
            return exc.message
        except VMSnapError as exc:
            if time.monotonic() >= held_until:
                return (
                    f"no renewal got through before the lease ran out (last error: "
                    f"{exc.code.name}: {exc.message}); the VM's agent thaws it by itself"
                )
            continue
        held_until = sent + lease


async def _stop(child: asyncio.subprocess.Process) -> int:
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(child.wait(), TERM_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        return await child.wait()


def _exit_code(returncode: int) -> int:
    # A command killed by a signal: the shell's 128 + signal number.
    return returncode if returncode >= 0 else 128 - returncode


async def run_frozen(
    host: HostClient, vm_id: str, lease: float, policy: QuiescePolicy, command: list[str]
) -> int:
    """Freeze, run ``command``, renew, thaw; the exit code (see the module)."""
    try:
        info = await host.freeze_vm(vm_id, lease, quiesce=policy)
    except VMSnapError as exc:
        _say(f"could not freeze VM {vm_id}: {exc.code.name}: {exc.message}")
        return NOT_FROZEN_EXIT
    _say(
        f"VM {vm_id} frozen ({info.consistency.name.lower()} consistent, lease {lease:g} s, "
        f"operation {info.operation_id}); running {command[0]}"
        + (f" ({info.message})" if info.message else "")
    )
    env = dict(os.environ)
    env.update(
        VMSNAP_FREEZE_VM=vm_id,
        VMSNAP_FREEZE_OPERATION=info.operation_id,
        VMSNAP_FREEZE_CONSISTENCY=info.consistency.name,
        VMSNAP_FREEZE_LEASE_SECONDS=f"{lease:g}",
    )
    try:
        child = await asyncio.create_subprocess_exec(*command, env=env)
    except OSError as exc:
        _say(f"could not run {command[0]}: {exc}; thawing")
        with contextlib.suppress(VMSnapError):
            await host.thaw_vm(info.token)
        return 127
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        # Passed on: the command decides when to end; the thaw follows its end.
        loop.add_signal_handler(sig, child.send_signal, sig)
    renewals = asyncio.create_task(_renew_until_lapsed(host, info, lease))
    waiting = asyncio.create_task(child.wait())
    await asyncio.wait({renewals, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if not waiting.done():
        why = renewals.result()
        _say(
            f"the freeze of VM {vm_id} lapsed: {why}. The VM was thawed and its writes may "
            f"have resumed: sending SIGTERM to {command[0]}; its cut may not be consistent"
        )
        await _stop(child)
        await waiting
        return LAPSED_EXIT
    renewals.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await renewals
    code = _exit_code(waiting.result())
    try:
        frozen = await host.thaw_vm(info.token)
    except FailedPrecondition as exc:
        if exc.reason == Reason.FREEZE_EXPIRED:
            _say(f"{command[0]} ended, but {exc.message}")
            return LAPSED_EXIT
        raise
    except VMSnapError as exc:
        _say(
            f"{command[0]} ended inside the freeze, but the thaw was not confirmed "
            f"({exc.code.name}: {exc.message}); the VM's agent thaws it when the lease lapses"
        )
        return code
    _say(f"VM {vm_id} thawed after {frozen:.2f} s; {command[0]} exited with {code}")
    return code


@freeze_app.command("freeze")
def vm_freeze(
    vm_id: Annotated[str, typer.Argument(metavar="VM")],
    command: Annotated[list[str], typer.Argument(metavar="-- COMMAND [ARGS]...")],
    lease: Annotated[
        str, typer.Option(help="How long the freeze holds without a renewal: 1s .. 10m.")
    ] = "10s",
    quiesce: Annotated[str, typer.Option(help="off | best-effort | required")] = "best-effort",
) -> None:
    """Freeze a VM, run COMMAND inside the freeze, thaw when it exits.

    Exit code: COMMAND's; 75 when the freeze lapsed while it ran (COMMAND got
    SIGTERM: the VM's writes may have resumed); 1 when the VM could not be frozen."""
    from vmsnap_host.cli import _common as _app  # run, fail and the global options

    seconds = parse_lease(lease)
    if quiesce not in _POLICIES:
        _app.fail(f"--quiesce {quiesce!r}: choose off, best-effort or required")
    if not command:
        _app.fail("give the command to run after --")
    code = _app.run(lambda host: run_frozen(host, vm_id, seconds, _POLICIES[quiesce], command))
    raise typer.Exit(code)


__all__ = ["LAPSED_EXIT", "freeze_app", "parse_lease", "run_frozen"]
