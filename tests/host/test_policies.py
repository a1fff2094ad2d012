"""Snapshot policies in process: the real manager, catalog and sim agent, a clock
the test moves (issue 14, part 1; docs/design.md, "Policies")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.fakes.driver import Options
from tests.host.conftest import FAST, Rig, make_rig
from vmsnap_host.model import SnapshotState
from vmsnap_host.policies import scheduler as scheduler_module
from vmsnap_host.policies.catalog import PolicyCatalog
from vmsnap_host.policies.model import (
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Policy,
    Retention,
    check_policy,
    parse_schedule,
    run_request_id,
    snapshot_name,
)
from vmsnap_host.policies.retention import keep
from vmsnap_host.policies.scheduler import Scheduler
from vmsnap_sdk.errors import InvalidArgument

T0 = 1_800_000_000.0  # a multiple of 10: @every 10s fires at T0, T0 + 10, …


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def prig(tmp_path: Path, db_url: str) -> AsyncIterator[Rig]:
    """A rig whose VMs have room for every snapshot the tests keep."""
    r = await make_rig(
        tmp_path,
        Options(name="io.vmsnap.test.a", scheme="a"),
        Options(name="io.vmsnap.test.b", scheme="b"),
        settings=replace(FAST, max_snapshots_per_vm=20, queue_bound=8),
        db=db_url,
    )
    yield r
    await r.close()


def _policy(name: str, schedule: str = "@every 10s", **kw: object) -> Policy:
    kw.setdefault("vm_id", "vm1")
    kw.setdefault("retention", Retention(keep_last=2))
    return Policy(id="", name=name, schedule=schedule, **kw)  # type: ignore[arg-type]


async def _create(catalog: PolicyCatalog, policy: Policy, now: float) -> Policy:
    return await catalog.create(policy, policy.parsed().next_after(now))


async def _settle(sched: Scheduler, rig: Rig) -> None:
    """Tick until no run of this clock's time is open (creates and deletes done)."""
    for _ in range(200):
        await sched.tick_once()
        if not sched.catalog.open_runs():
            await rig.manager.idle()
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"runs still open: {sched.catalog.open_runs()}")


def _live(rig: Rig, vm: str = "vm1") -> list:  # type: ignore[type-arg]
    return sorted(
        (s for s in rig.store.live_snapshots(vm) if s.state is SnapshotState.READY),
        key=lambda s: s.create_time,
    )


# --- schedules and retention rules (pure) -------------------------------------------------


def test_every_fires_on_multiples_and_counts_missed_times() -> None:
    every = parse_schedule("@every 10s")
    assert every.next_after(T0) == T0 + 10
    assert every.next_after(T0 + 3) == T0 + 10
    assert every.count_between(T0, T0 + 55) == 5
    assert parse_schedule("@every 2m").every == 120


