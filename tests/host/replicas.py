"""Host replicas as real processes on one PostgreSQL catalog, beside the sim agent
and two fake drivers (the pattern of tests/host/e2e.py, several hosts)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tests.host.e2e import Cluster
from tests.support.procs import Proc
from vmsnap_sdk._proto.host.v1 import host_pb2_grpc

#: Short leases: a stopped replica's work is taken over within seconds.
LEASE_SECONDS = 2

CONFIG = """
[host]
lease_seconds = {lease}
quiesce_lease_seconds = 2
take_timeout_seconds = {take_timeout}
call_timeout_seconds = 3
health_interval_seconds = 0.2
reconcile_interval_seconds = 0.3
orphan_grace_seconds = 0
max_snapshots_per_vm = {max_snapshots}
queue_bound = {queue_bound}

[[drivers]]
address = "unix://{sock}/a.sock"
order = 0

[[drivers]]
address = "unix://{sock}/b.sock"
order = 1

[[agents]]
address = "unix://{sock}/agent.sock"
"""


@dataclass
class Replicas(Cluster):
    db: str = ""
    channels: dict[str, grpc.Channel] = field(default_factory=dict)
    settings: dict[str, float] = field(default_factory=dict)

    def start_replica(self, name: str) -> None:
        config = self.work / "host.toml"
        values = {"lease": LEASE_SECONDS, "take_timeout": 5, "max_snapshots": 50, "queue_bound": 8}
        config.write_text(CONFIG.format(sock=self.sock, **{**values, **self.settings}))
        address = f"unix://{self.sock}/{name}.sock"
        old = self.procs.pop(name, None)
        if old is not None:
            old.stop(5)
        proc = Proc(
            [
                sys.executable, "-m", "vmsnap_host", "--db", self.db, "--config", str(config),
                "--instance-id", name, "--listen", address,
            ],
            self.work / f"{name}.log",
        )
        self.procs[name] = proc
        if self._starting is not None:  # in together(): waited for at its end
            self._starting.append((name, address, proc))
        else:
            self._wait(name, address, proc)
        if name not in self.channels:
            self.channels[name] = grpc.insecure_channel(address)
        if self.channel is None:
            self.channel = self.channels[name]

    def on(self, name: str) -> host_pb2_grpc.VMSnapshotServiceStub:
        return host_pb2_grpc.VMSnapshotServiceStub(self.channels[name])

    def use(self, name: str) -> None:
        """Send the helpers' calls (create, wait, …) to this replica."""
        self.channel = self.channels[name]

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        self.channel = None
        super().close()


def replicas(
    sockdir: Path,
    tmp_path: Path,
    db: str,
    count: int,
    driver_flags: dict[str, list[str]] | None = None,
    **settings: float,
) -> Iterator[Replicas]:
    c = Replicas(sockdir, tmp_path, db=db, settings=settings)
    try:
        with c.together():
            c.start_agent()
            for letter in ("a", "b"):
                c.start_driver(letter, *(driver_flags or {}).get(letter, []))
        # Together, as replicas of one catalog may start (they take turns migrating).
        with c.together():
            for i in range(1, count + 1):
                c.start_replica(f"host-{i}")
        yield c
    finally:
        c.close()
