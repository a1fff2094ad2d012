"""The host's configuration file (TOML).

Example::

    [host]
    max_snapshots_per_vm = 64        # per-VM maximum of live snapshots
    queue_bound = 8                  # mutating operations waiting per VM; past it ABORTED
    lease_seconds = 30               # per-VM ownership lease in the catalog
    quiesce_lease_seconds = 30       # freeze lease given to the agent (renewed while taking)
    take_timeout_seconds = 60        # deadline of one TakeVMSnapshot (capped by the lease)
    call_timeout_seconds = 30        # deadline of other driver and agent calls
    can_handle_timeout_seconds = 2   # deadline of each driver's CanHandle while planning
    can_handle_cache_seconds = 60    # how long a driver's CanHandle answer is reused (0: never)
    health_interval_seconds = 5      # how often drivers and agents are checked
    post_processing_timeout_seconds = 600  # how long ready=false results are polled
    reconcile_interval_seconds = 10  # how often owed deletes are retried
    orphan_grace_seconds = 300       # an object with no live catalog record is
                                     # deleted once it is at least this old

    [[drivers]]
    address = "unix:///run/vmsnap/netapp.sock"
    order = 0                        # lower wins priority ties
    [drivers.tls]                    # optional
    ca_file = "/etc/vmsnap/ca.pem"
    cert_file = "/etc/vmsnap/host.pem"
    key_file = "/etc/vmsnap/host.key"
    server_name = "netapp.vmsnap.internal"

    [[agents]]
    address = "unix:///run/vmsnap/agent.sock"

    [peers]                          # where drivers and agents may be (issue 12)
    networks = ["127.0.0.0/8", "::1/128"]   # IP networks a registration may name
    names = ["localhost"]            # host names a registration may name (no others)
    tls_dirs = ["/etc/vmsnap/peers"] # the only directories RegisterDriver/Agent may
                                     # name TLS files in (none by default)

    [auth]                           # see vmsnap_host.auth.settings

Errors name the key at fault and say what is accepted.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmsnap_host.auth.settings import AuthConfigError, AuthSettings, parse_auth
from vmsnap_host.peers import LOOPBACK, PeerPolicy, PolicyError, parse_networks, pin
from vmsnap_host.peers import server_name as check_server_name
from vmsnap_sdk import ClientTLS


class ConfigError(ValueError):
    """The configuration file is unusable; the message names the key."""


@dataclass(frozen=True)
class Settings:
    max_snapshots_per_vm: int = 64
    queue_bound: int = 8
    lease_seconds: float = 30.0
    quiesce_lease_seconds: float = 30.0
    take_timeout_seconds: float = 60.0
    call_timeout_seconds: float = 30.0
    #: Deadline of each driver's CanHandle while a take is planned (all drivers are
    #: asked in parallel). A driver that does not answer in time counts as
    #: unreachable for that take: only the disks it could claim fail (UNAVAILABLE).
    #: CanHandle is meant to be pure and fast, so this stays short.
    can_handle_timeout_seconds: float = 2.0
    #: How long a driver's CanHandle answer about a VM's volume set is reused
    #: (:mod:`vmsnap_host.decisions`): a re-registration, a change of health or of
    #: the driver's info, or a failed take of that VM drops it earlier. 0: ask on
    #: every take.
    can_handle_cache_seconds: float = 60.0
    health_interval_seconds: float = 5.0
    post_processing_timeout_seconds: float = 600.0
    reconcile_interval_seconds: float = 10.0
    #: How old an orphan must be before the reconciler deletes it: an object on a
    #: driver or agent whose id this host's catalog recorded, with no live record
    #: (:mod:`vmsnap_host.reconcile`). Its create time when the peer reports one,
    #: else how long passes have seen it orphaned. 0 deletes at the first pass.
    orphan_grace_seconds: float = 300.0
    #: Calls the host's gRPC server runs at once; past it a call is answered
    #: RESOURCE_EXHAUSTED. A Create that waits for its result, a WaitOperation and
    #: a WatchOperations stream each hold one while they wait: a control plane
    #: with hundreds of takes in flight needs more than a driver's 256.
    max_concurrent_rpcs: int = 1024


@dataclass(frozen=True)
class Endpoint:
    """A driver or agent to reach by address."""

    address: str
    order: int = 0
    tls: ClientTLS | None = None


@dataclass(frozen=True)
class Config:
    settings: Settings = Settings()
    drivers: tuple[Endpoint, ...] = ()
    agents: tuple[Endpoint, ...] = ()
    peers: PeerPolicy = field(default_factory=PeerPolicy)
    auth: AuthSettings = field(default_factory=AuthSettings)


_BOUNDS: dict[str, tuple[float, float]] = {
    "max_snapshots_per_vm": (1, 100_000),
    "queue_bound": (0, 10_000),
    "lease_seconds": (1, 3600),
    "quiesce_lease_seconds": (0.5, 600),
    "take_timeout_seconds": (0.1, 3600),
    "call_timeout_seconds": (0.1, 3600),
    "can_handle_timeout_seconds": (0.05, 60),
    "can_handle_cache_seconds": (0, 86_400),
    "health_interval_seconds": (0.05, 3600),
    "post_processing_timeout_seconds": (0, 86_400),
    "reconcile_interval_seconds": (0.05, 3600),
    "orphan_grace_seconds": (0, 7 * 86_400),
    "max_concurrent_rpcs": (16, 100_000),
}


def tls_from_mapping(where: str, data: object) -> ClientTLS | None:
    """TLS settings of a configured peer. The configuration is the operator's own
    file: its paths may be anywhere (the API's are held to [peers] tls_dirs)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: must be a table with ca_file, cert_file, key_file, server_name, pin_sha256"
        )
    unknown = set(data) - {"ca_file", "cert_file", "key_file", "server_name", "pin_sha256"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    for key in ("ca_file", "cert_file", "key_file"):
        value = data.get(key)
        if value is not None and not Path(str(value)).is_file():
            raise ConfigError(f"{where}.{key}: {value} is not a readable file")
    if bool(data.get("cert_file")) != bool(data.get("key_file")):
        raise ConfigError(f"{where}: cert_file and key_file go together (mutual TLS)")
    try:
        return ClientTLS(
            ca_file=data.get("ca_file"),
            cert_file=data.get("cert_file"),
            key_file=data.get("key_file"),
            server_name=check_server_name(f"{where}.server_name", data.get("server_name")),
            pin_sha256=pin(f"{where}.pin_sha256", data.get("pin_sha256")),
        )
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None


def _peers(data: object) -> PeerPolicy:
    if data is None:
        return PeerPolicy()
    if not isinstance(data, dict):
        raise ConfigError("peers: must be a table (networks, names, tls_dirs)")
    unknown = set(data) - {"networks", "names", "tls_dirs"}
    if unknown:
        raise ConfigError(f"peers: unknown keys {sorted(unknown)} (networks, names, tls_dirs)")
    lists = {}
    for key in ("networks", "names", "tls_dirs"):
        value = data.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(v, str) for v in value)
        ):
            raise ConfigError(f"peers.{key}: must be an array of strings")
        lists[key] = value
    try:
        networks = (
            LOOPBACK
            if lists["networks"] is None
            else parse_networks("peers.networks", lists["networks"])
        )
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None
    names = ("localhost",) if lists["names"] is None else tuple(n.lower() for n in lists["names"])
    dirs = []
    for value in lists["tls_dirs"] or []:
        path = Path(value)
        if not path.is_absolute() or not path.is_dir():
            raise ConfigError(f"peers.tls_dirs: {value} is not an existing absolute directory")
        dirs.append(path.resolve())
    return PeerPolicy(networks=networks, names=names, tls_dirs=tuple(dirs))


