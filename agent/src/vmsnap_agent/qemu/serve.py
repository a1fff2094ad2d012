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


async def create(args: argparse.Namespace) -> tuple[QemuAgent, Callable[[], Awaitable[None]]]:
    """The agent, re-attached to its VMs (expired leases resolved), and its closer."""
    # qemu.qmp logs every closed QMP connection at INFO; a VM that quits closes one.
    logging.getLogger("qemu.qmp").setLevel(logging.WARNING)
    hv = QemuHypervisor(Path(args.state), guest_sync_timeout=args.guest_agent_timeout)
    await hv.open()
    agent = QemuAgent(
        hv,
        name=args.name or "qemu-1",
        locators=LocatorMap.parse(args.map),
        boot=BootMode(args.boot),
    )
    return agent, hv.close
