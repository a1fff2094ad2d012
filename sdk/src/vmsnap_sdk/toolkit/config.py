"""Configuration of a vendor driver: a flag, else the environment, else a TOML file.

Every setting can come from three places, the first one set wins (``PREFIX`` is
the driver's, e.g. ``VMSNAP_SOLIDFIRE_``)::

    --url https://array.example.com     PREFIX_URL             url = "..."
    --user vmsnap                       PREFIX_USER            user = "..."
    --password-file /etc/...            PREFIX_PASSWORD_FILE   password_file = "..."
    --ca-file /etc/.../ca.pem           PREFIX_CA_FILE         ca_file = "..."
    --insecure-skip-tls-verify          PREFIX_INSECURE=1      insecure_skip_tls_verify = true
    --call-timeout SECONDS              PREFIX_CALL_TIMEOUT    call_timeout = 60
    --max-array-calls N                 PREFIX_MAX_ARRAY_CALLS max_array_calls = 4
    --conformance-fixture               PREFIX_CONFORMANCE_FIXTURE=1
    --config FILE                       PREFIX_CONFIG          (the TOML file itself)

A driver adds its own flags to the same group and reads them with
:meth:`Settings.pick`. The password is read from a file only
(:func:`~vmsnap_sdk.toolkit.secrets.read_secret_file`).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vmsnap_sdk.toolkit.secrets import Secret, read_secret_file

#: The longest configuration file read.
MAX_CONFIG_BYTES = 1 << 20


class ConfigError(ValueError):
    """The configuration is incomplete or wrong; the message never holds a secret."""


def truthy(value: object) -> bool:
    """A flag's, variable's or TOML value's truth: 1/true/yes/on."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def add_array_arguments(
    parser: argparse.ArgumentParser, title: str, prefix: str, *, url_help: str = "array"
) -> argparse._ArgumentGroup:
    """The flags every array driver has, in a group named ``title``; returns the
    group so the driver adds its own."""
    group = parser.add_argument_group(title)
    group.add_argument("--config", metavar="FILE", help=f"TOML config file ({prefix}CONFIG)")
    group.add_argument(
        "--url", help=f"{url_help} management address, https://host[:port] ({prefix}URL)"
    )
    group.add_argument("--user", help=f"{url_help} admin user ({prefix}USER)")
    group.add_argument(
        "--password-file",
        metavar="FILE",
        help=f"file holding the password, nothing else ({prefix}PASSWORD_FILE)",
    )
    group.add_argument(
        "--ca-file",
        metavar="FILE",
        help=f"PEM CA bundle to verify the {url_help} ({prefix}CA_FILE)",
    )
    group.add_argument(
        "--insecure-skip-tls-verify",
        action="store_const",
        const=True,
        default=None,
        help=f"do not verify the {url_help}'s TLS certificate ({prefix}INSECURE=1)",
    )
    group.add_argument(
        "--call-timeout",
        type=float,
        metavar="SECONDS",
        help=f"seconds one {url_help} call may take",
    )
    group.add_argument(
        "--max-array-calls", type=int, metavar="N", help=f"{url_help} calls in flight at once"
    )
    group.add_argument(
        "--conformance-fixture",
        action="store_const",
        const=True,
        default=None,
        help="serve the ConformanceFixture service (emulator / test arrays only)",
    )
    return group


class Settings:
    """The values of one driver's settings: ``pick(name)`` is the flag ``--name``
    (underscores for dashes), else ``PREFIX_NAME``, else ``name`` in the file."""

    def __init__(
        self,
        prefix: str,
        args: argparse.Namespace,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.prefix = prefix
        self.args = args
        self.env = dict(os.environ if environ is None else environ)
        self.file_path = getattr(args, "config", None) or self.env.get(prefix + "CONFIG")
        self.file: dict[str, Any] = {}
        if self.file_path:
            try:
                with open(self.file_path, "rb") as f:
                    data = f.read(MAX_CONFIG_BYTES + 1)
                if len(data) > MAX_CONFIG_BYTES:
                    raise ConfigError(
                        f"config file {self.file_path} is longer than {MAX_CONFIG_BYTES} bytes"
                    )
                self.file = tomllib.loads(data.decode("utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(
                    f"cannot read config file {self.file_path}: {type(exc).__name__}"
                ) from None

    def pick(self, name: str) -> Any:
        flag = getattr(self.args, name, None)
        if flag is not None:
            return flag
        if self.prefix + name.upper() in self.env:
            return self.env[self.prefix + name.upper()]
        return self.file.get(name)

    def number(self, name: str, default: float) -> float:
        value = self.pick(name)
        if value is None or value == "":
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, not {value!r}") from None
        if number <= 0:
            raise ConfigError(f"{name} must be above 0, not {value!r}")
        return number

    def flag(self, name: str, *, env: str | None = None, key: str | None = None) -> bool | None:
        """A boolean setting (None when set nowhere); ``env``/``key`` when the
        variable or file key is not the flag's name."""
        value = getattr(self.args, name, None)
        if value is None:
            value = self.env.get(self.prefix + (env or name.upper()))
        if value is None:
            value = self.file.get(key or name)
        return None if value is None else truthy(value)


@dataclass(frozen=True)
class ArrayEndpoint:
    """Where the array is and how to log in to it."""

    host: str
    port: int
    user: str
    password: Secret
    #: True (system CAs), False (no verification), or the path of a PEM CA bundle.
    verify_tls: bool | str

    @property
    def url(self) -> str:
        """``https://host:port``: for messages and labels (it holds no credential)."""
        return f"https://{self.host}:{self.port}"


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def array_endpoint(settings: Settings, *, tls_needs_host_name: str = "") -> ArrayEndpoint:
    """The array's URL, user, password and TLS verification, checked.

    ``tls_needs_host_name``: the vendor SDK verifies TLS for host names only
    (Element's); the text says so when an IP address is given with verification on.
    """
    prefix = settings.prefix
    url = settings.pick("url")
    if not url:
        raise ConfigError(f"the array's URL is required (--url or {prefix}URL)")
    parts = urlsplit(url if "://" in url else f"https://{url}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"the array's URL has a bad port: {url!r}") from None
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"the array's URL must be https://host[:port], not {url!r}")
    user = settings.pick("user")
    if not user:
        raise ConfigError(f"the array's user is required (--user or {prefix}USER)")
    password_file = settings.pick("password_file")
    if not password_file:
        raise ConfigError(f"a password file is required (--password-file or {prefix}PASSWORD_FILE)")
    password = read_secret_file(password_file)

    insecure = settings.flag(
        "insecure_skip_tls_verify", env="INSECURE", key="insecure_skip_tls_verify"
    )
    ca_file = settings.pick("ca_file")
    verify: bool | str = True
    if insecure:
        verify = False
    elif ca_file:
        if not Path(ca_file).is_file():
            raise ConfigError(f"CA file {ca_file} does not exist")
        verify = str(ca_file)
    if tls_needs_host_name and verify is not False and _is_ip_address(parts.hostname):
        raise ConfigError(
            f"{tls_needs_host_name}: give the array by name in the URL, not "
            f"{parts.hostname} (or --insecure-skip-tls-verify on a test array)"
        )
    return ArrayEndpoint(
        host=parts.hostname, port=port or 443, user=str(user), password=password, verify_tls=verify
    )
