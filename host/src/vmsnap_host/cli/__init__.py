"""The ``vmsnap`` command line (Typer + Rich).

``vmsnap up`` runs the embedded stack and ``vmsnap demo`` tells one snapshot's
story end to end (both from ``vmsnap-stack``, imported only when they run),
``volume`` makes test volumes on its emulated arrays, and
``vm``, ``snapshot``, ``drivers``, ``agents`` and ``operations`` drive a running
host through :mod:`vmsnap_host.client`. Every command finds the local stack
without flags (``--host`` overrides; global options go anywhere on the line);
read commands take ``--json``; errors are one line with the code, and the exit
status says which kind (``_common.EXIT_CODES``). One module per command group;
``_app`` registers them.
"""

from vmsnap_host.cli._app import app, main

__all__ = ["app", "main"]
