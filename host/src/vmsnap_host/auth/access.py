"""The caller of the current call, what it may see, and what the audit records.

The interceptor opens a :class:`Call` for every call of the control API (a
context variable: each call runs in its own task); the servicer names the
object it touches (:func:`note`) and hides another project's object behind the
same NOT_FOUND as a missing one (:func:`hidden`), which marks the call refused
for the audit. Code that runs outside a call (tests of the manager, tools)
acts as :data:`~vmsnap_host.auth.principal.LOCAL`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from vmsnap_host.auth.principal import LOCAL, Principal
from vmsnap_sdk.errors import VMSnapError


@dataclass
class Call:
    """One call as the audit sees it (filled in while it runs)."""

    method: str
    peer: str = ""
    principal: Principal | None = None
    project: str = ""
    target: str = ""
    request_id: str = ""
    result: str = "OK"
    refused: bool = False
    detail: str = ""
    #: Writes this call's audit record (set by the interceptor); once only.
    recorder: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)
    #: Builds this call's audit record as a catalog write step, as the call stands
    #: (set by the interceptor for audited calls): see :func:`audit_with`.
    audit_step: Callable[[], Any] | None = field(default=None, repr=False)
    audited: bool = False


_CURRENT: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "vmsnap_host_call", default=None
)


def begin(call: Call) -> contextvars.Token[Call | None]:
    return _CURRENT.set(call)


def end(token: contextvars.Token[Call | None]) -> None:
    _CURRENT.reset(token)


def current() -> Call | None:
    return _CURRENT.get()


async def record() -> None:
    """Write the current call's audit record now, if not yet written.

    Called before a failed call's status is sent: grpc.aio sends an abort's
    status to the client before the handler unwinds, so a record written on the
    way out could land after the caller already saw the answer (and read the
    audit log without it)."""
    call = _CURRENT.get()
    if call is not None and call.recorder is not None and not call.audited:
        await call.recorder()


def caller() -> Principal:
    call = _CURRENT.get()
    return call.principal if call is not None and call.principal is not None else LOCAL


def sees(project: str) -> bool:
    return caller().sees(project)


def visible_projects() -> frozenset[str] | None:
    return caller().visible_projects()


def note(*, target: str = "", project: str = "", request_id: str = "") -> None:
    """Name what the current call is about (for its audit record)."""
    call = _CURRENT.get()
    if call is None:
        return
    if target:
        call.target = target
    if project:
        call.project = project
    if request_id:
        call.request_id = request_id


def hidden(error: VMSnapError, project: str, what: str) -> VMSnapError:
    """``error`` (the answer for a missing object) for an object of a project the
    caller does not see: the caller learns nothing; the audit says what happened."""
    call = _CURRENT.get()
    if call is not None:
        call.refused = True
        call.project = project
        call.detail = f"{what} belongs to project {project or '(none)'}, not the caller's"
    return error


def _nothing() -> None:
    return None


def audit_with() -> tuple[list[Any], Callable[[], None]]:
    """The current call's audit record as a write step, for a handler to commit in
    the transaction of its own first write (an admission: one fsync less per
    call), and what to call once that transaction has committed. The record says
    the call was admitted (OK): a call that ends otherwise without that write
    committing is audited on its way out as before. Nothing outside an audited
    call, or once audited."""
    call = _CURRENT.get()
    if call is None or call.audited or call.audit_step is None:
        return [], _nothing
    step = call.audit_step()

    def committed() -> None:
        call.audited = True

    return [step], committed


def failed(error: VMSnapError) -> None:
    """Record how the current call ended (its code and message)."""
    call = _CURRENT.get()
    if call is None:
        return
    call.result = error.code.name
    if not call.detail:
        call.detail = error.message


__all__ = [
    "Call",
    "audit_with",
    "begin",
    "caller",
    "current",
    "end",
    "failed",
    "hidden",
    "note",
    "sees",
    "visible_projects",
]
