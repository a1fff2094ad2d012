"""Which of its own snapshots a policy keeps (restic's ``forget`` rules).

Given one VM's READY snapshots made by one policy, newest first, the kept set is
the union of:

- ``keep_last``: the N newest;
- ``keep_daily``: for the last D days that have a snapshot, the newest of each day;
- ``keep_weekly``: for the last W ISO weeks that have a snapshot, the newest of
  each week;

days and weeks in the policy's time zone. Everything else is a candidate for
deletion. Pure: the caller has already reduced the input to this policy's own
snapshots and takes out the VM's current snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from vmsnap_host.policies.model import Retention


def keep(snapshots: Sequence[tuple[str, datetime]], rule: Retention, zone: ZoneInfo) -> set[str]:
    """The ids to keep of (id, create time) pairs."""
    ordered = sorted(snapshots, key=lambda s: s[1], reverse=True)
    kept = {sid for sid, _ in ordered[: rule.keep_last]}

    def newest_per(bucket: Callable[[datetime], Hashable], count: int) -> None:
        seen: set[Hashable] = set()
        for sid, when in ordered:
            if len(seen) >= count:
                return
            key = bucket(when.astimezone(zone))
            if key not in seen:
                seen.add(key)
                kept.add(sid)

    newest_per(lambda t: t.date(), rule.keep_daily)
    newest_per(lambda t: t.isocalendar()[:2], rule.keep_weekly)
    return kept
