"""Configuration: command-line flags over environment variables over a TOML file.

Every setting can come from three places, the first one set wins::

    --url https://mvip.example.com      VMSNAP_SOLIDFIRE_URL             url = "..."
    --user vmsnap                       VMSNAP_SOLIDFIRE_USER            user = "..."
    --password-file /etc/...            VMSNAP_SOLIDFIRE_PASSWORD_FILE   password_file = "..."
    --ca-file /etc/.../ca.pem           VMSNAP_SOLIDFIRE_CA_FILE         ca_file = "..."
    --insecure-skip-tls-verify          VMSNAP_SOLIDFIRE_INSECURE=1      insecure_skip_tls_verify = true
    --cluster NAME                      VMSNAP_SOLIDFIRE_CLUSTER         cluster = "..."
    --config FILE                       VMSNAP_SOLIDFIRE_CONFIG          (the TOML file itself)

The common settings, the password file and :class:`Secret` are the SDK's vendor
toolkit (:mod:`vmsnap_sdk.toolkit`); this module adds Element's own.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

from vmsnap_sdk.toolkit import (
    ConfigError,
    Secret,
    Settings,
    add_array_arguments,
    array_endpoint,
)

ENV_PREFIX = "VMSNAP_SOLIDFIRE_"
DEFAULT_API_VERSION = "12.3"


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
    group = add_array_arguments(
        parser, "SolidFire / Element cluster", ENV_PREFIX, url_help="cluster (MVIP)"
    )
    group.add_argument(
        "--cluster",
        help="cluster name in element:// locators; default: asked from the cluster "
        f"({ENV_PREFIX}CLUSTER)",
    )
    group.add_argument("--api-version", help=f"Element API version (default {DEFAULT_API_VERSION})")
    group.add_argument("--fixture-account", help="account owning the fixture's test volumes")


def from_arguments(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """The config from parsed flags, the environment and the config file."""
    settings = Settings(ENV_PREFIX, args, environ)
    endpoint = array_endpoint(
        settings,
        # ElementFactory refuses to verify TLS for an IP address: say so at start.
        tls_needs_host_name="the Element SDK verifies TLS for host names only",
    )
    defaults = Config(host="", port=0, user="", password=Secret(""))
    return Config(
        host=endpoint.host,
        port=endpoint.port,
        user=endpoint.user,
        password=endpoint.password,
        verify_tls=endpoint.verify_tls,
        cluster=str(settings.pick("cluster") or ""),
        api_version=str(settings.pick("api_version") or DEFAULT_API_VERSION),
        call_timeout=settings.number("call_timeout", defaults.call_timeout),
        max_array_calls=int(settings.number("max_array_calls", defaults.max_array_calls)),
        conformance_fixture=bool(settings.flag("conformance_fixture")),
        fixture_account=str(settings.pick("fixture_account") or defaults.fixture_account),
    )


__all__ = ["ConfigError", "Config", "Secret", "add_arguments", "from_arguments"]
