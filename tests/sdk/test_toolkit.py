"""The vendor toolkit: settings, secrets, per-key locks, blocking calls at the caller's pace."""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from pathlib import Path

import pytest

from vmsnap_sdk._context import CallContext, _reset_call, _set_call
from vmsnap_sdk.errors import DeadlineExceeded
from vmsnap_sdk.toolkit import (
    BlockingCalls,
    ConfigError,
    Secret,
    Settings,
    add_array_arguments,
    array_endpoint,
    deadline_remaining,
    read_secret_file,
)


def _with_deadline(seconds: float) -> object:
    return _set_call(CallContext(method="/x", deadline=time.monotonic() + seconds))


async def test_no_more_vendor_calls_run_at_once_than_the_bound() -> None:
    calls = BlockingCalls(2)
    running = 0
    most = 0
    lock = threading.Lock()

    def vendor() -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return 7

    results = await asyncio.gather(*(calls.run(vendor) for _ in range(8)))
    assert results == [7] * 8
    assert most == 2
    assert calls.in_flight == 0


async def test_the_caller_s_deadline_ends_the_wait_and_the_slot_is_kept_until_the_thread_ends() -> (
    None
):
    calls = BlockingCalls(1)
    release = threading.Event()
    token = _with_deadline(0.2)
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="take snapshot s1: no answer"):
            await calls.run(lambda: release.wait(10), what="take snapshot s1")
        assert time.monotonic() - started < 2.0
    finally:
        _reset_call(token)  # type: ignore[arg-type]
    # The vendor call still runs in its thread: it holds the one slot.
    assert calls.in_flight == 1
    token = _with_deadline(0.2)
    try:
        with pytest.raises(DeadlineExceeded, match="stayed busy"):
            await calls.run(lambda: 1, what="list")
    finally:
        _reset_call(token)  # type: ignore[arg-type]
    release.set()
    assert await calls.run(lambda: 2) == 2  # the slot came back
    assert calls.in_flight == 0


async def test_a_call_whose_caller_gave_up_is_not_started() -> None:
    calls = BlockingCalls(1)
    started: list[int] = []
    token = _set_call(CallContext(method="/x", deadline=time.monotonic() - 1))
    try:
        with pytest.raises(DeadlineExceeded, match="before it started"):
            await calls.run(lambda: started.append(1))
    finally:
        _reset_call(token)
    assert started == []


async def test_the_vendor_code_in_the_thread_sees_the_time_left() -> None:
    calls = BlockingCalls(1)
    token = _with_deadline(5)
    try:
        left = await calls.run(lambda: deadline_remaining(60.0))
    finally:
        _reset_call(token)  # type: ignore[arg-type]
    assert 3 < left <= 5
    assert await calls.run(lambda: deadline_remaining(60.0)) == 60.0  # no deadline: the cap


async def test_a_vendor_error_comes_out_as_it_was_raised() -> None:
    def boom() -> None:
        raise KeyError("volume 7")

    with pytest.raises(KeyError, match="volume 7"):
        await BlockingCalls(1).run(boom)


def test_a_secret_never_prints_itself_and_comes_only_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("hunter2\n")
    secret = read_secret_file(path)
    assert secret.reveal() == "hunter2"
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert "hunter2" not in repr({"password": secret})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_secret_file(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"cannot read password file .*missing"):
        read_secret_file(tmp_path / "missing")
    (tmp_path / "big").write_bytes(b"x" * 70000)
    with pytest.raises(ConfigError, match="longer than"):
        read_secret_file(tmp_path / "big")


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    group = add_array_arguments(parser, "Test array", "T_")
    group.add_argument("--pool")
    return parser.parse_args(list(argv))


def test_a_flag_wins_over_the_environment_which_wins_over_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "t.toml"
    conf.write_text('pool = "from-file"\nuser = "file-user"\ncall_timeout = 9\n')
    env = {"T_CONFIG": str(conf), "T_POOL": "from-env"}
    assert Settings("T_", _args(), env).pick("pool") == "from-env"
    assert Settings("T_", _args("--pool", "from-flag"), env).pick("pool") == "from-flag"
    settings = Settings("T_", _args(), {"T_CONFIG": str(conf)})
    assert settings.pick("pool") == "from-file"
    assert settings.number("call_timeout", 60) == 9
    with pytest.raises(ConfigError, match="call_timeout must be above 0"):
        Settings("T_", _args("--call-timeout", "0"), {}).number("call_timeout", 60)
    (tmp_path / "bad.toml").write_text("pool = [")
    with pytest.raises(ConfigError, match="cannot read config file"):
        Settings("T_", _args("--config", str(tmp_path / "bad.toml")), {})


def test_the_endpoint_is_checked_at_start(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret")
    base = ("--user", "admin", "--password-file", str(pw))
    endpoint = array_endpoint(Settings("T_", _args("--url", "https://array:8443", *base), {}))
    assert (endpoint.host, endpoint.port, endpoint.verify_tls) == ("array", 8443, True)
    assert endpoint.url == "https://array:8443" and isinstance(endpoint.password, Secret)
    with pytest.raises(ConfigError, match=r"URL is required .*--url or T_URL"):
        array_endpoint(Settings("T_", _args(*base), {}))
    with pytest.raises(ConfigError, match="must be https"):
        array_endpoint(Settings("T_", _args("--url", "http://array", *base), {}))
    with pytest.raises(ConfigError, match="password file is required"):
        array_endpoint(Settings("T_", _args("--url", "array", "--user", "a"), {}))
    with pytest.raises(ConfigError, match="host names only"):
        array_endpoint(
            Settings("T_", _args("--url", "https://10.0.0.1", *base), {}),
            tls_needs_host_name="the SDK verifies TLS for host names only",
        )
    insecure = array_endpoint(
        Settings("T_", _args("--url", "10.0.0.1", *base), {"T_INSECURE": "1"}),
        tls_needs_host_name="x",
    )
    assert insecure.verify_tls is False
    with pytest.raises(ConfigError) as caught:
        array_endpoint(Settings("T_", _args("--url", "array", "--ca-file", "/nope", *base), {}))
    assert "s3cret" not in str(caught.value)