def _endpoints(kind: str, items: object, policy: PeerPolicy) -> tuple[Endpoint, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ConfigError(f"{kind}: must be an array of tables ([[{kind}]])")
    result = []
    for i, item in enumerate(items):
        where = f"{kind}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: must be a table")
        unknown = set(item) - {"address", "order", "tls"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
        order = item.get("order", 0)
        if not isinstance(order, int):
            raise ConfigError(f"{where}.order: must be an integer")
        try:
            address = policy.address(f"{where}.address", item.get("address"))
        except PolicyError as exc:
            raise ConfigError(str(exc)) from None
        result.append(
            Endpoint(
                address=address,
                order=order,
                tls=tls_from_mapping(f"{where}.tls", item.get("tls")),
            )
        )
    return tuple(result)


def parse(data: dict[str, Any]) -> Config:
    unknown = set(data) - {"host", "drivers", "agents", "peers", "auth"}
    if unknown:
        raise ConfigError(
            f"unknown top-level keys {sorted(unknown)} (host, drivers, agents, peers, auth)"
        )
    host = data.get("host", {})
    if not isinstance(host, dict):
        raise ConfigError("host: must be a table")
    values: dict[str, Any] = {}
    for key, value in host.items():
        if key not in _BOUNDS:
            raise ConfigError(f"host.{key}: unknown setting (known: {sorted(_BOUNDS)})")
        low, high = _BOUNDS[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise ConfigError(f"host.{key}: must be a number in {low:g}..{high:g}")
        integral = ("max_snapshots_per_vm", "queue_bound", "max_concurrent_rpcs")
        values[key] = int(value) if key in integral else float(value)
    policy = _peers(data.get("peers"))
    try:
        auth = parse_auth(data.get("auth"))
    except AuthConfigError as exc:
        raise ConfigError(str(exc)) from None
    return Config(
        settings=Settings(**values),
        drivers=_endpoints("drivers", data.get("drivers"), policy),
        agents=_endpoints("agents", data.get("agents"), policy),
        peers=policy,
        auth=auth,
    )


def load(path: str | Path) -> Config:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse(data)


__all__ = ["Config", "ConfigError", "Endpoint", "Settings", "load", "parse"]
