"""Configuration: command-line flags over environment variables over a TOML file.

Every setting can come from three places, the first one set wins::

    --url https://cluster.example.com   VMSNAP_NETAPP_URL             url = "..."
    --user vmsnap                       VMSNAP_NETAPP_USER            user = "..."
    --password-file /etc/...            VMSNAP_NETAPP_PASSWORD_FILE   password_file = "..."
    --ca-file /etc/.../ca.pem           VMSNAP_NETAPP_CA_FILE         ca_file = "..."
    --insecure-skip-tls-verify          VMSNAP_NETAPP_INSECURE=1      insecure_skip_tls_verify = true
    --svm NAME[,NAME]                   VMSNAP_NETAPP_SVMS            svms = ["..."]
    --config FILE                       VMSNAP_NETAPP_CONFIG          (the TOML file itself)

The common settings, the password file and :class:`Secret` are the SDK's vendor
toolkit (:mod:`vmsnap_sdk.toolkit`); this module adds ONTAP's own.
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

ENV_PREFIX = "VMSNAP_NETAPP_"


@dataclass(frozen=True)
class Config:
    """Everything the driver needs to reach one ONTAP cluster."""

    host: str
    port: int
    user: str
    password: Secret
    #: True (system CAs), False (no verification), or the path of a PEM CA bundle.
    verify_tls: bool | str = True
    #: The SVMs whose files the driver claims; empty: every SVM of the cluster.
    svms: tuple[str, ...] = ()
    #: Read timeout of one ONTAP call, and how long a job may run, seconds.
    call_timeout: float = 60.0
    #: Seconds between two polls of a running ONTAP job.
    job_poll_interval: float = 1.0
    #: Connect timeout, seconds: short, so that a dead array answers UNAVAILABLE fast.
    connect_timeout: float = 5.0
    #: ONTAP calls in flight at once (the vendor client is synchronous: one thread each).
    max_array_calls: int = 4
    #: Serve the ConformanceFixture service (test arrays and the emulator only).
    conformance_fixture: bool = False
    #: ONTAP volume (FlexVol) holding the fixture's test disk files (created when missing).
    fixture_volume: str = "vmsnap_conformance"

    @property
    def url(self) -> str:
        """``https://host:port``: for messages and labels (it holds no credential)."""
        return f"https://{self.host}:{self.port}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The driver's own flags (the SDK adds --listen, TLS and logging flags)."""
    group = add_array_arguments(parser, "NetApp ONTAP cluster", ENV_PREFIX, url_help="cluster")
    group.add_argument(
        "--svm",
        dest="svms",
        help=f"comma-separated SVMs to serve; default: all of the cluster's ({ENV_PREFIX}SVMS)",
    )
    group.add_argument(
        "--job-poll-interval", type=float, metavar="SECONDS", help="seconds between two job polls"
    )
    group.add_argument("--fixture-volume", help="ONTAP volume holding the fixture's test disks")


def _names(value: object) -> tuple[str, ...]:
    if not value:
        return ()
    items = value if isinstance(value, list) else str(value).split(",")
    return tuple(str(v).strip() for v in items if str(v).strip())


def from_arguments(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """The config from parsed flags, the environment and the config file."""
    settings = Settings(ENV_PREFIX, args, environ)
    endpoint = array_endpoint(settings)
    defaults = Config(host="", port=0, user="", password=Secret(""))
    return Config(
        host=endpoint.host,
        port=endpoint.port,
        user=endpoint.user,
        password=endpoint.password,
        verify_tls=endpoint.verify_tls,
        svms=_names(settings.pick("svms")),
        call_timeout=settings.number("call_timeout", defaults.call_timeout),
        job_poll_interval=settings.number("job_poll_interval", defaults.job_poll_interval),
        max_array_calls=int(settings.number("max_array_calls", defaults.max_array_calls)),
        conformance_fixture=bool(settings.flag("conformance_fixture")),
        fixture_volume=str(settings.pick("fixture_volume") or defaults.fixture_volume),
    )


__all__ = ["ConfigError", "Config", "Secret", "add_arguments", "from_arguments"]
