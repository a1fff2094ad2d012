"""The embedded stack that ``vmsnap up`` and ``vmsnap demo`` run: a table and a supervisor."""

from vmsnap_host.cli.stack._supervisor import Stack, StackError, health_serving
from vmsnap_host.cli.stack._table import DRIVERS, HYPERVISORS, Component, DriverEntry, Layout

__all__ = [
    "DRIVERS",
    "HYPERVISORS",
    "Component",
    "DriverEntry",
    "Layout",
    "Stack",
    "StackError",
    "health_serving",
]
