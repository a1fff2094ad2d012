"""Snapshot policies on a real host process (issue 14, part 1, acceptance): a policy
of every 2 s on a VM chosen by its labels, a manual snapshot beside it, the host
SIGKILLed and restarted in between, /metrics scraped."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.host.e2e import CONFIG, Cluster, eventually
from tests.host.test_metrics import scrape, value
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb

EVERY = 2.0


class PolicyCluster(Cluster):
    """The e2e cluster with room for the policy's snapshots and the manual one."""

    def start_host(self) -> None:
        config = self.work / "host.toml"
        config.write_text(
            CONFIG.format(sock=self.sock)
            .replace("max_snapshots_per_vm = 3", "max_snapshots_per_vm = 10")
            .replace("queue_bound = 1", "queue_bound = 4")
        )
        self._start(
            "host",
            [
                "-m",
                "vmsnap_host",
                "--db",
                str(self.work / "host.db"),
                "--config",
                str(config),
                "--instance-id",
                "test-host",
            ],
        )
        if self.channel is None:
            self.channel = grpc.insecure_channel(f"unix://{self.sock}/host.sock")


@pytest.fixture
def stack(sockdir: Path, tmp_path: Path) -> Iterator[PolicyCluster]:
    c = PolicyCluster(sockdir, tmp_path, common_flags=("--metrics-listen", "127.0.0.1:0"))
    try:
        with c.together():
            c.start_agent()
            for letter in ("a", "b"):
                c.start_driver(letter)
        c.start_host()
        yield c
    finally:
        c.close()


def _runs(c: Cluster) -> list[pb.PolicyRun]:
    return list(c.host.GetPolicy(pb.GetPolicyRequest(name="every2"), timeout=10).runs)


def _when(run: pb.PolicyRun) -> float:
    return run.scheduled_time.ToNanoseconds() / 1e9


def covered_exactly_once(runs: list[pb.PolicyRun], every: float) -> bool:
    """Every fire time from the first run's to the last run's is a run's own time or
    folded into the run before it (``missed``), and none is made twice."""
    ordered = sorted(runs, key=_when)
    times = [_when(r) for r in ordered]
    if len(times) != len(set(times)):
        return False
    return all(
        round((b - a) / every) == 1 + r.missed_count
        for r, a, b in zip(ordered, times, times[1:], strict=False)
    )


def _live(c: Cluster) -> list[pb.VMSnapshot]:
    listed = c.host.ListVMSnapshots(pb.ListVMSnapshotsRequest(vm_id="vm1"), timeout=10)
    return [s for s in listed.vm_snapshots if s.state == pb.VM_SNAPSHOT_STATE_READY]


