"""Stacks for the CLI's tests: one shared by the tests that only use it, one per test else."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.stack_support import Up


@pytest.fixture(scope="package")
def shared_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """A ``vmsnap up`` for tests that add their own VMs and kill nothing (starting a
    stack with two emulators costs seconds on a busy machine). Package-scoped, not
    session: an idle stack polls its parts (~7 % of a core), and a session's stayed
    up on every xdist worker until the whole run ended; a worker runs this folder's
    modules one after another (whole modules, in order: tests/conftest.py), so the
    stack still starts once per worker."""
    home = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    stack = Up(home, tmp_path_factory.mktemp("shared-up") / "up.log")
    try:
        yield stack
    finally:
        stack.proc.stop(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def up(sockdir: Path, tmp_path: Path) -> Iterator[Up]:
    """A ``vmsnap up`` of this test alone (for tests that kill or stop parts of it)."""
    stack = Up(sockdir, tmp_path / "up.log")
    try:
        yield stack
    finally:
        stack.proc.stop(timeout=30)
