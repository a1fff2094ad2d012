"""Prometheus metrics (issue 13, deliverable 1): the host, an agent and a driver
started with --metrics-listen, a snapshot taken, /metrics scraped."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.host.e2e import Cluster, cluster, eventually
from tests.support.procs import ROOT
from vmsnap_host.metrics import HostCollector, Sample
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb


@pytest.fixture
def metered(sockdir: Path, tmp_path: Path) -> Iterator[Cluster]:
    yield from cluster(sockdir, tmp_path, {}, ("--metrics-listen", "127.0.0.1:0"))


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_a_snapshot_moves_the_host_agent_and_driver_metrics(metered: Cluster) -> None:
    host_url = metered.metrics_url("host")
    assert host_url.startswith("http://127.0.0.1:") and host_url.endswith("/metrics")
    before = scrape(host_url)
    assert value(before, "vmsnap_operations_total", type="create", outcome="succeeded") == 0
    metered.define_vm("vm1")
    done = metered.wait(metered.create("vm1", "s1", quiesce=pb.QUIESCE_POLICY_REQUIRED))
    assert done.error.code == 0, done

    host = eventually(
        lambda: (
            (s := scrape(host_url))
            and value(s, "vmsnap_catalog_snapshots", state="READY") == 1
            and s
        ),
        what="the catalog gauge",
    )
    assert value(host, "vmsnap_operations_total", type="create", outcome="succeeded") == 1
    assert value(host, "vmsnap_operation_duration_seconds_count", type="create") == 1
    # Two arrays and a file disk: the take froze the VM, and the window was measured.
    assert value(host, "vmsnap_freeze_window_seconds_count") == 1
    assert value(host, "vmsnap_freeze_window_seconds_sum") > 0
    for letter in ("a", "b"):
        peer = f"io.vmsnap.test.{letter}"
        assert value(host, "vmsnap_peer_up", kind="driver", peer=peer) == 1
        assert (
            value(
                host,
                "vmsnap_peer_call_duration_seconds_count",
                kind="driver",
                peer=peer,
                method="take_snapshot",
            )
            == 1
        )
    assert value(host, "vmsnap_peer_up", kind="agent", peer="sim-1") == 1
    assert value(host, "vmsnap_vm_queue_depth_at_admission_count") == 1
    assert value(host, "vmsnap_operations_queued") == 0
    assert value(host, "vmsnap_rpc_server_handled_total", method="CreateVMSnapshot", code="OK") == 1

    driver = scrape(metered.metrics_url("a"))
    assert value(driver, "vmsnap_rpc_server_handled_total", method="TakeVMSnapshot", code="OK") == 1
    assert value(driver, "vmsnap_rpc_server_handling_seconds_count", method="TakeVMSnapshot") == 1
    agent = scrape(metered.metrics_url("agent"))
    assert value(agent, "vmsnap_rpc_server_handled_total", method="Quiesce", code="OK") == 1


def test_a_failed_take_is_counted_failed_with_the_drivers_error(metered: Cluster) -> None:
    metered.start_driver("b", "--behaviour", "fail-final")  # b refuses every take
    up = ("vmsnap_peer_up", frozenset({("kind", "driver"), ("peer", "io.vmsnap.test.b")}))
    eventually(lambda: scrape(metered.metrics_url("host")).get(up) == 1, what="b back up")
    metered.define_vm("vm2")
    done = metered.wait(metered.create("vm2", "s1"))
    assert done.error.code != 0
    host = scrape(metered.metrics_url("host"))
    assert value(host, "vmsnap_operations_total", type="create", outcome="failed") == 1
    assert value(host, "vmsnap_operations_total", type="create", outcome="succeeded") == 0
    errors = [
        labels
        for (name, labels), count in host.items()
        if name == "vmsnap_peer_call_errors_total" and count >= 1
    ]
    assert any(
        ("peer", "io.vmsnap.test.b") in labels and ("method", "take_snapshot") in labels
        for labels in errors
    ), errors
    metered.procs["b"].stop(5)
    eventually(
        lambda: (
            value(
                scrape(metered.metrics_url("host")),
                "vmsnap_peer_up",
                kind="driver",
                peer="io.vmsnap.test.b",
            )
            == 0
        ),
        what="driver b reported down",
    )


def test_metrics_listen_refuses_a_non_loopback_address(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmsnap_host",
            "--listen",
            f"unix://{tmp_path}/h.sock",
            "--db",
            str(tmp_path / "h.db"),
            "--metrics-listen",
            "0.0.0.0:9464",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "loopback only" in done.stderr


async def test_registering_the_host_collector_takes_no_sample(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The host registers its collector from its event loop, and a sample is taken
    on that loop: a sample asked for at registration (prometheus_client's
    auto-describe) waited for the loop it blocked, 2 s of every host start with
    --metrics-listen, and logged 'metrics sample skipped'."""
    taken: list[Sample] = []

    async def sample() -> Sample:
        taken.append(Sample())
        return taken[-1]

    registry = CollectorRegistry(auto_describe=True)
    with caplog.at_level(logging.WARNING):
        registry.register(HostCollector(asyncio.get_running_loop(), sample, timeout=0.5))
    assert "metrics sample skipped" not in caplog.text
    # A scrape (from the HTTP server's thread) still takes one.
    families = await asyncio.to_thread(lambda: list(registry.collect()))
    assert taken and {f.name for f in families} >= {"vmsnap_peer_up"}
