"""The ``vmsnap`` command line (Typer + Rich).

``vmsnap up`` runs the embedded stack, ``vmsnap demo`` tells one snapshot's
story end to end, and ``vm``, ``snapshot``, ``drivers``, ``agents`` and
``operations`` drive a running host through :mod:`vmsnap_host.client`. Every
command finds the local stack without flags (``--host`` overrides); read
commands take ``--json``; errors are one line with the code, exit status 1.
"""

from vmsnap_host.cli._app import app, main

__all__ = ["app", "main"]
