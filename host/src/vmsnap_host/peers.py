"""Where the host may reach drivers and agents, which TLS files it may read for
them, and how it checks that a peer is the one its registration pins.

A registration through the API is the input of a remote caller: its address
must not make the host connect anywhere (a DNS name resolved by whoever runs
DNS, a network the operator never meant), and its TLS paths must not make the
host read, or tell about, any file it can read. So:

- addresses are ``unix:///abs/path.sock`` or ``HOST:PORT``, where HOST is an IP
  address inside :attr:`PeerPolicy.networks` (default: loopback) or a name in
  :attr:`PeerPolicy.names` (default: ``localhost``); gRPC's other schemes
  (``dns:``, ``ipv4:``, ``unix-abstract:``, ``vsock:``) are refused;
- TLS file paths are at most 255 bytes and, once symlinks are resolved, inside
  :attr:`PeerPolicy.tls_dirs` (none by default: the API takes no TLS files
  until the operator allows a directory); a path outside, missing or unreadable
  gets one and the same message, so the API is no oracle of which files exist;
- ``pin_sha256`` pins the peer's certificate (SHA-256 of its DER): the host
  makes its own TLS handshake to the peer, with the same CA and client
  certificate, and compares (:func:`check_pin`) at registration and at every
  health check. gRPC's Python API does not expose the certificate of the
  connection it made, so the pin is checked on a connection of its own; the
  CA and the server name are checked by gRPC on every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vmsnap_sdk import ClientTLS

#: Longest TLS file path the API accepts, in bytes (NAME_MAX: longer names make
#: the kernel fail the lookup with ENAMETOOLONG).
MAX_TLS_PATH = 255
#: Longest address, in chars.
MAX_ADDRESS = 1024
#: Longest unix socket path the kernel accepts (sun_path is 108 bytes with the NUL).
MAX_SOCKET_PATH = 107
MAX_SERVER_NAME = 253

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_PIN = re.compile(r"^[0-9a-f]{64}$")


class PolicyError(ValueError):
    """An input breaks the peer policy; the message names the field and the rule."""


def _control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


@dataclass(frozen=True)
class PeerPolicy:
    networks: tuple[IPNetwork, ...] = LOOPBACK
    names: tuple[str, ...] = ("localhost",)
    tls_dirs: tuple[Path, ...] = ()

    # --- addresses --------------------------------------------------------------

    def address(self, where: str, address: object) -> str:
        """``address`` when the host may reach it, else PolicyError naming ``where``."""
        if not isinstance(address, str) or not address:
            raise PolicyError(f"{where}: is required (unix:///path.sock or 127.0.0.1:PORT)")
        if len(address) > MAX_ADDRESS or _control(address):
            raise PolicyError(f"{where}: at most {MAX_ADDRESS} chars without control characters")
        if address.startswith("unix:"):
            return self._unix(where, address)
        host, sep, port = address.rpartition(":")
        if not sep or not host or "/" in address:
            raise PolicyError(
                f"{where}: {address!r} is not an address the host accepts: "
                "unix:///abs/path.sock or HOST:PORT"
            )
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise PolicyError(f"{where}: the port must be 1..65535")
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            ip = ipaddress.ip_address(bare)
        except ValueError:
            if bare.lower() in self.names:
                return address
            raise PolicyError(
                f"{where}: {bare!r} is not an IP address, and not a name the host is "
                f"configured to reach ([peers] names: {', '.join(self.names) or 'none'})"
            ) from None
        if not any(ip in net for net in self.networks):
            raise PolicyError(
                f"{where}: {ip} is outside the networks the host is configured to reach "
                f"([peers] networks: {', '.join(map(str, self.networks)) or 'none'})"
            )
        return address

    @staticmethod
    def _unix(where: str, address: str) -> str:
        path = address.removeprefix("unix://") if address.startswith("unix://") else address[5:]
        if not path.startswith("/"):
            raise PolicyError(
                f"{where}: a unix socket needs an absolute path (unix:///abs/path.sock)"
            )
        if len(path.encode()) > MAX_SOCKET_PATH:
            raise PolicyError(f"{where}: a unix socket path is at most {MAX_SOCKET_PATH} bytes")
        return address

    # --- TLS files ----------------------------------------------------------------

    def tls_file(self, where: str, value: str) -> str:
        """A TLS file path from the API: inside the allowed directories and readable.

        Every refusal but the length says the same, whether the file is missing,
        unreadable or outside: a caller learns nothing about the host's files.
        """
        if len(value.encode()) > MAX_TLS_PATH:
            raise PolicyError(f"{where}: a path is at most {MAX_TLS_PATH} bytes")
        allowed = ", ".join(map(str, self.tls_dirs)) or "none configured"
        refusal = PolicyError(
            f"{where}: {value} is not a readable file inside the directories the host "
            f"allows for TLS files ([peers] tls_dirs: {allowed})"
        )
        if _control(value) or not value.startswith("/"):
            raise refusal
        try:
            real = Path(os.path.realpath(value))
            inside = any(real.is_relative_to(d) for d in self.tls_dirs)
            if not inside or not real.is_file() or not os.access(real, os.R_OK):
                raise refusal
        except (OSError, ValueError):
            raise refusal from None
        return value

    def client_tls(self, where: str, data: dict[str, str]) -> ClientTLS:
        """ClientTLS from an API request's fields (empty ones absent)."""
        files = {
            key: self.tls_file(f"{where}.{key}", data[key])
            for key in ("ca_file", "cert_file", "key_file")
            if data.get(key)
        }
        if bool(files.get("cert_file")) != bool(files.get("key_file")):
            raise PolicyError(f"{where}: cert_file and key_file go together (mutual TLS)")
        return ClientTLS(
            ca_file=files.get("ca_file"),
            cert_file=files.get("cert_file"),
            key_file=files.get("key_file"),
            server_name=server_name(f"{where}.server_name", data.get("server_name")),
            pin_sha256=pin(f"{where}.pin_sha256", data.get("pin_sha256")),
        )


