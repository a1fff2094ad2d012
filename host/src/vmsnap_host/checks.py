"""Checks of what drivers and agents return (placeholder until the full module lands)."""

from __future__ import annotations

from collections.abc import Sequence

from vmsnap_sdk import NativeSnapshot, RevertResult, SnapshotResult, Volume
from vmsnap_sdk.errors import Internal


class ContractViolation(Internal):
    default_reason = "DRIVER_CONTRACT_VIOLATION"


def check_take_result(
    driver: str,
    volumes: Sequence[Volume],
    result: SnapshotResult,
    previous: SnapshotResult | None = None,
) -> None:
    asked = sorted(v.disk for v in volumes)
    got = sorted(v.disk for v in result.volume_snapshots)
    if asked != got:
        raise ContractViolation(
            f"driver {driver} broke the contract: it returned disks {got} for disks {asked}"
        )
    if previous is not None:
        before = {v.disk: v.handle for v in previous.volume_snapshots}
        now = {v.disk: v.handle for v in result.volume_snapshots}
        if before != now:
            raise ContractViolation(f"driver {driver} broke the contract: handles changed")


def check_native(agent: str, snapshot_id: str, disks: Sequence[str], native: NativeSnapshot) -> None:
    if native.snapshot_id != snapshot_id or (disks and sorted(native.disks) != sorted(disks)):
        raise ContractViolation(f"agent {agent} broke the contract: other disks or id")


def check_revert_result(
    driver: str, undo_id: str, snapshot: SnapshotResult, result: RevertResult
) -> None:
    return None
