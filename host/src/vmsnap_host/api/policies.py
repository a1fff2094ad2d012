"""Snapshot policies and VM labels on the API: request → model (with the field
rules), model → proto. The handlers are on :class:`~vmsnap_host.api.servicer.HostServicer`."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from vmsnap_host.model import QuiescePolicy
from vmsnap_host.policies.model import Policy, Retention, Run, check_policy
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_sdk.errors import InvalidArgument


def _ts(value: float | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(value * 1e9))
    return stamp


def policy_from_pb(message: pb.SnapshotPolicy) -> Policy:
    """The definition in a CreatePolicy request, every rule checked."""
    if message.quiesce == pb.QUIESCE_POLICY_UNSPECIFIED:
        quiesce = QuiescePolicy.BEST_EFFORT
    else:
        try:
            quiesce = QuiescePolicy(message.quiesce)
        except ValueError:
            raise InvalidArgument.for_field(
                "policy.quiesce", "must be OFF, BEST_EFFORT or REQUIRED"
            ) from None
    policy = Policy(
        id="",
        name=message.name,
        schedule=message.schedule.strip(),
        retention=Retention(
            message.retention.keep_last,
            message.retention.keep_daily,
            message.retention.keep_weekly,
        ),
        vm_id=message.vm_id,
        selector=dict(message.selector),
        time_zone=message.time_zone,
        quiesce=quiesce,
    )
    check_policy(policy)
    return policy


def policy_to_pb(p: Policy) -> pb.SnapshotPolicy:
    message = pb.SnapshotPolicy(
        id=p.id,
        name=p.name,
        vm_id=p.vm_id,
        selector=p.selector,
        schedule=p.schedule,
        time_zone=p.time_zone,
        retention=pb.Retention(
            keep_last=p.retention.keep_last,
            keep_daily=p.retention.keep_daily,
            keep_weekly=p.retention.keep_weekly,
        ),
        quiesce=pb.QuiescePolicy.ValueType(p.quiesce.value),
        paused=p.paused,
    )
    for field, value in (
        ("next_run_time", p.next_run),
        ("last_run_time", p.last_run),
        ("create_time", p.create_time),
    ):
        if (stamp := _ts(value)) is not None:
            getattr(message, field).CopyFrom(stamp)
    return message


def run_to_pb(r: Run) -> pb.PolicyRun:
    message = pb.PolicyRun(
        vm_id=r.vm_id,
        outcome=r.outcome,
        operation_id=r.operation_id,
        vm_snapshot_id=r.vm_snapshot_id,
        error_message=r.error_message,
        missed_count=r.missed,
        deleted_snapshot_ids=list(r.deleted),
    )
    stamp = _ts(r.scheduled)
    assert stamp is not None
    message.scheduled_time.CopyFrom(stamp)
    return message
