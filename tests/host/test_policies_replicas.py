"""Snapshot policies on two host replicas sharing one PostgreSQL catalog: only the
leader runs them, and when the leader is SIGKILLed the other goes on with the
schedule, no fire time skipped or made twice (docs/design.md, "Policies")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.host.e2e import eventually
from tests.host.replicas import Replicas, replicas
from tests.host.test_policies_e2e import _when, covered_exactly_once
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb

EVERY = 1.0


@pytest.fixture
def two(sockdir: Path, tmp_path: Path, pg_url: str) -> Iterator[Replicas]:
    yield from replicas(sockdir, tmp_path, pg_url, 2)


def _runs(c: Replicas, on: str) -> list[pb.PolicyRun]:
    return list(c.on(on).GetPolicy(pb.GetPolicyRequest(name="p1"), timeout=10).runs)


def test_only_the_leader_runs_policies_and_the_other_takes_over(two: Replicas) -> None:
    c = two
    c.define_vm("vm1")
    c.on("host-1").CreatePolicy(
        pb.CreatePolicyRequest(
            policy=pb.SnapshotPolicy(
                name="p1",
                vm_id="vm1",
                schedule="@every 1s",
                retention=pb.Retention(keep_last=3),
                quiesce=pb.QUIESCE_POLICY_OFF,
            )
        ),
        timeout=10,
    )
    eventually(lambda: sum(r.outcome == "SUCCEEDED" for r in _runs(c, "host-2")) >= 3, 30)
    leaders = [n for n in ("host-1", "host-2") if "leading:" in c.procs[n].output()]
    assert len(leaders) == 1, leaders
    leader = leaders[0]
    other = "host-2" if leader == "host-1" else "host-1"
    # Every create so far came from the leader (its instance id owns the operations).
    ops = c.on(other).ListOperations(pb.ListOperationsRequest(vm_id="vm1"), timeout=10)
    assert {op.request_id.split(".")[0] for op in ops.operations} == {"policy"}

    c.procs[leader].kill()
    killed = time.time()
    eventually(lambda: any(_when(r) > killed + 2 for r in _runs(c, other)), 30, "takeover")
    eventually(lambda: all(r.outcome in ("SUCCEEDED", "FAILED") for r in _runs(c, other)[1:]), 30)
    runs = _runs(c, other)
    assert covered_exactly_once(runs, EVERY), [(_when(r), r.missed_count, r.outcome) for r in runs]
    assert "leading:" in c.procs[other].output()
