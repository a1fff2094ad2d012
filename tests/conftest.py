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


# The PostgreSQL fixtures (pg_cluster, pg_url, db_url) for every test folder.
from tests.support.postgres import db_url, pg_cluster, pg_url  # noqa: E402, F401
