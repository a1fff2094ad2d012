"""The client's public surface: no protobuf, sorted ``__all__``, JSON-ready dataclasses."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import grpc

from vmsnap_host import client
from vmsnap_host.cli._output import jsonable
from vmsnap_host.client import (
    Consistency,
    Failure,
    Finding,
    GroupKind,
    Operation,
    OperationType,
    ReconcileReport,
    SnapshotGroup,
    VMSnapshot,
    VMSnapshotState,
)
from vmsnap_sdk.errors import FailedPrecondition


def test_all_is_sorted_and_complete() -> None:
    assert client.__all__ == sorted(client.__all__)
    for name in client.__all__:
        assert hasattr(client, name)
        assert "_pb2" not in getattr(getattr(client, name), "__module__", "")


def test_default_address_follows_the_environment(monkeypatch: object) -> None:
    import pytest

    mp = pytest.MonkeyPatch()
    try:
        mp.delenv("VMSNAP_HOST", raising=False)
        mp.setenv("VMSNAP_HOME", "/srv/vmsnap")
        assert client.default_address() == "unix:///srv/vmsnap/run/host.sock"
        mp.setenv("VMSNAP_HOST", "127.0.0.1:7000")
        assert client.default_address() == "127.0.0.1:7000"
    finally:
        mp.undo()


def test_failure_becomes_the_sdk_exception() -> None:
    error = FailedPrecondition("guest agent did not answer", reason="GUEST_AGENT_UNAVAILABLE")
    from vmsnap_sdk._errors import to_rpc_status

    status = to_rpc_status(error)
    failure = Failure(
        grpc.StatusCode.FAILED_PRECONDITION,
        status.message,
        "GUEST_AGENT_UNAVAILABLE",
        status.SerializeToString(),
    )
    raised = failure.exception()
    assert isinstance(raised, FailedPrecondition)
    assert raised.reason == "GUEST_AGENT_UNAVAILABLE"
    assert str(failure) == "FAILED_PRECONDITION: guest agent did not answer"


def test_json_of_an_operation() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    op = Operation(
        id="op-1",
        type=OperationType.CREATE,
        vm_id="vm-1",
        vm_snapshot_id="s-1",
        done=True,
        error=Failure(grpc.StatusCode.ABORTED, "busy", "CONCURRENT_OPERATION", b"\x08\x0a"),
        create_time=when,
        vm_snapshot=VMSnapshot(
            id="s-1",
            vm_id="vm-1",
            name="n",
            state=VMSnapshotState.ERROR,
            consistency=Consistency.CRASH,
            groups=(SnapshotGroup(GroupKind.DRIVER, "io.example", ("vda",)),),
        ),
    )
    data = json.loads(json.dumps(jsonable(op)))
    assert data["type"] == "CREATE"
    assert data["error"] == {"code": "ABORTED", "message": "busy", "reason": "CONCURRENT_OPERATION"}
    assert data["create_time"] == "2026-01-02T03:04:05+00:00"
    assert data["vm_snapshot"]["groups"][0]["kind"] == "DRIVER"
    assert data["vm_snapshot"]["groups"][0]["disks"] == ["vda"]


def test_json_of_a_reconcile_report() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    report = ReconcileReport(
        findings=(
            Finding(
                "ORPHAN", "io.example", "s-9", "vm-1", "s-9", "DELETED", "record s-9 is ERROR", when
            ),
        ),
        omitted=0,
    )
    data = json.loads(json.dumps(jsonable(report)))
    assert data == {
        "findings": [
            {
                "kind": "ORPHAN",
                "peer": "io.example",
                "object_id": "s-9",
                "vm_id": "vm-1",
                "vm_snapshot_id": "s-9",
                "action": "DELETED",
                "detail": "record s-9 is ERROR",
                "time": "2026-01-02T03:04:05+00:00",
            }
        ],
        "omitted": 0,
    }
    assert VMSnapshot("s-1", "vm-1", "n", VMSnapshotState.READY).missing == ""
