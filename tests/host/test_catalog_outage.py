"""The PostgreSQL catalog unreachable: mutating calls fail UNAVAILABLE before any
side effect, and the host carries on once the database is back (README,
"Beyond one machine")."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.driver import Options
from tests.host.conftest import make_rig
from tests.support.postgres import MISSING, skip_or_fail
from vmsnap_host.store.store import CatalogUnavailable
from vmsnap_stack.pgcluster import PgCluster, find_bindir


@pytest.fixture
def own_cluster() -> Iterator[PgCluster]:
    """A cluster of this test alone: it is stopped and started again."""
    if find_bindir() is None:
        skip_or_fail(MISSING)
    directory = Path(tempfile.mkdtemp(prefix="vs-pg-", dir="/tmp"))
    directory.chmod(0o711)
    cluster = PgCluster(directory / "pg")
    cluster.start(fast=True)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def test_no_side_effect_while_the_catalog_is_unreachable(
    tmp_path: Path, own_cluster: PgCluster
) -> None:
    rig = await make_rig(
        tmp_path,
        Options(name="io.vmsnap.test.a", scheme="a"),
        Options(name="io.vmsnap.test.b", scheme="b"),
        db=own_cluster.url("vmsnap"),
    )
    try:
        await rig.define()
        first = await rig.wait(await rig.create("s1"))
        assert first.error is None, first.error
        takes = [len([c for c in d.calls if c[0] == "take"]) for d in rig.drivers.values()]

        own_cluster.stop()
        with pytest.raises(CatalogUnavailable) as caught:
            await rig.create("s2")
        assert caught.value.code.name == "UNAVAILABLE"
        assert "password" not in caught.value.message
        with pytest.raises(CatalogUnavailable):
            await rig.manager.delete_snapshot("d1", first.vm_snapshot_id)
        # Nothing was taken, nothing frozen.
        assert [len([c for c in d.calls if c[0] == "take"]) for d in rig.drivers.values()] == takes
        assert not rig.frozen()

        own_cluster.start(fast=True)  # back: the same store goes on
        second = await rig.wait(await rig.create("s2"))
        assert second.error is None, second.error
    finally:
        await rig.close()
