"""The API's timestamps are what ``Timestamp.FromDatetime`` makes (api/convert.py
``_ts`` computes the same fields by integer arithmetic, a fifth of the cost)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from vmsnap_host.api import convert

_ZONES = st.one_of(
    st.none(),
    st.just(UTC),
    st.integers(min_value=-23 * 60, max_value=23 * 60).map(
        lambda m: timezone(timedelta(minutes=m))
    ),
)


@given(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=_ZONES)
)
def test_timestamps_are_what_from_datetime_makes(value: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(value)
    assert convert._ts(value) == expected


def test_no_time_is_no_timestamp() -> None:
    assert convert._ts(None) is None
