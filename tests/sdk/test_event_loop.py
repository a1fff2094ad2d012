"""Which event loop a vmsnap server runs on (vmsnap_sdk/event_loop.py): uvloop
by default where installed, asyncio's on request, and the QEMU agent always on
asyncio's (it passes file descriptors over its QMP socket)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import ROOT, Proc, wait_serving
from vmsnap_sdk import event_loop


def _name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def _loop_of(pid: int) -> str:
    """What the process has loaded: uvloop's extension, or not."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "uvloop" if "uvloop" in maps else "asyncio"


def test_auto_is_uvloop_where_installed_and_asyncio_is_asyncios_own() -> None:
    loop = event_loop.loop_factory("auto")()
    try:
        assert _name(loop) == "uvloop"
    finally:
        loop.close()
    assert event_loop.loop_factory("asyncio") is asyncio.new_event_loop


def test_a_missing_uvloop_falls_back_under_auto_and_is_an_error_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert event_loop.loop_factory("auto") is asyncio.new_event_loop
    with pytest.raises(ValueError, match="pip install uvloop"):
        event_loop.loop_factory("uvloop")


def test_an_unknown_choice_names_the_flag_and_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match=r"--event-loop.*VMSNAP_EVENT_LOOP"):
        event_loop.loop_factory("tokio")
    monkeypatch.setenv("VMSNAP_EVENT_LOOP", " AsyncIO ")
    assert event_loop.default_choice() == "asyncio"
    monkeypatch.delenv("VMSNAP_EVENT_LOOP")
    assert event_loop.default_choice() == "auto"


def test_run_returns_the_result_on_either_loop() -> None:
    async def which() -> str:
        return _name(asyncio.get_running_loop())

    assert event_loop.run(which(), event_loop.loop_factory("uvloop")) == "uvloop"
    assert event_loop.run(which(), event_loop.loop_factory("asyncio")) == "asyncio"


@pytest.mark.parametrize(
    ("env", "flag", "expected"),
    [("", [], "uvloop"), ("asyncio", [], "asyncio"), ("", ["--event-loop", "asyncio"], "asyncio")],
)
def test_a_driver_process_runs_on_the_loop_asked(
    sockdir: Path, tmp_path: Path, env: str, flag: list[str], expected: str
) -> None:
    address = f"unix://{sockdir}/d.sock"
    environ = {k: v for k, v in os.environ.items() if k != "VMSNAP_EVENT_LOOP"}
    if env:
        environ["VMSNAP_EVENT_LOOP"] = env
    proc = Proc(
        [sys.executable, str(ROOT / "sdk/examples/minimal_driver.py"), "--listen", address, *flag],
        tmp_path / "driver.log",
        env=environ,
    )
    try:
        wait_serving(address)
        assert _loop_of(proc.pid) == expected
    finally:
        proc.stop()


def _refused(*argv: str) -> str:
    """Run a server's command line that must exit at once; its stderr."""
    done = subprocess.run(
        [sys.executable, *argv], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0, done.stdout
    return done.stderr


def test_a_bad_event_loop_flag_exits_saying_what_to_pass(tmp_path: Path) -> None:
    driver = str(ROOT / "sdk/examples/minimal_driver.py")
    said = _refused(driver, "--listen", f"unix://{tmp_path}/x.sock", "--event-loop", "tokio")
    assert "expected one of auto, uvloop, asyncio" in said


def test_the_qemu_agent_refuses_uvloop_and_says_why(tmp_path: Path) -> None:
    said = _refused(
        *("-m", "vmsnap_agent.cli", "--hypervisor", "qemu"),
        *("--listen", f"unix://{tmp_path}/a.sock", "--state", str(tmp_path / "state")),
        *("--event-loop", "uvloop"),
    )
    assert "runs on the asyncio event loop" in said
    assert "--event-loop asyncio" in said
