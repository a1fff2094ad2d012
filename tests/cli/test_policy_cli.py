"""``vmsnap policy …`` and VM labels from the command line, on a running stack."""

from __future__ import annotations

import json
import time

import pytest

from tests.cli.conftest import Up
from tests.cli.stack_support import vmsnap
from vmsnap_host.client import SyncHostClient


@pytest.mark.timeout(300)  # a dozen CLI processes on a stack that may be busy
def test_policy_and_label_commands(shared_up: Up) -> None:
    home = shared_up.home
    defined = vmsnap(
        home,
        "vm",
        "define",
        "vm-pol",
        "--disk",
        "vda=file:///var/lib/vm-pol.qcow2,format=qcow2,size=4096",
        "--label",
        "env=prod",
        "--label",
        "tier=web",
        "--json",
    )
    assert json.loads(defined.stdout)["labels"] == {"env": "prod", "tier": "web"}
    vmsnap(home, "vm", "start", "vm-pol")
    changed = json.loads(
        vmsnap(home, "vm", "label", "vm-pol", "team=ops", "tier-", "--json").stdout
    )
    assert changed == {"env": "prod", "team": "ops"}
    shown = json.loads(vmsnap(home, "vm", "show", "vm-pol", "--json").stdout)
    assert shown["labels"] == {"env": "prod", "team": "ops"}

    bad = vmsnap(
        home,
        "policy",
        "create",
        "p-bad",
        "--vm",
        "vm-pol",
        "--schedule",
        "61 * * * *",
        "--keep-last",
        "1",
        check=False,
    )
    assert bad.returncode != 0 and "schedule" in bad.stdout + bad.stderr
    created = json.loads(
        vmsnap(
            home,
            "policy",
            "create",
            "p-cli",
            "--selector",
            "team=ops,env=prod",
            "--schedule",
            "@every 1s",
            "--keep-last",
            "1",
            "--quiesce",
            "off",
            "--json",
        ).stdout
    )
    assert created["selector"] == {"env": "prod", "team": "ops"} and not created["paused"]
    # Polled through the client: each CLI start costs seconds on a loaded machine.
    with SyncHostClient.connect(shared_up.stack["host"]) as host:
        deadline = time.monotonic() + 60
        while not any(r.outcome == "SUCCEEDED" for r in host.get_policy("p-cli").runs):
            assert time.monotonic() < deadline, host.get_policy("p-cli")
            time.sleep(0.5)
    shown_policy = json.loads(vmsnap(home, "policy", "show", "p-cli", "--json").stdout)
    assert "SUCCEEDED" in {r["outcome"] for r in shown_policy["runs"]}
    snapshots = json.loads(vmsnap(home, "snapshot", "list", "--vm", "vm-pol", "--json").stdout)
    assert "p-cli" in {s["policy_name"] for s in snapshots}
    assert "p-cli" in vmsnap(home, "policy", "list").stdout  # the table, for people

    paused = json.loads(vmsnap(home, "policy", "pause", "p-cli", "--json").stdout)
    assert paused["paused"] and paused["next_run_time"] is None
    resumed = json.loads(vmsnap(home, "policy", "resume", "p-cli", "--json").stdout)
    assert not resumed["paused"] and resumed["next_run_time"]
    vmsnap(home, "policy", "delete", "p-cli")
    gone = vmsnap(home, "policy", "show", "p-cli", check=False)
    assert gone.returncode != 0 and "p-cli" in gone.stdout + gone.stderr
