"""The embedded stack of ``vmsnap up`` and ``vmsnap demo``: one component table
(:mod:`._table`: array emulators, reference drivers, the sim or QEMU agent, the
host), a supervisor that runs it (:mod:`._supervisor`), its ``--auth``/``--tls``
helpers (:mod:`._security`) and the two commands' bodies (:func:`run_up`,
:func:`run_demo`).

A distribution of its own (``vmsnap-stack``) so that the host distribution
imports no emulator: the ``vmsnap`` CLI of ``vmsnap-host`` imports this package
only inside ``up``, ``demo`` and ``certs init``.
"""

from vmsnap_stack._demo import run_demo
from vmsnap_stack._security import (
    Security,
    certs_dir,
    client_tls,
    ensure_certs,
    token_path,
)
from vmsnap_stack._supervisor import Stack, StackError, health_serving
from vmsnap_stack._table import DRIVERS, HYPERVISORS, Component, DriverEntry, Layout
from vmsnap_stack._up import run_up

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
    "run_demo",
    "run_up",
    "token_path",
]
