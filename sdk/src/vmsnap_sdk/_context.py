"""The current call, as a driver or agent sees it (deadline, peer, method)."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CallContext:
    """Facts about the RPC being served. Read it with :func:`current_call`."""

    method: str
    peer: str = ""
    #: time.monotonic() value at which the caller gives up; None = no deadline.
    deadline: float | None = None
    metadata: dict[str, str] = field(default_factory=dict, repr=False)  # may hold a token

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline (None when it set none)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())


_CURRENT: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "vmsnap_call", default=None
)


def current_call() -> CallContext:
    """The call being served; outside a call, an empty context with no deadline."""
    return _CURRENT.get() or CallContext(method="")


def _set_call(ctx: CallContext) -> contextvars.Token[CallContext | None]:
    return _CURRENT.set(ctx)


def _reset_call(token: contextvars.Token[CallContext | None]) -> None:
    _CURRENT.reset(token)
