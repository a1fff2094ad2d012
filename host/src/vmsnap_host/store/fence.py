"""The fencing token of the operation running in this task (docs/design.md, "Replicas").

An operation runs holding its VM's lease; the lease carries a fencing token
that grows on every acquisition. While :func:`fenced` is active (the manager
wraps each operation's work in it), every :meth:`Store.write` made by that
work — in its task or in tasks it starts, which inherit the context — first
checks, in the same transaction and with the lease row locked, that the lease
still has this owner and token. A replica that lost its lease (it stalled, the
lease ran out and another replica took the operation over) is refused with
:class:`~vmsnap_host.state.LeaseLost` before anything it writes lands.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field


class LeaseEnd:
    """The lease of one operation's run, released by the write that finishes it.

    The manager releases a VM's lease once its operation's work returns. Most
    operations end in one write that finishes them (``Store.w_finish``); while
    this is attached to the fence, :meth:`Store.write` adds the release to that
    transaction (one commit less per operation, docs/design.md "Calls on a take's
    path") and sets :attr:`released`, so the manager neither releases it again
    nor renews it."""

    __slots__ = ("operation_id", "released")

    def __init__(self, operation_id: str) -> None:
        self.operation_id = operation_id
        self.released = False


@dataclass(frozen=True)
class Fence:
    vm_id: str
    owner: str
    token: int
    #: Set by the manager around an operation's run (None: released by the caller).
    end: LeaseEnd | None = field(default=None, compare=False)


_CURRENT: ContextVar[Fence | None] = ContextVar("vmsnap_fence", default=None)


@contextmanager
def fenced(fence: Fence) -> Iterator[None]:
    """Check ``fence`` on every store write made in this context."""
    token = _CURRENT.set(fence)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_fence() -> Fence | None:
    return _CURRENT.get()


__all__ = ["Fence", "LeaseEnd", "current_fence", "fenced"]
