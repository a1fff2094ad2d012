"""Configuration: command-line flags over environment variables over a TOML file.

Every setting can come from three places, the first one set wins::

    --url https://mvip.example.com      VMSNAP_SOLIDFIRE_URL             url = "..."
    --user vmsnap                       VMSNAP_SOLIDFIRE_USER            user = "..."
    --password-file /etc/...            VMSNAP_SOLIDFIRE_PASSWORD_FILE   password_file = "..."
    --ca-file /etc/.../ca.pem           VMSNAP_SOLIDFIRE_CA_FILE         ca_file = "..."
    --insecure-skip-tls-verify          VMSNAP_SOLIDFIRE_INSECURE=1      insecure_skip_tls_verify = true
    --cluster NAME                      VMSNAP_SOLIDFIRE_CLUSTER         cluster = "..."
    --config FILE                       VMSNAP_SOLIDFIRE_CONFIG          (the TOML file itself)

The password is only ever read from a file (never a flag, never the environment:
both show up in ``ps`` and in crash reports), and is held in a :class:`Secret`
whose ``repr`` and ``str`` hide it, so that logging a config object cannot leak it.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ENV_PREFIX = "VMSNAP_SOLIDFIRE_"
DEFAULT_API_VERSION = "12.3"


class ConfigError(ValueError):
    """The configuration is incomplete or wrong; the message never holds a secret."""


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: pass it to the vendor client, nowhere else."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True)
class Config:
    """Everything the driver needs to reach one Element cluster."""

    host: str
    port: int
    user: str
    password: Secret
    #: True (system CAs), False (no verification), or the path of a PEM CA bundle.
    verify_tls: bool | str = True
    #: The cluster name locators use; learnt from GetClusterInfo when empty.
    cluster: str = ""
    api_version: str = DEFAULT_API_VERSION
    #: Timeout of one Element call, seconds (the SDK uses it to connect and to read).
    call_timeout: float = 60.0
    #: Element calls in flight at once (the vendor client is synchronous: one thread each).
    max_array_calls: int = 4
    #: Serve the ConformanceFixture service (test arrays and the emulator only).
    conformance_fixture: bool = False
    #: Account that owns the fixture's test volumes (created when missing).
    fixture_account: str = "vmsnap-conformance"

    @property
    def url(self) -> str:
        """``https://host:port``: for messages and labels (it holds no credential)."""
        return f"https://{self.host}:{self.port}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The driver's own flags (the SDK adds --listen, TLS and logging flags)."""
    group = parser.add_argument_group("SolidFire / Element cluster")
    group.add_argument("--config", metavar="FILE", help=f"TOML config file ({ENV_PREFIX}CONFIG)")
    group.add_argument("--url", help=f"cluster MVIP, https://host[:port] ({ENV_PREFIX}URL)")
    group.add_argument("--user", help=f"cluster admin user ({ENV_PREFIX}USER)")
    group.add_argument(
        "--password-file",
        metavar="FILE",
        help=f"file holding the password, nothing else ({ENV_PREFIX}PASSWORD_FILE)",
    )
    group.add_argument(
        "--ca-file",
        metavar="FILE",
        help=f"PEM CA bundle to verify the cluster ({ENV_PREFIX}CA_FILE)",
    )
    group.add_argument(
        "--insecure-skip-tls-verify",
        action="store_const",
        const=True,
        default=None,
        help=f"do not verify the cluster's TLS certificate ({ENV_PREFIX}INSECURE=1)",
    )
    group.add_argument(
        "--cluster",
        help=f"cluster name in element:// locators; default: asked from the cluster ({ENV_PREFIX}CLUSTER)",
    )
    group.add_argument("--api-version", help=f"Element API version (default {DEFAULT_API_VERSION})")
    group.add_argument("--call-timeout", type=float, help="seconds one Element call may take")
    group.add_argument("--max-array-calls", type=int, help="Element calls in flight at once")
    group.add_argument(
        "--conformance-fixture",
        action="store_const",
        const=True,
        default=None,
        help="serve the ConformanceFixture service (emulator / test arrays only)",
    )
    group.add_argument("--fixture-account", help="account owning the fixture's test volumes")


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _truthy(value: object) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def from_arguments(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Config:
    """The config from parsed flags, the environment and the config file."""
    env = dict(os.environ if environ is None else environ)
    file_path = args.config or env.get(ENV_PREFIX + "CONFIG")
    file_values: dict[str, Any] = {}
    if file_path:
        try:
            file_values = tomllib.loads(Path(file_path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(
                f"cannot read config file {file_path}: {type(exc).__name__}"
            ) from None

    def pick(name: str) -> Any:
        flag = getattr(args, name, None)
        if flag is not None:
            return flag
        if ENV_PREFIX + name.upper() in env:
            return env[ENV_PREFIX + name.upper()]
        return file_values.get(name)

    url = pick("url")
    if not url:
        raise ConfigError(f"the cluster URL is required (--url or {ENV_PREFIX}URL)")
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"the cluster URL must be https://host[:port], not {url!r}")
    user = pick("user")
    if not user:
        raise ConfigError(f"the cluster user is required (--user or {ENV_PREFIX}USER)")
    password_file = pick("password_file")
    if not password_file:
        raise ConfigError(
            f"a password file is required (--password-file or {ENV_PREFIX}PASSWORD_FILE)"
        )
    try:
        password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        # Name the file, never its content.
        raise ConfigError(f"cannot read password file {password_file}: {exc.strerror}") from None
    if not password:
        raise ConfigError(f"password file {password_file} is empty")

    insecure = args.insecure_skip_tls_verify
    if insecure is None:
        insecure = env.get(ENV_PREFIX + "INSECURE", file_values.get("insecure_skip_tls_verify"))
    ca_file = pick("ca_file")
    verify: bool | str = True
    if insecure is not None and _truthy(insecure):
        verify = False
    elif ca_file:
        if not Path(ca_file).is_file():
            raise ConfigError(f"CA file {ca_file} does not exist")
        verify = str(ca_file)

    if verify is not False and _is_ip_address(parts.hostname):
        # ElementFactory refuses to verify TLS for an IP address: say so at start.
        raise ConfigError(
            f"the Element SDK verifies TLS for host names only: give the cluster's MVIP by "
            f"name in the URL, not {parts.hostname} (or --insecure-skip-tls-verify on a test array)"
        )

    fixture = pick("conformance_fixture")
    defaults = Config(host="", port=0, user="", password=Secret(""))
    return Config(
        host=parts.hostname,
        port=parts.port or 443,
        user=str(user),
        password=Secret(password),
        verify_tls=verify,
        cluster=str(pick("cluster") or ""),
        api_version=str(pick("api_version") or DEFAULT_API_VERSION),
        call_timeout=float(pick("call_timeout") or defaults.call_timeout),
        max_array_calls=int(pick("max_array_calls") or defaults.max_array_calls),
        conformance_fixture=_truthy(fixture) if fixture is not None else False,
        fixture_account=str(pick("fixture_account") or defaults.fixture_account),
    )
