"""The embedded stack that ``vmsnap up`` and ``vmsnap demo`` run: a table and a supervisor."""

from vmsnap_host.cli.stack._security import (
    Security,
    certs_dir,
    client_tls,
    ensure_certs,
    token_path,
)
from vmsnap_host.cli.stack._supervisor import Stack, StackError, health_serving
from vmsnap_host.cli.stack._table import DRIVERS, HYPERVISORS, Component, DriverEntry, Layout

__all__ = [
    "DRIVERS",
    "HYPERVISORS",
    "Component",
    "DriverEntry",
    "Layout",
    "Security",
    "Stack",
    "StackError",
    "certs_dir",
    "client_tls",
    "ensure_certs",
    "health_serving",
    "token_path",
]