def server_name(where: str, value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _NAME.match(value):
        raise PolicyError(f"{where}: must be a DNS name, at most {MAX_SERVER_NAME} chars")
    return value


def pin(where: str, value: object) -> str | None:
    """A certificate pin as 64 lower-case hex digits (colons and case accepted)."""
    if value is None or value == "":
        return None
    text = value.replace(":", "").lower() if isinstance(value, str) else ""
    if not _PIN.match(text):
        raise PolicyError(
            f"{where}: must be the SHA-256 of the peer's certificate (DER): 64 hex digits "
            "(`openssl x509 -in cert.pem -outform DER | sha256sum`)"
        )
    return text


def parse_networks(where: str, values: Sequence[object]) -> tuple[IPNetwork, ...]:
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            raise PolicyError(f"{where}: {value!r} is not a network (e.g. 10.0.0.0/8)") from None
    return tuple(out)


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


async def peer_certificate(address: str, tls: ClientTLS, timeout: float = 5.0) -> bytes:
    """The DER certificate a peer presents, from a TLS handshake of our own."""
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    context.set_alpn_protocols(["h2"])
    if address.startswith("unix:"):
        path = address.removeprefix("unix://") if address.startswith("unix://") else address[5:]
        name = tls.server_name or "localhost"
        opened = asyncio.open_unix_connection(path, ssl=context, server_hostname=name)
    else:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        opened = asyncio.open_connection(
            host, int(port), ssl=context, server_hostname=tls.server_name or host
        )
    reader, writer = await asyncio.wait_for(opened, timeout)
    del reader
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
    if not der:
        raise ssl.SSLError("the peer presented no certificate")
    return bytes(der)


async def check_pin(address: str, tls: ClientTLS | None) -> str:
    """ "" when the peer's certificate matches its pin (or none is pinned), else why not."""
    if tls is None or not tls.pin_sha256:
        return ""
    try:
        der = await peer_certificate(address, tls)
    except (OSError, TimeoutError, ssl.SSLError, ValueError) as exc:
        return f"its certificate could not be read to check the pin: {type(exc).__name__}"
    found = fingerprint(der)
    if found != tls.pin_sha256:
        return (
            f"its certificate (sha256 {found}) does not match the pin of its registration "
            f"({tls.pin_sha256}); register it again with the right pin if it was replaced"
        )
    return ""


__all__ = [
    "LOOPBACK",
    "MAX_TLS_PATH",
    "PeerPolicy",
    "PolicyError",
    "check_pin",
    "fingerprint",
    "parse_networks",
    "peer_certificate",
    "pin",
    "server_name",
]
