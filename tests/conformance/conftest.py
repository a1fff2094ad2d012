"""Drivers for the conformance tests, as real processes on unix sockets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import ROOT, Proc, python_proc, wait_serving

#: Test volumes for the example driver, which has no fixture (it claims any mem://).
EXAMPLE_PARAMS = {"volumes": [{"locator": f"mem://pool/v{i}"} for i in range(3)]}


def _serve(args: list[str], address: str, log: Path) -> Iterator[str]:
    proc: Proc = python_proc([*args, "--listen", address, "--log-level", "warning"], log)
    try:
        wait_serving(address)
        yield address
    finally:
        proc.stop()


@pytest.fixture
def reference_driver(sockdir: Path, tmp_path: Path) -> Iterator[str]:
    """The full in-memory reference driver (every capability, the fixture too)."""
    yield from _serve(
        ["-m", "tests.conformance.reference_driver"],
        f"unix://{sockdir}/ref.sock",
        tmp_path / "ref.log",
    )


@pytest.fixture
def example_driver(sockdir: Path, tmp_path: Path) -> Iterator[str]:
    """sdk/examples/minimal_driver.py, as a vendor would start it."""
    yield from _serve(
        [str(ROOT / "sdk/examples/minimal_driver.py")],
        f"unix://{sockdir}/ex.sock",
        tmp_path / "ex.log",
    )


@pytest.fixture
def example_params(tmp_path: Path) -> Path:
    path = tmp_path / "params.json"
    path.write_text(json.dumps(EXAMPLE_PARAMS))
    return path
