"""Where the running vmsnap stack is: one rule shared by the client, the CLI and ``vmsnap up``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vmsnap_sdk import ClientTLS


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


def token_file(home: Path | None = None, name: str = "admin") -> Path:
    """Where ``vmsnap up --auth`` writes a principal's token in a vmsnap home."""
    return (home or vmsnap_home()) / "secrets" / f"token-{name}"


def default_token_file() -> Path | None:
    """``$VMSNAP_TOKEN_FILE``, else the local stack's admin token when it exists
    (only when no ``$VMSNAP_HOST`` points elsewhere), else None."""
    named = os.environ.get("VMSNAP_TOKEN_FILE")
    if named:
        return Path(named).expanduser()
    if os.environ.get("VMSNAP_HOST"):
        return None
    local = token_file()
    return local if local.is_file() else None


def stack_tls(server: str, home: Path | None = None) -> ClientTLS | None:
    """How the CLI reaches ``server`` ("host", a driver's or the agent's component
    name) of the local stack when it runs on mutual TLS (``vmsnap up --tls``):
    its CA and the ``admin`` client certificate; None when it does not."""
    home = home or vmsnap_home()
    try:
        tls = json.loads((home / "run" / "stack.json").read_text()).get("tls")
    except (OSError, ValueError, AttributeError):
        return None
    if tls is not True:
        return None
    certs = home / "certs"
    return ClientTLS(
        ca_file=str(certs / "ca.crt"),
        cert_file=str(certs / "admin.crt"),
        key_file=str(certs / "admin.key"),
        server_name=server,
    )
