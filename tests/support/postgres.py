"""A throw-away PostgreSQL cluster for the tests (Debian's server binaries).

One cluster per pytest session — so one per xdist worker, each in its own
directory on a unix socket of its own, no TCP port — and a fresh database per
test. Where the server binaries are missing the PostgreSQL tests are skipped
with the reason, except in CI (``CI=true``), where that is a failure: CI
installs the ``postgresql`` package (.ci/apt-packages.txt).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmsnap_stack.pgcluster import PgCluster, PgClusterError, find_bindir

BACKENDS = ("sqlite", "postgresql")
MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql"
)


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI must run the PostgreSQL tests)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    if find_bindir() is None:
        skip_or_fail(MISSING)
    directory = Path(tempfile.mkdtemp(prefix="vs-pg-", dir="/tmp"))
    directory.chmod(0o711)  # as root the server runs as postgres, which must get through
    cluster = PgCluster(directory / "pg")
    try:
        cluster.start(fast=True)
    except PgClusterError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        skip_or_fail(f"cannot start a PostgreSQL cluster: {exc}")
    yield cluster
    try:
        cluster.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """The URL of a new, empty database."""
    return pg_cluster.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh catalog URL on each backend (the PostgreSQL cluster starts only when
    a test asks for it)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return str(request.getfixturevalue("pg_url"))