def test_cron_follows_the_time_zone_across_daylight_saving() -> None:
    paris = parse_schedule("30 2 * * *", "Europe/Paris")
    # 2026-03-29: clocks jump from 02:00 to 03:00 in Paris; 02:30 does not exist.
    before = datetime(2026, 3, 28, 12, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    first = datetime.fromtimestamp(paris.next_after(before), ZoneInfo("Europe/Paris"))
    second = datetime.fromtimestamp(paris.next_after(first.timestamp()), ZoneInfo("Europe/Paris"))
    assert (first.day, first.hour, first.minute) == (29, 3, 0)
    assert (second.day, second.hour, second.minute) == (30, 2, 30)
    utc = parse_schedule("0 3 * * *")
    assert datetime.fromtimestamp(utc.next_after(T0), UTC).hour == 3


@pytest.mark.parametrize(
    ("schedule", "zone"),
    [("", ""), ("@every 0s", ""), ("@every 5x", ""), ("61 * * * *", ""), ("0 3 * * *", "Mars/X")],
)
def test_a_bad_schedule_or_zone_is_invalid_argument(schedule: str, zone: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_schedule(schedule, zone)
    assert caught.value.field_violations


def test_retention_keeps_last_daily_and_weekly_like_restic() -> None:
    zone = ZoneInfo("UTC")
    start = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)  # a Thursday
    # Four snapshots a day for 20 days, every 6 hours.
    snaps = [(f"s{i}", start + timedelta(hours=6 * i)) for i in range(80)]
    assert keep(snaps, Retention(keep_last=3), zone) == {"s79", "s78", "s77"}
    # The newest of each of the 3 newest days: 20 Jan (s79), 19 Jan (s75), 18 Jan (s71).
    assert keep(snaps, Retention(keep_daily=3), zone) == {"s79", "s75", "s71"}
    weekly = keep(snaps, Retention(keep_weekly=2), zone)
    # ISO weeks: 19-20 Jan is week 4 (newest s79); 12-18 Jan week 3 (newest: 18 Jan 18:00).
    assert weekly == {"s79", "s71"}
    union = keep(snaps, Retention(keep_last=2, keep_daily=2, keep_weekly=2), zone)
    assert union == {"s79", "s78", "s75", "s71"}


# --- the scheduler on the real manager ----------------------------------------------------


async def test_runs_appear_on_time_and_retention_keeps_exactly_the_set(prig: Rig) -> None:
    await prig.define("vm1")
    catalog = PolicyCatalog(prig.store)
    clock = Clock(T0 + 1)
    sched = Scheduler(catalog, prig.manager, clock=clock)
    policy = await _create(catalog, _policy("nightly", retention=Retention(keep_last=2)), clock())
    assert policy.next_run == T0 + 10

    clock.now = T0 + 9.9
    await _settle(sched, prig)
    assert _live(prig) == [], "nothing before the scheduled time"

    made = []
    for k in range(1, 5):
        clock.now = T0 + 10 * k
        await _settle(sched, prig)
        live = _live(prig)
        made.append(live[-1].id)
        assert live[-1].name == f"nightly-{datetime.fromtimestamp(T0 + 10 * k, UTC):%Y%m%d-%H%M%S}"
        assert live[-1].policy_id == policy.id and live[-1].policy_name == "nightly"
    # Exactly the two newest of the policy's four snapshots are left.
    assert [s.id for s in _live(prig)] == made[-2:]
    runs = catalog.runs(policy.id)
    assert [r.outcome for r in runs] == [SUCCEEDED] * 4
    assert [r.scheduled for r in runs] == [T0 + 40, T0 + 30, T0 + 20, T0 + 10]
    assert sum(len(r.deleted) for r in runs) == 2
    op = prig.store.get_operation(runs[0].operation_id)
    assert op is not None and op.done and op.error is None
    assert op.request_id == run_request_id(policy.id, "vm1", T0 + 40)


async def test_retention_never_deletes_a_manual_or_another_policys_snapshot(
    prig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await prig.define("vm1")
    manual = await prig.wait(await prig.create("by-hand"))
    catalog = PolicyCatalog(prig.store)
    clock = Clock(T0 + 1)
    sched = Scheduler(catalog, prig.manager, clock=clock)
    other = await _create(
        catalog, _policy("other", "@every 20s", retention=Retention(keep_last=5)), clock()
    )
    mine = await _create(catalog, _policy("mine", retention=Retention(keep_last=1)), clock())
    for k in range(1, 5):
        clock.now = T0 + 10 * k
        await _settle(sched, prig)
    live = _live(prig)
    assert manual.vm_snapshot_id in {s.id for s in live}
    assert len([s for s in live if s.policy_id == other.id]) == 2  # T0+20, T0+40
    assert len([s for s in live if s.policy_id == mine.id]) == 1

    # The filter is what protects them: without it, the same retention would delete
    # the manual snapshot (and the other policy's) — this test would fail.
    monkeypatch.setattr(scheduler_module, "own_snapshots", lambda snaps, _pid: snaps)
    await sched.retain(mine, "vm1")
    await prig.manager.idle()
    assert manual.vm_snapshot_id not in {s.id for s in _live(prig)}


async def test_the_current_snapshot_is_never_deleted_by_retention(prig: Rig) -> None:
    await prig.define("vm1", running=False)
    catalog = PolicyCatalog(prig.store)
    clock = Clock(T0 + 1)
    sched = Scheduler(catalog, prig.manager, clock=clock)
    policy = await _create(catalog, _policy("p", retention=Retention(keep_last=2)), clock())
    for k in (1, 2):
        clock.now = T0 + 10 * k
        await _settle(sched, prig)
    older, newer = _live(prig)
    # A revert to the older one makes it the VM's current snapshot: the base the VM
    # runs on and the parent of what comes next.
    await prig.wait(await prig.manager.revert_snapshot("rev-1", older.id, False))
    # A retention that keeps only the newest must still leave it.
    assert await sched.retain(replace(policy, retention=Retention(keep_last=1)), "vm1") == []
    assert {s.id for s in _live(prig)} == {older.id, newer.id}


async def test_a_missed_run_is_taken_once_not_once_per_missed_time(prig: Rig) -> None:
    await prig.define("vm1")
    catalog = PolicyCatalog(prig.store)
    clock = Clock(T0 + 1)
    sched = Scheduler(catalog, prig.manager, clock=clock)
    policy = await _create(catalog, _policy("p", retention=Retention(keep_last=10)), clock())
    # The host was down from T0+1 to T0+65: fire times T0+10 … T0+60 passed.
    clock.now = T0 + 65
    await _settle(sched, prig)
    await _settle(sched, prig)
    runs = catalog.runs(policy.id)
    assert len(runs) == 1 and runs[0].outcome == SUCCEEDED
    assert runs[0].scheduled == T0 + 10 and runs[0].missed == 5
    assert catalog.get("p").next_run == T0 + 70  # type: ignore[union-attr]
    assert len(_live(prig)) == 1
    clock.now = T0 + 70
    await _settle(sched, prig)
    assert [r.scheduled for r in catalog.runs(policy.id)] == [T0 + 70, T0 + 10]


async def test_two_replicas_ticking_together_claim_each_run_once(prig: Rig) -> None:
    await prig.define("vm1")
    catalog = PolicyCatalog(prig.store)
    clock = Clock(T0 + 1)
    one = Scheduler(catalog, prig.manager, clock=clock)
    two = Scheduler(PolicyCatalog(prig.store), prig.manager, clock=clock)
    policy = await _create(catalog, _policy("p", retention=Retention(keep_last=10)), clock())
    for k in range(1, 4):
        clock.now = T0 + 10 * k
        await asyncio.gather(one.tick_once(), two.tick_once(), one.tick_once())
        await _settle(one, prig)
    runs = catalog.runs(policy.id)
    assert sorted(r.scheduled for r in runs) == [T0 + 10, T0 + 20, T0 + 30]
    assert len(_live(prig)) == 3


async def test_a_crash_between_claim_and_create_makes_the_run_once(prig: Rig) -> None:
    await prig.define("vm1")
    catalog = PolicyCatalog(prig.store)
    clock = Clock(T0 + 10)
    policy = await _create(catalog, _policy("p", retention=Retention(keep_last=10)), T0 + 1)
    # The claim committed, then the host died: a PENDING run and no snapshot.
    [run] = await prig.store.write(catalog.w_claim(policy, T0 + 10, T0 + 20, 0))
    assert [r.outcome for r in catalog.open_runs()] == [PENDING]
    # …and worse: it had sent the create (same derived request id, same arguments:
    # a request id reused with other arguments is refused) before dying.
    when = datetime.fromtimestamp(T0 + 10, UTC).isoformat()
    sent = await prig.manager.create_snapshot(
        run.request_id,
        "vm1",
        snapshot_name("p", T0 + 10),
        description=f"policy p, scheduled {when}",
        include_memory=False,
        quiesce=policy.quiesce,
        parameters={},
        policy_id=policy.id,
        policy_name=policy.name,
    )
    await prig.wait(sent)
    # The next leader drives the run: the create replays, no second snapshot.
    restarted = Scheduler(catalog, prig.manager, clock=clock)
    await _settle(restarted, prig)
    [done] = catalog.runs(policy.id)
    assert done.operation_id == sent.id and done.outcome == SUCCEEDED
    assert len(_live(prig)) == 1


async def test_a_run_claimed_but_not_started_is_started_after_a_restart(prig: Rig) -> None:
    await prig.define("vm1")
    catalog = PolicyCatalog(prig.store)
    policy = await _create(catalog, _policy("p", retention=Retention(keep_last=10)), T0 + 1)
    await prig.store.write(catalog.w_claim(policy, T0 + 10, T0 + 20, 0))
    # The claim is not repeated by the next leader (next_run moved), the run is made.
    restarted = Scheduler(catalog, prig.manager, clock=Clock(T0 + 12))
    await _settle(restarted, prig)
    [done] = catalog.runs(policy.id)
    assert done.outcome == SUCCEEDED and done.scheduled == T0 + 10
    assert [s.policy_id for s in _live(prig)] == [policy.id]


async def test_selector_policies_snapshot_every_matching_vm(prig: Rig) -> None:
    for vm in ("vm1", "vm2", "vm3"):
        await prig.define(vm)
    catalog = PolicyCatalog(prig.store)
    await prig.store.write(catalog.w_set_labels("vm1", {"env": "prod", "tier": "db"}))
    await prig.store.write(catalog.w_set_labels("vm2", {"env": "prod"}))
    await prig.store.write(catalog.w_set_labels("vm3", {"env": "dev"}))
    clock = Clock(T0 + 1)
    sched = Scheduler(catalog, prig.manager, clock=clock)
    policy = await _create(catalog, _policy("prod", vm_id="", selector={"env": "prod"}), clock())
    clock.now = T0 + 10
    await _settle(sched, prig)
    assert sorted(r.vm_id for r in catalog.runs(policy.id)) == ["vm1", "vm2"]
    assert _live(prig, "vm3") == []
    assert catalog.matching({"env": "prod", "tier": "db"}) == ["vm1"]


async def test_a_paused_policy_does_not_run_and_resumes_from_now(prig: Rig) -> None:
    await prig.define("vm1")
    catalog = PolicyCatalog(prig.store)
    clock = Clock(T0 + 1)
    sched = Scheduler(catalog, prig.manager, clock=clock)
    policy = await _create(catalog, _policy("p"), clock())
    await catalog.set_paused("p", True, None)
    clock.now = T0 + 50
    await _settle(sched, prig)
    assert catalog.runs(policy.id) == []
    resumed = await catalog.set_paused("p", False, policy.parsed().next_after(clock()))
    assert resumed.next_run == T0 + 60


async def test_a_run_refused_for_good_is_failed_with_its_cause(prig: Rig) -> None:
    catalog = PolicyCatalog(prig.store)
    clock = Clock(T0 + 10)
    sched = Scheduler(catalog, prig.manager, clock=clock)
    policy = await _create(catalog, _policy("ghost", vm_id="no-such-vm"), T0 + 1)
    await _settle(sched, prig)
    [run] = catalog.runs(policy.id)
    assert run.outcome == FAILED and "no-such-vm" in run.error_message
    assert run.outcome != RUNNING


async def test_only_the_leading_replica_claims_runs(prig: Rig) -> None:
    await prig.define("vm1")
    catalog = PolicyCatalog(prig.store)
    leading = False

    async def lead() -> bool:
        return leading

    clock = Clock(T0 + 1)
    sched = Scheduler(catalog, prig.manager, leader=lead, clock=clock)
    policy = await _create(catalog, _policy("p"), clock())
    clock.now = T0 + 10
    await sched.tick_once()
    assert catalog.runs(policy.id) == [] and catalog.get("p").next_run == T0 + 10  # type: ignore[union-attr]
    leading = True
    await _settle(sched, prig)
    assert [r.outcome for r in catalog.runs(policy.id)] == [SUCCEEDED]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"selector": {"env": "prod"}}, "policy.vm_id", "exactly one"),
        ({"vm_id": ""}, "policy.vm_id", "exactly one"),
        ({"retention": Retention()}, "retention", "keeps nothing"),
        ({"retention": Retention(keep_last=1001)}, "retention.keep_last", "0..1000"),
        ({"name": "-bad"}, "policy.name", "letter or digit"),
        ({"vm_id": "", "selector": {"bad key": "x"}}, "policy.selector", "key"),
        ({"time_zone": "Nowhere/City"}, "policy.time_zone", "IANA"),
    ],
)
def test_a_policy_breaking_a_rule_is_refused_naming_the_field(
    change: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_policy(replace(_policy("ok"), **change))  # type: ignore[arg-type]
    [(named, why)] = caught.value.field_violations
    assert named == field and words in why


def test_a_catalog_of_revision_0003_upgrades_with_its_snapshots_made_by_hand(
    tmp_path: Path,
) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    from vmsnap_host.store import Store
    from vmsnap_host.store.store import MIGRATIONS

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
        conn.execute(
            text(
                "INSERT INTO vm_snapshots (id, vm_id, name, description, state, agent, "
                "include_memory, quiesce, consistency, groups_json, parent_id, is_current, "
                "warnings_json, parameters_json, cleanup_json, missing, create_time, "
                "update_time) VALUES ('old1', 'vm1', 'old', '', 'READY', 'sim-1', false, "
                "'OFF', 'CRASH', '[]', '', true, '[]', '{}', '[]', '', 1, 1)"
            )
        )
    engine.dispose()
    store = Store.open(url)
    try:
        old = store.get_snapshot("old1")
        assert old is not None and old.policy_id == "" and old.policy_name == ""
    finally:
        store.close()
