"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for unix sockets (paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


#: Folders whose tests boot QEMU guests: under pytest-xdist (``make test`` runs
#: ``-n <cores + 1> --dist loadgroup``) they share one worker, one after another, so a
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


def _work_unit(nodeid: str) -> str:
    """The xdist work unit of a test: its SERIAL_GROUPS group, its ``xdist_group``
    (when xdist could add it to the id), else its module."""
    if nodeid.rfind("@") > nodeid.rfind("]"):
        return nodeid.rsplit("@", 1)[1]
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    if len(parts) > 2 and parts[0] == "tests" and parts[1] in SERIAL_GROUPS:
        return SERIAL_GROUPS[parts[1]]
    return path


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` that works on pytest 9, sending whole modules.

    xdist's own loadgroup puts the group into the test's id, which pytest 9 no
    longer lets it change: every test became its own unit, QEMU guests booted on
    both workers at once and a module's shared stack (``scope="module"``) was
    started once per worker that got one of its tests. Here the unit is the group
    (from the folder) or the module, so a module's stack starts once; the QEMU
    group, the longest unit, goes out first so it is not the run's tail, then the
    modules in collection order.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            for group in reversed(dict.fromkeys(SERIAL_GROUPS.values())):
                if group in self.workqueue:
                    self.workqueue.move_to_end(group, last=False)
            super()._assign_work_unit(node)

    # Else units ordered by their number of tests: the chaos module's two
    # long tests would be sent last, as the run's tail.
    config.option.loadscopereorder = False
    return ModuleScheduling(config, log)


# A PostgreSQL catalog read on an event loop's thread fails (LoopRead) instead of
# only being logged: every place that would block the loop for a round trip is
# found by the tests on PostgreSQL (docs/design.md, "Catalog reads off the event
# loop"). Host processes the tests start inherit it.
os.environ["VMSNAP_STRICT_LOOP_READS"] = "1"

# The PostgreSQL fixtures (pg_cluster, pg_url, db_url) for every test folder.
from tests.support.postgres import db_url, pg_cluster, pg_url  # noqa: E402, F401
