"""The host's Prometheus metrics (served with ``vmsnap-host --metrics-listen``).

Counted where things happen (cheap, on the event loop)::

    vmsnap_operations_total{type, outcome}        operations ended: succeeded, failed, open
    vmsnap_operation_duration_seconds{type}       admission → end
    vmsnap_freeze_window_seconds                  VM frozen → thawed, per frozen take
    vmsnap_peer_call_duration_seconds{kind, peer, method}
    vmsnap_peer_call_errors_total{kind, peer, method, code}
    vmsnap_vm_queue_depth_at_admission            operations already on the VM (histogram)
    vmsnap_reconciler_findings_total{kind}        findings reported by reconcile passes
    vmsnap_watchers_dropped_total                 WatchOperations streams dropped as too slow
    vmsnap_policy_runs_total{policy, outcome}     policy runs (one per VM) ended: succeeded, failed
    vmsnap_policy_run_failures_total{policy, reason}  failed policy runs by ErrorReason
    vmsnap_policy_retention_deleted_total{policy} snapshots a policy's retention deleted

Read at each scrape, on the event loop (:class:`HostCollector`)::

    vmsnap_peer_up{kind, peer}                    1 when the driver/agent's checks pass
    vmsnap_operations_queued                      operations running or waiting, all VMs
    vmsnap_vms_busy                               VMs with an operation running or waiting
    vmsnap_vm_queue_depth_max                     the longest queue of one VM
    vmsnap_catalog_snapshots{state}               catalog size by state
    vmsnap_policy_newest_snapshot_age_seconds{policy}  age of the newest READY snapshot
                                                  of the policy on its stalest VM

No label takes a VM or snapshot id: at 10k VMs a per-VM series would be 10k
series per metric, most of them 0 (docs/design.md, "Metrics").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vmsnap_sdk.metrics import LATENCY_BUCKETS

log = logging.getLogger("vmsnap.host.metrics")

WATCHERS_DROPPED = Counter(
    "vmsnap_watchers_dropped_total",
    "WatchOperations streams dropped because they fell too far behind (the host never "
    "waits for a watcher).",
)
OPERATIONS = Counter(
    "vmsnap_operations_total",
    "Operations ended, by type (create, revert, delete) and outcome (succeeded, failed, "
    "open: left to the reconcile interval).",
    ["type", "outcome"],
)
OPERATION_SECONDS = Histogram(
    "vmsnap_operation_duration_seconds",
    "Time from an operation's admission (or resumption) to its end, by type.",
    ["type"],
    buckets=LATENCY_BUCKETS,
)
FREEZE_SECONDS = Histogram(
    "vmsnap_freeze_window_seconds",
    "How long a take kept its VM frozen (quiesce answered → thaw confirmed).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
PEER_CALL_SECONDS = Histogram(
    "vmsnap_peer_call_duration_seconds",
    "Calls from the host to a driver or agent, by peer and method.",
    ["kind", "peer", "method"],
    buckets=LATENCY_BUCKETS,
)
PEER_CALL_ERRORS = Counter(
    "vmsnap_peer_call_errors_total",
    "Calls from the host to a driver or agent that failed, by gRPC status code.",
    ["kind", "peer", "method", "code"],
)
QUEUE_DEPTH = Histogram(
    "vmsnap_vm_queue_depth_at_admission",
    "Operations already running or waiting on the VM when a new one was queued.",
    buckets=(0, 1, 2, 4, 8, 16, 32, 64),
)
FINDINGS = Counter(
    "vmsnap_reconciler_findings_total",
    "Findings reported by reconcile passes, by kind (one seen again on a later pass counts again).",
    ["kind"],
)
POLICY_RUNS = Counter(
    "vmsnap_policy_runs_total",
    "Snapshot policy runs ended (one per VM and scheduled time), by policy and outcome "
    "(succeeded, failed).",
    ["policy", "outcome"],
)
POLICY_FAILURES = Counter(
    "vmsnap_policy_run_failures_total",
    "Failed snapshot policy runs, by policy and ErrorReason.",
    ["policy", "reason"],
)
POLICY_DELETED = Counter(
    "vmsnap_policy_retention_deleted_total",
    "Snapshots a policy's retention started deleting, by policy.",
    ["policy"],
)


@dataclass
class Sample:
    """What the collector reports, gathered on the event loop."""

    peers: list[tuple[str, str, bool]] = field(default_factory=list)
    queue_depths: list[int] = field(default_factory=list)
    catalog: dict[str, int] = field(default_factory=dict)
    #: Policy name → age in seconds of its stalest VM's newest snapshot.
    policy_ages: dict[str, float] = field(default_factory=dict)


class HostCollector(Collector):
    """Gauges read at scrape time. The scrape runs in the HTTP server's thread; the
    host's state belongs to its event loop, so the sample is taken there."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sample: Callable[[], Awaitable[Sample]],
        timeout: float = 2.0,
    ) -> None:
        self._loop = loop
        self._sample = sample
        self._timeout = timeout

    def describe(self) -> Iterable[Metric]:
        """Nothing, so that registering does not collect: prometheus_client takes a
        sample of a collector without describe() to learn its names, and the host
        registers this one on the event loop that a sample waits for (2 s of every
        start, then 'metrics sample skipped')."""
        return []

    def collect(self) -> Iterable[Metric]:
        async def take() -> Sample:
            return await self._sample()

        try:
            future = asyncio.run_coroutine_threadsafe(take(), self._loop)
            sample = future.result(self._timeout)
        except (concurrent.futures.TimeoutError, RuntimeError, Exception) as exc:  # noqa: BLE001
            # A busy or closing loop: the counters are still served, not the gauges.
            log.warning("metrics sample skipped", extra={"fields": {"why": repr(exc)}})
            return []
        up = GaugeMetricFamily(
            "vmsnap_peer_up",
            "1 when the driver or agent passes its health checks, else 0.",
            labels=["kind", "peer"],
        )
        for kind, name, serving in sample.peers:
            up.add_metric([kind, name], 1.0 if serving else 0.0)
        depths = sample.queue_depths
        queued = GaugeMetricFamily(
            "vmsnap_operations_queued",
            "Operations running or waiting, over all VMs.",
            value=float(sum(depths)),
        )
        busy = GaugeMetricFamily(
            "vmsnap_vms_busy",
            "VMs with an operation running or waiting.",
            value=float(sum(1 for d in depths if d)),
        )
        deepest = GaugeMetricFamily(
            "vmsnap_vm_queue_depth_max",
            "Operations running or waiting on the busiest VM.",
            value=float(max(depths, default=0)),
        )
        catalog = GaugeMetricFamily(
            "vmsnap_catalog_snapshots",
            "VM snapshots in the catalog, by state.",
            labels=["state"],
        )
        for state, count in sorted(sample.catalog.items()):
            catalog.add_metric([state], float(count))
        ages = GaugeMetricFamily(
            "vmsnap_policy_newest_snapshot_age_seconds",
            "Per snapshot policy: age of the newest READY snapshot it made, on the VM "
            "where that is oldest (per policy, not per VM: bounded series).",
            labels=["policy"],
        )
        for name, age in sorted(sample.policy_ages.items()):
            ages.add_metric([name], age)
        return [up, queued, busy, deepest, catalog, ages]
