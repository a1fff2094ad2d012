"""Config and API paging, without processes (planner and registry: test_planner.py,
test_registry.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.host.conftest import Rig
from vmsnap_host.config import ConfigError, parse
from vmsnap_sdk import Volume


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    config = parse(
        {
            "host": {"max_snapshots_per_vm": 5, "lease_seconds": 10},
            "drivers": [{"address": "unix:///tmp/a.sock", "order": 2}],
            "agents": [{"address": "127.0.0.1:5000"}],
        }
    )
    assert config.settings.max_snapshots_per_vm == 5 and config.drivers[0].order == 2
    with pytest.raises(ConfigError, match=r"host.queue_bound: must be a number"):
        parse({"host": {"queue_bound": -1}})
    with pytest.raises(ConfigError, match=r"host.nope: unknown setting"):
        parse({"host": {"nope": 1}})
    with pytest.raises(ConfigError, match=r"drivers\[0\].address: is required"):
        parse({"drivers": [{}]})
    with pytest.raises(ConfigError, match=r"drivers\[0\].tls.ca_file: .* is not a readable file"):
        parse({"drivers": [{"address": "unix:///a", "tls": {"ca_file": str(tmp_path / "x")}}]})


async def test_list_pages_by_vm(rig: Rig) -> None:
    await rig.define()
    await rig.define("vm2", volumes=(Volume("vda", "file:///x"),))
    for name in ("s1", "s2", "s3"):
        await rig.wait(await rig.create(name))
    await rig.wait(await rig.create("t", "vm2"))
    page = rig.store.list_snapshots("vm1", 0, 2, False)
    assert [s.name for _, s in page] == ["s1", "s2"]
    rest = rig.store.list_snapshots("vm1", page[-1][0], 2, False)
    assert [s.name for _, s in rest] == ["s3"]


def test_the_host_refuses_a_database_url_it_cannot_use(capsys: pytest.CaptureFixture[str]) -> None:
    from vmsnap_host.main import parse_args

    args = parse_args(["--listen", "unix:///tmp/x.sock", "--db", "postgresql://u@/db?host=/tmp"])
    assert args.db.startswith("postgresql://")
    with pytest.raises(SystemExit):
        parse_args(["--listen", "unix:///tmp/x.sock", "--db", "mysql://u@db/x"])
    assert "sqlite:///PATH" in capsys.readouterr().err
