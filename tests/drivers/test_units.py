"""In-process tests of the drivers' small parts: configuration, tags, error mapping."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import requests
from netapp_ontap.error import NetAppRestError
from solidfire.common import ApiConnectionError, ApiServerError

from vmsnap_driver_netapp import _config as na_config
from vmsnap_driver_netapp import _errors as na_errors
from vmsnap_driver_netapp import _layout
from vmsnap_driver_solidfire import _config as sf_config
from vmsnap_driver_solidfire import _errors as sf_errors
from vmsnap_driver_solidfire._tags import MAX_ATTRIBUTES_BYTES, Tag, parse_locator
from vmsnap_sdk.errors import (
    FailedPrecondition,
    Internal,
    NotFound,
    ResourceExhausted,
    Unavailable,
    Unknown,
)

SECRET = "s3cr3t-Pa55word"


def _args(module: object, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)  # type: ignore[attr-defined]
    return parser.parse_args(argv)


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text(SECRET + "\n")
    return path


def test_flags_win_over_environment_over_file(tmp_path: Path, password_file: Path) -> None:
    config_file = tmp_path / "sf.toml"
    config_file.write_text(
        f'url = "https://file.example"\nuser = "file-user"\npassword_file = "{password_file}"\n'
        'cluster = "from-file"\nmax_array_calls = 2\n'
    )
    env = {"VMSNAP_SOLIDFIRE_USER": "env-user", "VMSNAP_SOLIDFIRE_CLUSTER": "from-env"}
    args = _args(sf_config, ["--config", str(config_file), "--cluster", "from-flag"])
    config = sf_config.from_arguments(args, env)
    assert (config.host, config.port) == ("file.example", 443)
    assert config.user == "env-user"
    assert config.cluster == "from-flag"
    assert config.max_array_calls == 2
    assert config.password.reveal() == SECRET
    assert config.verify_tls is True


def test_the_password_never_prints(password_file: Path) -> None:
    args = _args(
        na_config,
        ["--url", "https://c1:8443", "--user", "u", "--password-file", str(password_file)],
    )
    config = na_config.from_arguments(args, {"VMSNAP_NETAPP_SVMS": "svm1, svm2"})
    assert config.svms == ("svm1", "svm2")
    assert SECRET not in repr(config) and SECRET not in str(config)
    assert config.password.reveal() == SECRET


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "URL is required"),
        (["--url", "http://c1"], {}, "https://host"),
        (["--url", "https://c1"], {}, "user is required"),
        (["--url", "https://c1", "--user", "u"], {}, "password file is required"),
        (["--url", "https://c1", "--user", "u", "--password-file", "/nope"], {}, "/nope"),
        (
            ["--url", "https://10.0.0.1", "--user", "u"],
            {"VMSNAP_SOLIDFIRE_PASSWORD_FILE": "PASSWORD"},
            "host names only",
        ),
    ],
)
def test_configuration_errors_say_what_is_missing(
    argv: list[str], env: dict[str, str], message: str, password_file: Path
) -> None:
    env = {k: str(password_file) if v == "PASSWORD" else v for k, v in env.items()}
    with pytest.raises(sf_config.ConfigError, match=message) as caught:
        sf_config.from_arguments(_args(sf_config, argv), env)
    assert SECRET not in str(caught.value)


def test_insecure_and_ca_file(tmp_path: Path, password_file: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    base = ["--url", "https://c1", "--user", "u", "--password-file", str(password_file)]
    with_ca = sf_config.from_arguments(_args(sf_config, [*base, "--ca-file", str(ca)]), {})
    assert with_ca.verify_tls == str(ca)
    insecure = sf_config.from_arguments(_args(sf_config, base), {"VMSNAP_SOLIDFIRE_INSECURE": "1"})
    assert insecure.verify_tls is False


def test_element_tags_round_trip_and_fit_the_attribute_limit() -> None:
    tag = Tag("snap-1", "vm-1", "x" * 5000, {7: "vda", 42: "vdb"})
    attributes = tag.attributes()
    assert len(json.dumps(attributes)) <= MAX_ATTRIBUTES_BYTES
    back = Tag.from_attributes(attributes)
    assert back is not None
    assert (back.vm_snapshot_id, back.vm_id, dict(back.disks)) == ("snap-1", "vm-1", tag.disks)
    assert Tag.from_attributes({"other": 1}) is None
    assert Tag.from_attributes({"vmsnap": {"id": "x", "disks": {"a": "vda"}}}) is None


def test_locators() -> None:
    parsed = parse_locator("element://c1/42")
    assert parsed is not None and (parsed.cluster, parsed.volume_id) == ("c1", 42)
    for bad in ("element://c1/", "element://c1/x", "element:///42", "ontap://a/b/c"):
        assert parse_locator(bad) is None
    disk = _layout.parse_locator("ontap://svm1/ds1/vm-7/root.img")
    assert disk is not None and (disk.svm, disk.volume, disk.path) == (
        "svm1",
        "ds1",
        "vm-7/root.img",
    )
    for bad in ("ontap://svm1/ds1", "ontap://svm1/ds1/../x", "ontap://svm1/ds1/.vmsnap/x"):
        assert _layout.parse_locator(bad) is None
    name = _layout.clone_name("vda", "vm 7/root.img")
    assert all(c.isalnum() or c in "_-=" for c in name)
    assert _layout.parse_clone_name(name) == ("vda", "vm 7/root.img")


def _element_error(name: str, message: str = "m") -> ApiServerError:
    return ApiServerError(
        "Method", json.dumps({"error": {"name": name, "code": 500, "message": message}})
    )


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_element_error("xVolumeIDDoesNotExist"), NotFound),
        (_element_error("xGroupSnapshotIDDoesNotExist"), NotFound),
        (_element_error("xMaxSnapshotsPerVolumeExceeded"), ResourceExhausted),
        (_element_error("xUnknownAPIMethod"), FailedPrecondition),
        (_element_error("xSomethingElse"), Internal),
        (ApiServerError("Method", "not json"), Unknown),
        (ApiConnectionError("Bad Credentials"), FailedPrecondition),
        (ApiConnectionError("Connection Refused."), Unavailable),
        (requests.exceptions.ReadTimeout(), Unknown),
        (requests.exceptions.ConnectionError(), Unavailable),
    ],
)
def test_element_errors_map_to_the_documented_codes(exc: Exception, expected: type) -> None:
    error = sf_errors.translate(exc, url="https://c1:443", action="take", secret=SECRET)
    assert type(error) is expected


def test_a_vendor_message_echoing_the_password_is_scrubbed() -> None:
    exc = _element_error("xSomethingElse", f"bad value {SECRET}")
    error = sf_errors.translate(exc, url="https://c1:443", action="take", secret=SECRET)
    assert SECRET not in error.message and "***" in error.message


class _Response:
    def __init__(self, status: int, body: dict[str, object]) -> None:
        self.status_code = status
        self._body = body
        self.text = json.dumps(body)

    def json(self) -> dict[str, object]:
        return self._body


def _ontap_error(status: int, message: str = "m", code: str = "1") -> NetAppRestError:
    cause = requests.HTTPError("HTTP error")
    cause.response = _Response(status, {"error": {"message": message, "code": code}})  # type: ignore[assignment]
    return NetAppRestError(cause=cause)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_ontap_error(401), FailedPrecondition),
        (_ontap_error(403), FailedPrecondition),
        (_ontap_error(404), NotFound),
        (_ontap_error(400, "Not enough space in volume", "13"), ResourceExhausted),
        (_ontap_error(400, "Maximum number of clones reached"), ResourceExhausted),
        (_ontap_error(400, "Unexpected argument"), Internal),
        (_ontap_error(503), Unavailable),
        (NetAppRestError(cause=requests.exceptions.ConnectionError()), Unavailable),
        (NetAppRestError(cause=requests.exceptions.ReadTimeout()), Unknown),
        (NetAppRestError("Polling timed out after 60 seconds. Job is still running"), Unknown),
    ],
)
def test_ontap_errors_map_to_the_documented_codes(exc: Exception, expected: type) -> None:
    error = na_errors.translate(exc, url="https://c1:443", action="take", secret=SECRET)
    assert type(error) is expected, error


async def test_key_locks_serialise_one_key_and_forget_it_after() -> None:
    import asyncio

    from vmsnap_sdk.toolkit import KeyLocks

    locks = KeyLocks()
    inside: list[str] = []
    peak = 0

    async def hold(key: str) -> None:
        nonlocal peak
        async with locks(key):
            inside.append(key)
            peak = max(peak, inside.count("a"))
            await asyncio.sleep(0)
            inside.remove(key)

    await asyncio.gather(*(hold(k) for k in ["a", "a", "a", "b"]))
    assert peak == 1
    assert len(locks) == 0
