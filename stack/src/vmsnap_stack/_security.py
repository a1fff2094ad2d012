"""``vmsnap up --auth`` and ``--tls``: tokens, certificates, and what they add to the stack.

``--auth`` writes a random token for each of :data:`PRINCIPALS` into
``$VMSNAP_HOME/secrets/token-<name>`` (0600, made once, kept across starts) and
gives the host an ``[auth]`` table with their SHA-256 only. ``--tls`` makes a
development CA and a certificate per process in ``$VMSNAP_HOME/certs`` (once;
``vmsnap certs init`` does the same) and runs every gRPC process on mutual TLS:
drivers and the agent accept only clients the CA signed (the host), the host's
configuration pins each of them by server name and certificate fingerprint,
and the host accepts only clients the CA signed (the CLI's ``admin``
certificate, mapped to the admin principal when ``--auth`` is on too).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from vmsnap_sdk import ClientTLS
from vmsnap_stack import certs
from vmsnap_stack._table import Component, Layout

#: (name, role, projects) of the principals ``--auth`` makes.
PRINCIPALS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("admin", "admin", ("*",)),
    ("demo-a", "operator", ("demo-a",)),
    ("demo-b", "operator", ("demo-b",)),
)
#: The client certificate of the CLI (``--tls``).
CLIENT = "admin"
#: The roles of the stack that serve gRPC and get a certificate of their own.
TLS_ROLES = ("storage driver", "hypervisor agent", "host")


@dataclass(frozen=True)
class Security:
    auth: bool = False
    tls: bool = False


def token_path(layout: Layout, name: str) -> Path:
    return layout.secrets / f"token-{name}"


def ensure_tokens(layout: Layout) -> dict[str, str]:
    """name → token, generated once (0600 in the 0700 secrets directory)."""
    layout.secrets.mkdir(mode=0o700, parents=True, exist_ok=True)
    layout.secrets.chmod(0o700)
    out = {}
    for name, _, _ in PRINCIPALS:
        path = token_path(layout, name)
        token = path.read_text().strip() if path.exists() else ""
        if not token:
            token = secrets.token_urlsafe(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
        path.chmod(0o600)
        out[name] = token
    return out


def auth_toml(tokens: dict[str, str], *, tls: bool) -> list[str]:
    lines = ["[auth]", "required = true", ""]
    for name, role, projects in PRINCIPALS:
        digest = hashlib.sha256(tokens[name].encode()).hexdigest()
        lines += [
            "[[auth.principals]]",
            f'name = "{name}"',
            f'role = "{role}"',
            "projects = [" + ", ".join(f'"{p}"' for p in projects) + "]",
            f'token_sha256 = ["{digest}"]',
        ]
        if tls and name == CLIENT:
            lines.append(f'certificates = ["CN={CLIENT}"]')
        lines.append("")
    return lines


def certs_dir(layout: Layout) -> Path:
    return layout.home / "certs"


def ensure_certs(layout: Layout, components: Sequence[Component]) -> None:
    names = [c.name for c in components if c.role in TLS_ROLES]
    certs.init(certs_dir(layout), names, [CLIENT])


def client_tls(layout: Layout, server: str, *, as_: str = CLIENT) -> ClientTLS:
    """How a client of the stack reaches ``server`` on mutual TLS."""
    d = certs_dir(layout)
    return ClientTLS(
        ca_file=str(d / "ca.crt"),
        cert_file=str(d / f"{as_}.crt"),
        key_file=str(d / f"{as_}.key"),
        server_name=server,
    )


def with_tls(layout: Layout, component: Component) -> Component:
    """The component serving mutual TLS with its own certificate."""
    if component.role not in TLS_ROLES:
        return component
    d = certs_dir(layout)
    flags = (
        "--tls-cert",
        str(d / f"{component.name}.crt"),
        "--tls-key",
        str(d / f"{component.name}.key"),
        "--tls-client-ca",
        str(d / "ca.crt"),
    )
    argv = component.argv
    return replace(
        component,
        command=(*component.command, *flags),
        argv=(lambda: (*argv(), *flags)) if argv is not None else None,
        # The supervisor checks its health as the host would reach it.
        tls=client_tls(layout, component.name, as_="host"),
    )


def peer_tls_toml(layout: Layout, table: str, component: Component) -> list[str]:
    """The host's TLS table for reaching a driver or agent: its CA, the host's own
    certificate, and the peer pinned by name and fingerprint."""
    d = certs_dir(layout)
    return [
        f"[{table}.tls]",
        f'ca_file = "{d / "ca.crt"}"',
        f'cert_file = "{d / "host.crt"}"',
        f'key_file = "{d / "host.key"}"',
        f'server_name = "{component.name}"',
        f'pin_sha256 = "{certs.fingerprint(d / (component.name + ".crt"))}"',
    ]


__all__ = [
    "CLIENT",
    "PRINCIPALS",
    "Security",
    "auth_toml",
    "certs_dir",
    "client_tls",
    "ensure_certs",
    "ensure_tokens",
    "peer_tls_toml",
    "token_path",
    "with_tls",
]
