"""``vmsnap-agent``: serve a hypervisor agent of the kind named by ``--hypervisor``.

The standard server flags (``--listen``, TLS, ``--grace``, logging) come from the
SDK. A kind is a module with ``add_arguments(parser)`` (its own flags) and
``async create(args) -> (agent, close)``; the table below is the one place to
add one. A kind whose module is not installed (or not written yet) exits with
a clear message instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from vmsnap_sdk import configure_logging, event_loop, serve_agent
from vmsnap_sdk.serve import add_server_arguments, loop_or_exit, server_tls_from_args

#: Hypervisor kind → module implementing it (imported only when chosen).
KINDS: dict[str, str] = {
    "sim": "vmsnap_agent.sim.serve",
    "qemu": "vmsnap_agent.qemu.serve",
}


def _load_kind(kind: str) -> Any:
    try:
        module = importlib.import_module(KINDS[kind])
    except ModuleNotFoundError as exc:
        sys.exit(
            f"vmsnap-agent: hypervisor {kind!r} is not available yet in this installation "
            f"(module {exc.name} is missing)"
        )
    if not hasattr(module, "create"):
        sys.exit(f"vmsnap-agent: hypervisor {kind!r} is not available yet")
    return module


def build_parser() -> argparse.ArgumentParser:
    """The flags common to every kind."""
    parser = argparse.ArgumentParser(
        prog="vmsnap-agent", description="Serve a vmsnap hypervisor agent."
    )
    add_server_arguments(parser)
    parser.add_argument(
        "--hypervisor", choices=sorted(KINDS), default="sim", help="kind of hypervisor"
    )
    parser.add_argument(
        "--state", required=True, metavar="DIR", help="directory of the agent's durable state"
    )
    parser.add_argument(
        "--name", default="", help="agent name reported to the host (default: sim-1)"
    )
    return parser


async def _serve(kind: Any, args: argparse.Namespace) -> None:
    agent, close = await kind.create(args)
    try:
        await serve_agent(
            agent,
            args.listen,
            tls=server_tls_from_args(args),
            grace_seconds=args.grace,
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            metrics_listen=args.metrics_listen,
        )
    finally:
        await close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    kind = _load_kind(known.hypervisor)
    kind.add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    # A kind that needs asyncio's own loop says so (the QEMU agent: SCM_RIGHTS on
    # its QMP socket, which uvloop's transports do not expose).
    choice = args.event_loop
    needs = getattr(kind, "EVENT_LOOP", "")
    if needs and choice not in ("auto", needs):
        sys.exit(
            f"vmsnap-agent: --hypervisor {known.hypervisor} runs on the {needs} event loop "
            f"(--event-loop {choice} was asked; pass --event-loop {needs} or auto)"
        )
    loop = loop_or_exit(needs or choice)  # exits saying what to pass when it cannot be had
    event_loop.run(_serve(kind, args), loop)


if __name__ == "__main__":
    main()
