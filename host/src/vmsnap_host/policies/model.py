"""What a snapshot policy is: its schedule, targets and retention, and their rules.

Schedules are read by croniter (5-field cron, ``@hourly``…) in the policy's time
zone (zoneinfo, so daylight-saving changes follow the zone's rules), or
``@every DURATION``, aligned to multiples of the duration since the epoch so
that every replica computes the same instants.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from vmsnap_host.model import QuiescePolicy
from vmsnap_sdk.errors import InvalidArgument

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9._-]{0,63}$")
MAX_LABELS = 32
MAX_SELECTOR = 16
MAX_KEEP = 1000
MAX_SCHEDULE = 128
_EVERY = re.compile(r"^@every\s+(\d+)\s*([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Most missed fire times counted one by one (a cron every minute down for a year).
_MAX_MISSED_COUNT = 10000


@dataclass(frozen=True)
class Schedule:
    """When a policy runs. ``next_after(t)`` is the first fire time strictly after t."""

    text: str
    zone: ZoneInfo
    every: int = 0  # seconds, for @every

    def next_after(self, t: float) -> float:
        if self.every:
            return float((int(t) // self.every + 1) * self.every)
        start = datetime.fromtimestamp(t, self.zone)
        return float(croniter(self.text, start).get_next(datetime).timestamp())

    def count_between(self, start: float, end: float) -> int:
        """Fire times in (start, end]: how many runs a down host missed."""
        if end <= start:
            return 0
        if self.every:
            return int(end) // self.every - int(start) // self.every
        count, t = 0, start
        while count < _MAX_MISSED_COUNT:
            t = self.next_after(t)
            if t > end:
                break
            count += 1
        return count


def zone(name: str, field_name: str = "time_zone") -> ZoneInfo:
    if not name:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument.for_field(
            field_name, f"{name!r} is not an IANA time zone (e.g. UTC, Europe/Paris)"
        ) from None


def parse_schedule(
    text: str, time_zone: str = "", field_name: str = "schedule", zone_field: str = "time_zone"
) -> Schedule:
    """A schedule, or INVALID_ARGUMENT naming the field and what is accepted."""
    text = text.strip()
    tz = zone(time_zone, zone_field)
    if not text or len(text) > MAX_SCHEDULE:
        raise InvalidArgument.for_field(
            field_name, f"is required, at most {MAX_SCHEDULE} chars: a cron expression or @every"
        )
    if text.startswith("@every"):
        match = _EVERY.match(text)
        if match is None or int(match.group(1)) == 0:
            raise InvalidArgument.for_field(
                field_name, f"{text!r}: write @every N{{s|m|h|d}}, N ≥ 1 (e.g. @every 30s)"
            )
        return Schedule(text, tz, int(match.group(1)) * _UNIT[match.group(2)])
    if len(text.split()) not in (1, 5) or not croniter.is_valid(text):
        raise InvalidArgument.for_field(
            field_name,
            f"{text!r} is not a 5-field cron expression (minute hour day month weekday, "
            "e.g. '0 3 * * *'), @hourly/@daily/@weekly/@monthly, or @every DURATION",
        )
    return Schedule(text, tz)


@dataclass(frozen=True)
class Retention:
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0

    def check(self) -> None:
        for name in ("keep_last", "keep_daily", "keep_weekly"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_KEEP:
                raise InvalidArgument.for_field(f"retention.{name}", f"must be 0..{MAX_KEEP}")
        if not (self.keep_last or self.keep_daily or self.keep_weekly):
            raise InvalidArgument.for_field(
                "retention", "keeps nothing: set keep_last, keep_daily or keep_weekly above 0"
            )


@dataclass(frozen=True)
class Policy:
    id: str
    name: str
    schedule: str
    retention: Retention
    vm_id: str = ""
    selector: dict[str, str] = field(default_factory=dict)
    time_zone: str = ""
    quiesce: QuiescePolicy = QuiescePolicy.BEST_EFFORT
    paused: bool = False
    next_run: float | None = None
    last_run: float | None = None
    create_time: float | None = None

    def parsed(self) -> Schedule:
        return parse_schedule(self.schedule, self.time_zone)

    def same_definition(self, other: Policy) -> bool:
        return (
            self.name,
            self.schedule,
            self.retention,
            self.vm_id,
            self.selector,
            self.time_zone,
            self.quiesce,
        ) == (
            other.name,
            other.schedule,
            other.retention,
            other.vm_id,
            other.selector,
            other.time_zone,
            other.quiesce,
        )


@dataclass(frozen=True)
class Run:
    """One VM's part of one run."""

    seq: int
    policy_id: str
    vm_id: str
    scheduled: float
    request_id: str
    outcome: str
    operation_id: str = ""
    vm_snapshot_id: str = ""
    error_message: str = ""
    missed: int = 0
    deleted: tuple[str, ...] = ()


PENDING, RUNNING, SUCCEEDED, FAILED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED"


def check_policy(policy: Policy) -> None:
    """Every rule of a definition (INVALID_ARGUMENT naming the field)."""
    if not NAME.match(policy.name):
        raise InvalidArgument.for_field(
            "policy.name", "must be 1..63 chars of [A-Za-z0-9._-], starting with a letter or digit"
        )
    if bool(policy.vm_id) == bool(policy.selector):
        raise InvalidArgument.for_field(
            "policy.vm_id", "give exactly one of vm_id (one VM) and selector (labels)"
        )
    if policy.selector:
        check_labels("policy.selector", policy.selector, most=MAX_SELECTOR)
    parse_schedule(policy.schedule, policy.time_zone, "policy.schedule", "policy.time_zone")
    policy.retention.check()


def check_labels(field_name: str, labels: dict[str, str], most: int = MAX_LABELS) -> None:
    if len(labels) > most:
        raise InvalidArgument.for_field(field_name, f"at most {most} labels")
    for key, value in labels.items():
        check_label_key(field_name, key)
        if not LABEL_VALUE.match(value):
            raise InvalidArgument.for_field(
                f"{field_name}[{key}]", "value must be 0..63 chars of [A-Za-z0-9._-]"
            )


def check_label_key(field_name: str, key: str) -> None:
    if not LABEL_KEY.match(key):
        raise InvalidArgument.for_field(
            field_name,
            f"key {key[:70]!r} must be 1..63 chars of [A-Za-z0-9._/-], starting with a "
            "letter or digit",
        )


def snapshot_name(policy_name: str, scheduled: float) -> str:
    """The snapshot a run makes: the same for every retry of the run."""
    return f"{policy_name}-{datetime.fromtimestamp(scheduled, UTC):%Y%m%d-%H%M%S}"


def run_request_id(policy_id: str, vm_id: str, scheduled: float) -> str:
    """The create's request_id: derived from policy, VM and scheduled time, so a run
    started twice (a crash after the claim, two leaders for a moment) is one create.
    At most 128 chars of the id alphabet."""
    digest = hashlib.sha256(f"{policy_id}\0{vm_id}".encode()).hexdigest()[:32]
    return f"policy.{digest}.{int(scheduled * 1000)}"


def retention_request_id(snapshot_id: str) -> str:
    return f"retention.{snapshot_id}"
