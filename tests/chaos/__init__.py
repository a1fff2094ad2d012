"""The chaos harness: random operations on the real stack while its processes are killed.

    python -m tests.chaos --ops N --kills K --seed S [--json FILE] [--qemu]

Runs the host, both reference drivers with their array emulators and the sim
agent (or, with ``--qemu``, the QEMU agent) as real processes on unix sockets
and loopback, drives create / revert / delete on several VMs as a control plane
does, SIGKILLs random processes at random points and restarts them, then checks
the invariants of issue 10 (:mod:`tests.chaos.checks`). Knobs: :mod:`tests.chaos.knobs`.
"""
