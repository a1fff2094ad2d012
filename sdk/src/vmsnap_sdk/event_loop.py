"""The event loop a vmsnap process runs on: uvloop where it is installed, else asyncio's.

uvloop (libuv underneath) runs the same asyncio program with less CPU per
callback, task, timer and socket event. The servers of a create (the host, the
sim agent, the drivers) spend most of their CPU in exactly those, in gRPC's
callbacks and the loop itself: with uvloop each of them used 6-13 % less CPU per
create in the bench (docs/design.md, "The event loop").

Every server takes ``--event-loop``:

- ``auto`` (the default): uvloop when it can be imported, else asyncio's loop;
- ``uvloop``: uvloop, or exit saying how to install it;
- ``asyncio``: the standard library's loop.

``VMSNAP_EVENT_LOOP`` sets the default for every process started from that
environment (``vmsnap up`` passes it on). A process whose code needs the
standard loop's real sockets runs on asyncio whatever is asked: the QEMU agent
hands file descriptors to QEMU over its QMP socket (SCM_RIGHTS), which uvloop's
transports do not expose.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

#: What ``--event-loop`` accepts.
CHOICES = ("auto", "uvloop", "asyncio")
#: The environment variable that sets ``--event-loop``'s default.
ENV = "VMSNAP_EVENT_LOOP"

_T = TypeVar("_T")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def default_choice() -> str:
    """``VMSNAP_EVENT_LOOP`` when set, else ``auto``."""
    return os.environ.get(ENV, "").strip().lower() or "auto"


def loop_factory(choice: str = "auto") -> LoopFactory:
    """The constructor of the loop ``choice`` names (see the module's doc).
    ValueError naming the flag and the variable for anything else, or for
    ``uvloop`` when it is not installed."""
    if choice == "asyncio":
        return asyncio.new_event_loop
    if choice not in CHOICES:
        raise ValueError(
            f"event loop {choice!r}: expected one of {', '.join(CHOICES)} "
            f"(--event-loop, or the {ENV} environment variable)"
        )
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError(
                "--event-loop uvloop: uvloop is not installed (pip install uvloop), "
                f"or use --event-loop asyncio (or {ENV}=asyncio)"
            ) from None
        return asyncio.new_event_loop
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, _T], factory: LoopFactory) -> _T:
    """``asyncio.run(main)`` on the loop ``factory`` makes (:func:`loop_factory`;
    for asyncio's, exactly ``asyncio.run``: the loop is also set as the thread's
    current loop)."""
    if factory is asyncio.new_event_loop:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def add_argument(parser: argparse.ArgumentParser) -> None:
    """``--event-loop``, its default from ``VMSNAP_EVENT_LOOP``."""
    parser.add_argument(
        "--event-loop",
        default=default_choice(),
        metavar="{" + ",".join(CHOICES) + "}",
        help=f"the event loop: uvloop when installed (auto, the default; {ENV} sets it), "
        "or asyncio's own",
    )


__all__ = ["CHOICES", "ENV", "LoopFactory", "add_argument", "default_choice", "loop_factory", "run"]
