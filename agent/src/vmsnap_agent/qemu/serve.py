"""How ``vmsnap-agent --hypervisor qemu`` builds the agent (see ``vmsnap_agent.cli``)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from .agent import QemuAgent
from .guest_agent import DEFAULT_SYNC_TIMEOUT
from .hypervisor import QemuHypervisor
from .locators import LocatorMap
from .model import BootMode

#: The QEMU agent passes file descriptors to QEMU over its QMP socket (SCM_RIGHTS:
#: memory snapshots), which uvloop's transports do not expose: asyncio's own loop.
EVENT_LOOP = "asyncio"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="PREFIX=TARGET",
        help="rewrite volume locators starting with PREFIX to a path or NBD url "
        "(e.g. element://c1/=nbd://127.0.0.1:10809/); repeatable",
    )
    parser.add_argument(
        "--boot",
        choices=[str(b) for b in BootMode],
        default=str(BootMode.TEST_GUEST),
        help="what new VMs boot: the built-in test guest, or their first disk",
    )
    parser.add_argument(
        "--guest-agent-timeout",
        type=float,
        default=DEFAULT_SYNC_TIMEOUT,
        metavar="SECONDS",
        help="how long a silent qemu-ga is waited for before a guest freeze fails",
    )
    parser.add_argument(
        "--guest-agent-idle-close",
        type=_non_negative,
        default=None,
        metavar="SECONDS",
        help="close an unused qemu-ga connection after SECONDS (default: kept open, as "
        "libvirt does, so a freeze never waits for a new connection; QEMU serves one "
        "client on the port at a time: set this when another tool talks to qemu-ga)",
    )


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"must be 0..86400 seconds, not {text}")
    return value


async def create(args: argparse.Namespace) -> tuple[QemuAgent, Callable[[], Awaitable[None]]]:
    """The agent, re-attached to its VMs (expired leases resolved), and its closer."""
    # qemu.qmp logs every closed QMP connection at INFO; a VM that quits closes one.
    logging.getLogger("qemu.qmp").setLevel(logging.WARNING)
    hv = QemuHypervisor(
        Path(args.state),
        guest_sync_timeout=args.guest_agent_timeout,
        guest_agent_idle_close=args.guest_agent_idle_close,
    )
    await hv.open()
    agent = QemuAgent(
        hv,
        name=args.name or "qemu-1",
        locators=LocatorMap.parse(args.map),
        boot=BootMode(args.boot),
    )
    return agent, hv.close