def test_a_policy_runs_on_time_keeps_its_set_and_survives_a_kill(stack: PolicyCluster) -> None:
    c = stack
    vm = common_pb2.VM(
        id="vm1",
        name="vm1",
        memory_mib=64,
        volumes=[
            common_pb2.Volume(disk="vda", locator="a://pool/1"),
            common_pb2.Volume(disk="vdb", locator="b://pool/2"),
        ],
    )
    defined = c.host.DefineVM(pb.DefineVMRequest(vm=vm, labels={"env": "prod"}), timeout=10)
    assert dict(defined.labels) == {"env": "prod"}
    c.host.StartVM(pb.StartVMRequest(vm_id="vm1"), timeout=10)
    labels = c.host.SetVMLabels(
        pb.SetVMLabelsRequest(vm_id="vm1", labels={"tier": "db"}, remove_keys=["env"]), timeout=10
    ).labels
    assert dict(labels) == {"tier": "db"}
    assert dict(c.host.GetVM(pb.GetVMRequest(vm_id="vm1"), timeout=10).labels) == {"tier": "db"}
    listed = c.host.ListVMs(pb.ListVMsRequest(), timeout=10)
    assert dict(listed.labels["vm1"].labels) == {"tier": "db"}

    manual = c.wait(c.create("vm1", "by-hand"))
    assert manual.error.code == 0, manual
    policy = c.host.CreatePolicy(
        pb.CreatePolicyRequest(
            policy=pb.SnapshotPolicy(
                name="every2",
                selector={"tier": "db"},
                schedule="@every 2s",
                retention=pb.Retention(keep_last=2),
                quiesce=pb.QUIESCE_POLICY_OFF,
            )
        ),
        timeout=10,
    ).policy
    assert policy.next_run_time.ToNanoseconds() / 1e9 % EVERY == 0

    # Snapshots appear on time: three runs, each on its 2 s grid point.
    eventually(lambda: sum(r.outcome == "SUCCEEDED" for r in _runs(c)) >= 3, 30, "three runs")
    done = [r for r in _runs(c) if r.outcome == "SUCCEEDED"]
    times = sorted(_when(r) for r in done)
    assert all(t % EVERY == 0 for t in times)
    # Retention kept exactly the two newest of the policy's; the manual one stays.
    eventually(
        lambda: len([s for s in _live(c) if s.policy_name == "every2"]) == 2, 10, "retention"
    )
    live = _live(c)
    assert manual.vm_snapshot_id in {s.id for s in live}
    assert {s.policy_id for s in live if s.id != manual.vm_snapshot_id} == {policy.id}
    shown = c.host.GetVMSnapshot(pb.GetVMSnapshotRequest(id=manual.vm_snapshot_id)).vm_snapshot
    assert shown.policy_id == ""

    samples = scrape(c.metrics_url("host"))
    assert value(samples, "vmsnap_policy_runs_total", policy="every2", outcome="succeeded") >= 3
    age = value(samples, "vmsnap_policy_newest_snapshot_age_seconds", policy="every2")
    assert 0 < age < 10

    # SIGKILL the host for more than two periods, then start it again.
    before = {_when(r) for r in _runs(c)}
    c.procs["host"].kill()
    time.sleep(2.5 * EVERY)
    restarting = time.time()
    c.start_host()

    def late() -> list[pb.PolicyRun]:
        # Claimed after the kill for a time before the restart: the missed ones. (Its
        # scheduler starts before the host serves: later runs may come first.)
        return [r for r in _runs(c) if _when(r) not in before and _when(r) < restarting]

    # The runs due while it was down are taken once, at start…
    eventually(late, 20, "the missed run")
    assert len(late()) == 1 and late()[0].missed_count >= 1, late()
    # …and the schedule goes on from there: a later run on the grid, none doubled.
    eventually(lambda: any(_when(r) > restarting for r in _runs(c)), 20, "a run after restart")
    runs = _runs(c)
    scheduled = [_when(r) for r in runs]
    assert len(scheduled) == len(set(scheduled)), "a run was made twice"
    assert covered_exactly_once(runs, EVERY), [(_when(r), r.missed_count) for r in runs]
    eventually(
        lambda: all(r.outcome in ("SUCCEEDED", "FAILED") for r in _runs(c)[1:]), 20, "outcomes"
    )
    live = _live(c)
    assert manual.vm_snapshot_id in {s.id for s in live}, "the manual snapshot was deleted"
    # Each policy snapshot is named after its run's scheduled time: one snapshot per run.
    names = [s.name for s in live if s.policy_name == "every2"]
    assert len(names) == len(set(names)) and len(names) <= 3

    # Pause stops the runs; the policy is listed with its state.
    c.host.PausePolicy(pb.PausePolicyRequest(name="every2"), timeout=10)
    count = len(_runs(c))
    time.sleep(1.5 * EVERY)
    assert len(_runs(c)) == count
    [listed_policy] = c.host.ListPolicies(pb.ListPoliciesRequest(), timeout=10).policies
    assert listed_policy.paused and not listed_policy.HasField("next_run_time")
    c.host.DeletePolicy(pb.DeletePolicyRequest(name="every2"), timeout=10)
    with pytest.raises(grpc.RpcError) as caught:
        c.host.GetPolicy(pb.GetPolicyRequest(name="every2"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # Its snapshots stay.
    assert {s.policy_name for s in _live(c)} >= {"every2"}
