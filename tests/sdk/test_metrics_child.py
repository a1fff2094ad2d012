"""``vmsnap_sdk.metrics.child``: the cached ``labels()`` every RPC counts through."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from vmsnap_sdk.metrics import RPC_HANDLED, child, observe_rpc


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_a_child_is_the_labels_child_and_counts_into_the_metric() -> None:
    registry = CollectorRegistry()
    calls = Counter("t_calls_total", "test", ["method", "code"], registry=registry)
    seconds = Histogram("t_seconds", "test", ["method"], registry=registry, buckets=(0.1, 1))
    first = child(calls, "Take", "OK")
    assert first is calls.labels(method="Take", code="OK")
    assert child(calls, "Take", "OK") is first  # looked up once
    first.inc()
    child(calls, "Take", "UNAVAILABLE").inc(2)
    child(seconds, "Take").observe(0.5)
    assert _value(registry, "t_calls_total", method="Take", code="OK") == 1
    assert _value(registry, "t_calls_total", method="Take", code="UNAVAILABLE") == 2
    assert _value(registry, "t_seconds_bucket", method="Take", le="1.0") == 1
    assert _value(registry, "t_seconds_bucket", method="Take", le="0.1") == 0


def test_observe_rpc_counts_each_call() -> None:
    counted = RPC_HANDLED.labels(method="TestOnlyMethod", code="OK")
    before = counted._value.get()
    observe_rpc("TestOnlyMethod", "OK", 0.001)
    observe_rpc("TestOnlyMethod", "OK", 0.001)
    assert counted._value.get() == before + 2
