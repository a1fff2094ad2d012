"""Fixtures shared by every test folder."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for unix sockets (paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


#: Folders whose tests boot QEMU guests: under pytest-xdist (``make test`` runs
#: ``-n auto --dist loadgroup``) they share one worker, one after another, so a
#: guest's freeze and lease timings are not squeezed by another guest booting on
#: the same cores; every other test runs on the other workers.
SERIAL_GROUPS = {"agent_qemu": "qemu", "e2e_qemu": "qemu"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        try:
            folder = item.path.relative_to(here).parts[0]
        except ValueError:
            continue
        group = SERIAL_GROUPS.get(folder)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
