"""Private converters from the host API's messages to the client's dataclasses.

The only module of the client besides ``_client`` that touches generated code.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from vmsnap_host.client import _types as t
from vmsnap_sdk import ClientTLS, Consistency
from vmsnap_sdk._convert import _enum
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _time(message: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    return message.ToDatetime(tzinfo=UTC) if present else None


def _seconds(message: duration_pb2.Duration) -> float:
    return message.ToNanoseconds() / 1e9


def failure(status: status_pb2.Status) -> t.Failure:
    reason = ""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    return t.Failure(
        code=_CODES.get(status.code, grpc.StatusCode.UNKNOWN),
        message=status.message,
        reason=reason,
        details=status.SerializeToString(),
    )


def group(m: pb.SnapshotGroup) -> t.SnapshotGroup:
    return t.SnapshotGroup(
        kind=_enum(t.GroupKind, m.kind),
        owner=m.owner,
        disks=tuple(m.disks),
        reasons=tuple(m.reasons),
        ready=m.ready,
        consistency=_enum(Consistency, m.consistency),
        volumes=tuple(t.GroupVolume(v.disk, v.locator, v.handle, v.size_bytes) for v in m.volumes),
        group_handle=m.group_handle,
    )


def vm_snapshot(m: pb.VMSnapshot) -> t.VMSnapshot:
    frozen = m.HasField("freeze_start_time")
    return t.VMSnapshot(
        id=m.id,
        vm_id=m.vm_id,
        name=m.name,
        state=_enum(t.VMSnapshotState, m.state),
        description=m.description,
        include_memory=m.include_memory,
        quiesce=_enum(t.QuiescePolicy, m.quiesce),
        consistency=_enum(Consistency, m.consistency),
        groups=tuple(group(g) for g in m.groups),
        parent_id=m.parent_id,
        current=m.current,
        freeze_start_time=_time(m.freeze_start_time, frozen),
        freeze_seconds=_seconds(m.freeze_duration)
        if frozen or m.HasField("freeze_duration")
        else None,
        error=failure(m.error) if m.HasField("error") and m.error.code != 0 else None,
        create_time=_time(m.create_time, m.HasField("create_time")),
        update_time=_time(m.update_time, m.HasField("update_time")),
        warnings=tuple(m.warnings),
        missing=m.missing,
        project=m.project,
        policy_id=m.policy_id,
        policy_name=m.policy_name,
        memory_state_bytes=m.memory_state_bytes,
        memory_state_location=m.memory_state_location,
    )


def operation(m: pb.Operation) -> t.Operation:
    return t.Operation(
        id=m.id,
        type=_enum(t.OperationType, m.type),
        vm_id=m.vm_id,
        vm_snapshot_id=m.vm_snapshot_id,
        done=m.done,
        error=failure(m.error) if m.HasField("error") and m.error.code != 0 else None,
        progress_percent=m.progress_percent,
        step=m.step,
        request_id=m.request_id,
        create_time=_time(m.create_time, m.HasField("create_time")),
        update_time=_time(m.update_time, m.HasField("update_time")),
        vm_snapshot=vm_snapshot(m.vm_snapshot) if m.HasField("vm_snapshot") else None,
        project=m.project,
        cancel_requested=m.cancel_requested,
        new_vm_id=m.new_vm_id,
    )


def driver(m: pb.Driver) -> t.DriverStatus:
    return t.DriverStatus(
        name=m.name,
        address=m.address,
        vendor_version=m.vendor_version,
        contract_version=m.contract_version,
        capabilities=tuple(c.removeprefix("CAPABILITY_") for c in m.capabilities),
        health=_enum(t.Health, m.health),
        health_message=m.health_message,
        last_check_time=_time(m.last_check_time, m.HasField("last_check_time")),
        order=m.order,
        labels=dict(m.labels),
    )


def agent(m: pb.Agent) -> t.AgentStatus:
    return t.AgentStatus(
        name=m.name,
        address=m.address,
        hypervisor=m.hypervisor,
        version=m.version,
        contract_version=m.contract_version,
        health=_enum(t.Health, m.health),
        health_message=m.health_message,
        last_check_time=_time(m.last_check_time, m.HasField("last_check_time")),
        quiesce_methods=tuple(q.removeprefix("QUIESCE_METHOD_") for q in m.quiesce_methods),
        memory_snapshots=m.memory_snapshots,
    )


def finding(m: pb.Finding) -> t.Finding:
    return t.Finding(
        kind=m.kind,
        peer=m.peer,
        object_id=m.object_id,
        vm_id=m.vm_id,
        vm_snapshot_id=m.vm_snapshot_id,
        action=m.action,
        detail=m.detail,
        time=_time(m.time, m.HasField("time")),
    )


def audit_record(m: pb.AuditRecord) -> t.AuditRecord:
    return t.AuditRecord(
        time=_time(m.time, m.HasField("time")),
        principal=m.principal,
        authenticated_by=m.authenticated_by,
        project=m.project,
        method=m.method,
        target=m.target,
        request_id=m.request_id,
        result=m.result,
        refused=m.refused,
        detail=m.detail,
        peer=m.peer,
    )


def tls_config(tls: ClientTLS | None) -> pb.TlsConfig | None:
    if tls is None:
        return None
    return pb.TlsConfig(
        ca_file=tls.ca_file or "",
        cert_file=tls.cert_file or "",
        key_file=tls.key_file or "",
        server_name=tls.server_name or "",
        pin_sha256=tls.pin_sha256 or "",
    )


def duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def freeze(m: pb.FreezeVMResponse) -> t.FreezeInfo:
    return t.FreezeInfo(
        token=m.token,
        operation_id=m.operation_id,
        consistency=_enum(Consistency, m.consistency),
        expire_time=m.expire_time.ToDatetime(tzinfo=UTC),
        method=m.method,
        message=m.message,
    )


def discovery(m: pb.DiscoverSnapshotsResponse) -> t.Discovery:
    return t.Discovery(
        sets=tuple(
            t.DiscoveredSet(
                id=s.id,
                driver=s.driver,
                object_id=s.object_id,
                name=s.name,
                create_time=_time(s.create_time, s.HasField("create_time")),
                volumes=tuple(
                    t.DiscoveredVolume(v.disk, v.locator, v.handle, v.size_bytes) for v in s.volumes
                ),
                complete=s.complete,
                consistency=_enum(Consistency, s.consistency),
            )
            for s in m.sets
        ),
        unsupported_drivers=tuple(m.unsupported_drivers),
    )


def policy_run(m: pb.PolicyRun) -> t.PolicyRun:
    return t.PolicyRun(
        vm_id=m.vm_id,
        scheduled_time=_time(m.scheduled_time, m.HasField("scheduled_time")),
        outcome=m.outcome,
        operation_id=m.operation_id,
        vm_snapshot_id=m.vm_snapshot_id,
        error_message=m.error_message,
        missed_count=m.missed_count,
        deleted_snapshot_ids=tuple(m.deleted_snapshot_ids),
    )


def policy(m: pb.SnapshotPolicy, runs: Sequence[pb.PolicyRun] = ()) -> t.SnapshotPolicy:
    return t.SnapshotPolicy(
        name=m.name,
        schedule=m.schedule,
        vm_id=m.vm_id,
        selector=dict(m.selector),
        time_zone=m.time_zone,
        keep_last=m.retention.keep_last,
        keep_daily=m.retention.keep_daily,
        keep_weekly=m.retention.keep_weekly,
        quiesce=_enum(t.QuiescePolicy, m.quiesce),
        paused=m.paused,
        next_run_time=_time(m.next_run_time, m.HasField("next_run_time")),
        last_run_time=_time(m.last_run_time, m.HasField("last_run_time")),
        create_time=_time(m.create_time, m.HasField("create_time")),
        id=m.id,
        runs=tuple(policy_run(r) for r in runs),
    )
