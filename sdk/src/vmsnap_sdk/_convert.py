"""Private converters between the wire (protobuf) and the SDK's domain types.

The only module besides the adapters that imports generated code. Each pair
``x_to_pb`` / ``x_from_pb`` round-trips exactly.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import timestamp_pb2

from vmsnap_sdk import _types as t
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._proto.hypervisor.v1 import hypervisor_pb2


def ts_to_pb(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def ts_from_pb(message: timestamp_pb2.Timestamp, present: bool = True) -> datetime | None:
    """The time, or None when unset or when no datetime can hold it (nanos out of
    range, a year past 9999): times in the contracts are facts to show, never
    inputs a call depends on, so an impossible one is "unknown", not an error
    (it was INTERNAL in a driver's RevertVMSnapshot, found by tests/fuzz)."""
    if not present or (message.seconds == 0 and message.nanos == 0):
        return None
    if not 0 <= message.nanos <= 999_999_999:
        return None
    try:
        return message.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None


# --- common -----------------------------------------------------------------------


def volume_to_pb(v: t.Volume) -> common_pb2.Volume:
    return common_pb2.Volume(
        disk=v.disk,
        locator=v.locator,
        size_bytes=v.size_bytes,
        format=v.format,
        native_snapshot=v.native_snapshot,
    )


def volume_from_pb(m: common_pb2.Volume) -> t.Volume:
    return t.Volume(
        disk=m.disk,
        locator=m.locator,
        size_bytes=m.size_bytes,
        format=m.format or "raw",
        native_snapshot=m.native_snapshot,
    )


def vm_to_pb(vm: t.VM) -> common_pb2.VM:
    return common_pb2.VM(
        id=vm.id,
        name=vm.name,
        state=common_pb2.VMState.ValueType(vm.state.value),
        volumes=[volume_to_pb(v) for v in vm.volumes],
        memory_mib=vm.memory_mib,
        agent=vm.agent,
    )


def vm_from_pb(m: common_pb2.VM) -> t.VM:
    return t.VM(
        id=m.id,
        name=m.name,
        state=_enum(t.VMState, m.state),
        volumes=tuple(volume_from_pb(v) for v in m.volumes),
        memory_mib=m.memory_mib,
        agent=m.agent,
    )


_E = TypeVar("_E", bound=enum.Enum)


def _enum(cls: type[_E], value: int) -> _E:
    """The member for a wire value; unknown values (a newer peer) map to UNSPECIFIED."""
    try:
        return cls(value)
    except ValueError:
        return cls(0)


# --- driver -----------------------------------------------------------------------


def driver_info_to_pb(info: t.DriverInfo) -> driver_pb2.GetDriverInfoResponse:
    return driver_pb2.GetDriverInfoResponse(
        name=info.name,
        vendor_version=info.vendor_version,
        contract_versions=list(info.contract_versions),
        capabilities=sorted(driver_pb2.Capability.ValueType(c.value) for c in info.capabilities),
        limits=driver_pb2.Limits(
            max_volumes_per_snapshot=info.limits.max_volumes_per_snapshot,
            max_snapshots_per_volume=info.limits.max_snapshots_per_volume,
            max_concurrent_calls=info.limits.max_concurrent_calls,
        ),
        labels=dict(info.labels),
    )


def driver_info_from_pb(m: driver_pb2.GetDriverInfoResponse) -> t.DriverInfo:
    return t.DriverInfo(
        name=m.name,
        vendor_version=m.vendor_version,
        contract_versions=tuple(m.contract_versions),
        capabilities=frozenset(_enum(t.Capability, c) for c in m.capabilities)
        - {t.Capability.UNSPECIFIED},
        limits=t.Limits(
            max_volumes_per_snapshot=m.limits.max_volumes_per_snapshot,
            max_snapshots_per_volume=m.limits.max_snapshots_per_volume,
            max_concurrent_calls=m.limits.max_concurrent_calls,
        ),
        labels=dict(m.labels),
    )


def decision_to_pb(d: t.VolumeDecision) -> driver_pb2.VolumeDecision:
    return driver_pb2.VolumeDecision(
        disk=d.disk, priority=driver_pb2.Priority.ValueType(d.priority.value), reason=d.reason
    )


def decision_from_pb(m: driver_pb2.VolumeDecision) -> t.VolumeDecision:
    return t.VolumeDecision(disk=m.disk, priority=_enum(t.Priority, m.priority), reason=m.reason)


def result_to_pb(r: t.SnapshotResult) -> driver_pb2.VMSnapshotResult:
    message = driver_pb2.VMSnapshotResult(
        vm_snapshot_id=r.vm_snapshot_id,
        volume_snapshots=[
            driver_pb2.VolumeSnapshot(
                disk=v.disk, locator=v.locator, handle=v.handle, size_bytes=v.size_bytes
            )
            for v in r.volume_snapshots
        ],
        ready=r.ready,
        consistency=common_pb2.Consistency.ValueType(r.consistency.value),
        needs_unquiesce=r.needs_unquiesce,
        group_handle=r.group_handle,
        metadata=dict(r.metadata),
        vm_id=r.vm_id,
    )
    stamp = ts_to_pb(r.create_time)
    if stamp is not None:
        message.create_time.CopyFrom(stamp)
    return message


def result_from_pb(m: driver_pb2.VMSnapshotResult) -> t.SnapshotResult:
    return t.SnapshotResult(
        vm_snapshot_id=m.vm_snapshot_id,
        volume_snapshots=tuple(
            t.VolumeSnapshot(
                disk=v.disk, locator=v.locator, handle=v.handle, size_bytes=v.size_bytes
            )
            for v in m.volume_snapshots
        ),
        ready=m.ready,
        consistency=_enum(t.Consistency, m.consistency),
        needs_unquiesce=m.needs_unquiesce,
        group_handle=m.group_handle,
        metadata=dict(m.metadata),
        create_time=ts_from_pb(m.create_time, m.HasField("create_time")),
        vm_id=m.vm_id,
    )


def volumes_to_pb(volumes: Iterable[t.Volume]) -> list[common_pb2.Volume]:
    return [volume_to_pb(v) for v in volumes]


# --- hypervisor -------------------------------------------------------------------


def agent_info_to_pb(info: t.AgentInfo) -> hypervisor_pb2.GetAgentInfoResponse:
    return hypervisor_pb2.GetAgentInfoResponse(
        name=info.name,
        hypervisor=info.hypervisor,
        version=info.version,
        contract_versions=list(info.contract_versions),
        quiesce_methods=sorted(
            hypervisor_pb2.QuiesceMethod.ValueType(q.value) for q in info.quiesce_methods
        ),
        memory_snapshots=info.memory_snapshots,
        copy_native_disks=info.copy_native_disks,
        memory_with_array_disks=info.memory_with_array_disks,
    )


def agent_info_from_pb(m: hypervisor_pb2.GetAgentInfoResponse) -> t.AgentInfo:
    return t.AgentInfo(
        name=m.name,
        hypervisor=m.hypervisor,
        version=m.version,
        contract_versions=tuple(m.contract_versions),
        quiesce_methods=frozenset(_enum(t.QuiesceMethod, q) for q in m.quiesce_methods)
        - {t.QuiesceMethod.UNSPECIFIED},
        memory_snapshots=m.memory_snapshots,
        copy_native_disks=m.copy_native_disks,
        memory_with_array_disks=m.memory_with_array_disks,
    )


def native_to_pb(s: t.NativeSnapshot) -> hypervisor_pb2.NativeSnapshot:
    message = hypervisor_pb2.NativeSnapshot(
        snapshot_id=s.snapshot_id,
        vm_id=s.vm_id,
        disks=list(s.disks),
        include_memory=s.include_memory,
        size_bytes=s.size_bytes,
    )
    if s.memory_state is not None:
        message.memory_state.CopyFrom(memory_state_to_pb(s.memory_state))
    stamp = ts_to_pb(s.create_time)
    if stamp is not None:
        message.create_time.CopyFrom(stamp)
    return message


def native_from_pb(m: hypervisor_pb2.NativeSnapshot) -> t.NativeSnapshot:
    return t.NativeSnapshot(
        snapshot_id=m.snapshot_id,
        vm_id=m.vm_id,
        disks=tuple(m.disks),
        include_memory=m.include_memory,
        create_time=ts_from_pb(m.create_time, m.HasField("create_time")),
        size_bytes=m.size_bytes,
        memory_state=memory_state_from_pb(m.memory_state) if m.HasField("memory_state") else None,
    )


def memory_state_to_pb(s: t.MemoryState) -> hypervisor_pb2.MemoryState:
    message = hypervisor_pb2.MemoryState(location=s.location, size_bytes=s.size_bytes)
    message.paused.FromNanoseconds(round(s.paused_seconds * 1e9))
    message.save_duration.FromNanoseconds(round(s.save_seconds * 1e9))
    return message


def memory_state_from_pb(m: hypervisor_pb2.MemoryState) -> t.MemoryState:
    return t.MemoryState(
        location=m.location,
        size_bytes=m.size_bytes,
        paused_seconds=m.paused.ToNanoseconds() / 1e9,
        save_seconds=m.save_duration.ToNanoseconds() / 1e9,
    )


def quiesce_info_to_pb(q: t.QuiesceInfo) -> hypervisor_pb2.Quiesce:
    message = hypervisor_pb2.Quiesce(
        token=q.token,
        vm_id=q.vm_id,
        operation_id=q.operation_id,
        method=hypervisor_pb2.QuiesceMethod.ValueType(q.method.value),
    )
    for name, value in (("start_time", q.start_time), ("expire_time", q.expire_time)):
        stamp = ts_to_pb(value)
        if stamp is not None:
            getattr(message, name).CopyFrom(stamp)
    return message


def quiesce_info_from_pb(m: hypervisor_pb2.Quiesce) -> t.QuiesceInfo:
    return t.QuiesceInfo(
        token=m.token,
        vm_id=m.vm_id,
        operation_id=m.operation_id,
        method=_enum(t.QuiesceMethod, m.method),
        start_time=ts_from_pb(m.start_time, m.HasField("start_time")),
        expire_time=ts_from_pb(m.expire_time, m.HasField("expire_time")),
    )


def unmanaged_to_pb(u: t.UnmanagedSnapshot) -> driver_pb2.UnmanagedSnapshot:
    message = driver_pb2.UnmanagedSnapshot(
        id=u.id,
        name=u.name,
        volume_snapshots=[
            driver_pb2.VolumeSnapshot(
                disk=v.disk, locator=v.locator, handle=v.handle, size_bytes=v.size_bytes
            )
            for v in u.volume_snapshots
        ],
        consistent_group=u.consistent_group,
        group_handle=u.group_handle,
        metadata=dict(u.metadata),
    )
    stamp = ts_to_pb(u.create_time)
    if stamp is not None:
        message.create_time.CopyFrom(stamp)
    return message


def unmanaged_from_pb(m: driver_pb2.UnmanagedSnapshot) -> t.UnmanagedSnapshot:
    return t.UnmanagedSnapshot(
        id=m.id,
        name=m.name,
        volume_snapshots=tuple(
            t.VolumeSnapshot(
                disk=v.disk, locator=v.locator, handle=v.handle, size_bytes=v.size_bytes
            )
            for v in m.volume_snapshots
        ),
        create_time=ts_from_pb(m.create_time, m.HasField("create_time")),
        consistent_group=m.consistent_group,
        group_handle=m.group_handle,
        metadata=dict(m.metadata),
    )
