"""``vmsnap drivers`` and ``vmsnap agents``: the storage drivers and hypervisor agents
the host has registered."""

from __future__ import annotations

from typing import Annotated

import typer

from vmsnap_host.cli import _output as out
from vmsnap_host.cli._common import JsonOption, run, want_json

drivers_app = typer.Typer(
    help="Registered storage drivers.",
    no_args_is_help=True,
    epilog="Example: vmsnap drivers register unix:///run/vmsnap/acme.sock --order 1",
)
agents_app = typer.Typer(
    help="Registered hypervisor agents.",
    no_args_is_help=True,
    epilog="Example: vmsnap agents register unix:///run/vmsnap/agent.sock",
)

AddressArg = Annotated[
    str, typer.Argument(metavar="ADDRESS", help="unix:///path.sock or 127.0.0.1:PORT")
]


@drivers_app.command("list")
def drivers_list(json_: JsonOption = False) -> None:
    """Registered storage drivers with health, versions and capabilities."""
    drivers = run(lambda host: host.list_drivers())
    if want_json(json_):
        out.print_json(drivers)
    else:
        out.console.print(out.driver_table(drivers))


@drivers_app.command("register")
def drivers_register(
    address: AddressArg,
    order: Annotated[int, typer.Option(metavar="N", help="Tie-break order (lower wins ties).")] = 0,
    json_: JsonOption = False,
) -> None:
    """Register (or update) a storage driver by address; the host checks that it answers."""
    driver = run(lambda host: host.register_driver(address, order=order))
    if want_json(json_):
        out.print_json(driver)
    else:
        out.console.print(out.driver_table([driver]))


@drivers_app.command("remove")
def drivers_remove(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Driver name (`vmsnap drivers list`).")
    ],
) -> None:
    """Forget a driver (idempotent)."""
    run(lambda host: host.remove_driver(name))


@agents_app.command("register")
def agents_register(address: AddressArg, json_: JsonOption = False) -> None:
    """Register (or update) a hypervisor agent by address; the host checks that it answers."""
    agent = run(lambda host: host.register_agent(address))
    if want_json(json_):
        out.print_json(agent)
    else:
        out.console.print(out.agent_table([agent]))


@agents_app.command("remove")
def agents_remove(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Agent name (`vmsnap agents list`).")],
) -> None:
    """Forget an agent (idempotent)."""
    run(lambda host: host.remove_agent(name))


@agents_app.command("list")
def agents_list(json_: JsonOption = False) -> None:
    """Registered hypervisor agents with health and versions."""
    agents = run(lambda host: host.list_agents())
    if want_json(json_):
        out.print_json(agents)
    else:
        out.console.print(out.agent_table(agents))
