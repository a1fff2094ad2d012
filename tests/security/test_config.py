"""The [auth] and [peers] tables: what they accept, and errors that name the key."""

from __future__ import annotations

import pytest

from vmsnap_host.config import ConfigError, parse
from vmsnap_host.peers import PeerPolicy, PolicyError


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"auth": {"principals": [{"name": "x", "role": "root"}]}}, "auth.principals[0].role"),
        ({"auth": {"principals": [{"name": "x", "role": "viewer"}]}}, "needs projects"),
        (
            {"auth": {"principals": [{"name": "x", "role": "admin", "token_sha256": ["abc"]}]}},
            "SHA-256",
        ),
        ({"auth": {"jwt": {"key_file": "/etc/hostname", "algorithms": ["HS256"]}}}, "asymmetric"),
        ({"auth": {"jwt": {"key_file": "/no/such/file"}}}, "auth.jwt.key_file"),
        ({"auth": {"required": "yes"}}, "auth.required"),
        ({"peers": {"networks": ["not-a-net"]}}, "peers.networks"),
        ({"peers": {"tls_dirs": ["relative/dir"]}}, "peers.tls_dirs"),
        ({"drivers": [{"address": "example.com:443"}]}, "drivers[0].address"),
        ({"drivers": [{"address": "127.0.0.1:1", "tls": {"pin_sha256": "x"}}]}, "pin_sha256"),
    ],
)
def test_errors_name_the_key(data: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(data)
    assert says in str(caught.value)


def test_a_token_is_given_to_one_principal_only() -> None:
    digest = "a" * 64
    principals = [
        {"name": n, "role": "admin", "token_sha256": [digest]} for n in ("one", "two")
    ]
    with pytest.raises(ConfigError, match="two principals"):
        parse({"auth": {"principals": principals}})


def test_configured_networks_and_names_widen_what_registrations_may_name() -> None:
    config = parse(
        {
            "peers": {"networks": ["10.0.0.0/8"], "names": ["Array-1.internal"]},
            "drivers": [{"address": "10.1.2.3:50051"}, {"address": "array-1.internal:443"}],
        }
    )
    assert [d.address for d in config.drivers] == ["10.1.2.3:50051", "array-1.internal:443"]
    policy = config.peers
    with pytest.raises(PolicyError):
        policy.address("address", "127.0.0.1:1")  # loopback is no longer listed
    assert PeerPolicy().address("address", "[::1]:5") == "[::1]:5"
