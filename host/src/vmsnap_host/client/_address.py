"""Where the running vmsnap stack is: one rule shared by the client, the CLI and ``vmsnap up``."""

from __future__ import annotations

import json
import os
from pathlib import Path


def vmsnap_home() -> Path:
    """``$VMSNAP_HOME``, default ``~/.vmsnap``."""
    return Path(os.environ.get("VMSNAP_HOME") or Path.home() / ".vmsnap").expanduser()


def host_socket(home: Path | None = None) -> Path:
    """The host's unix socket in a vmsnap home."""
    return (home or vmsnap_home()) / "run" / "host.sock"


def default_address() -> str:
    """``$VMSNAP_HOST``, else the host (or every replica) of the stack running in
    ``$VMSNAP_HOME`` (its ``run/stack.json``), else ``unix://$VMSNAP_HOME/run/host.sock``."""
    explicit = os.environ.get("VMSNAP_HOST")
    if explicit:
        return explicit
    try:
        stack = json.loads((vmsnap_home() / "run" / "stack.json").read_text())
    except (OSError, ValueError):
        stack = None
    hosts = stack.get("host") if isinstance(stack, dict) else None
    return hosts if isinstance(hosts, str) and hosts else f"unix://{host_socket()}"
