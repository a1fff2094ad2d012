"""What the host's API says about errors and peers' enums.

A refused call and a failed operation carry the same details (ErrorInfo with
domain vmsnap.io and an ErrorReason name); a driver's own reason arrives as
PEER_ERROR with the driver's reason in metadata; capabilities and quiesce
methods are the contracts' enum value names.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tests.fakes.driver import Options
from tests.host.conftest import make_rig
from tests.support.servicer_context import Aborted, ServicerContext
from vmsnap_host.api import convert
from vmsnap_host.api import errors as api_errors
from vmsnap_host.api.servicer import _call
from vmsnap_host.client import _convert as client_convert
from vmsnap_host.model import ErrorInfo
from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._proto.host.v1 import host_pb2 as pb
from vmsnap_sdk._proto.hypervisor.v1 import hypervisor_pb2
from vmsnap_sdk.errors import DOMAIN, NotFound, Reason, ResourceExhausted, Unavailable


def _info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) == 1, status
    return infos[0]


def test_contract_reasons_pass_unchanged() -> None:
    error = NotFound("VM x is not known", reason=Reason.VM_NOT_FOUND)
    assert api_errors.public(error) is error


def test_a_drivers_own_reason_becomes_peer_error_with_it_in_metadata() -> None:
    error = Unavailable("driver d: busy", reason="ELEMENT_BUSY", metadata={"driver": "d"})
    public = api_errors.public(error)
    assert public.reason == Reason.PEER_ERROR
    assert public.metadata == {"driver": "d", "peer_reason": "ELEMENT_BUSY"}
    assert public.code is grpc.StatusCode.UNAVAILABLE and public.message == error.message
    assert error.reason == "ELEMENT_BUSY"  # the original is left as it was


def test_a_recorded_failure_carries_error_info() -> None:
    ours = api_errors.status(ErrorInfo(9, "VM vm1 is PAUSED", Reason.VM_STATE))
    assert ours.code == 9 and ours.message == "VM vm1 is PAUSED"
    info = _info(ours)
    assert (info.domain, info.reason, dict(info.metadata)) == (DOMAIN, "VM_STATE", {})
    theirs = _info(api_errors.status(ErrorInfo(8, "no space", "FAKE_ARRAY_FULL")))
    assert theirs.reason == "PEER_ERROR" and theirs.metadata["peer_reason"] == "FAKE_ARRAY_FULL"
    assert _info(api_errors.status(ErrorInfo(2, "?", ""))).reason == "UNKNOWN"


async def test_a_failed_take_reports_the_peer_reason_in_operation_error(tmp_path: Path) -> None:
    rig = await make_rig(
        tmp_path,
        Options(name="io.vmsnap.test.a", scheme="a"),
        Options(
            name="io.vmsnap.test.b", scheme="b", behaviour="fail-final", reason="FAKE_ARRAY_FULL"
        ),
    )
    try:
        await rig.define()
        op = await rig.wait(await rig.create())
        assert op.error is not None and op.error.reason == "FAKE_ARRAY_FULL"  # as recorded
        message = convert.operation_to_pb(op, rig.store.get_snapshot(op.vm_snapshot_id))
        assert message.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        info = _info(message.error)
        assert (info.domain, info.reason) == (DOMAIN, "PEER_ERROR")
        assert info.metadata["peer_reason"] == "FAKE_ARRAY_FULL"
        assert _info(message.vm_snapshot.error).reason == "PEER_ERROR"
        # The Python client decodes it like a refused call.
        failure = client_convert.failure(message.error)
        assert failure.reason == "PEER_ERROR"
        raised = failure.exception()
        assert isinstance(raised, ResourceExhausted)
        assert raised.metadata["peer_reason"] == "FAKE_ARRAY_FULL"
    finally:
        await rig.close()


async def test_a_refused_call_says_peer_error_in_its_trailers() -> None:
    async def handler() -> None:
        raise ResourceExhausted("driver d: array full", reason="FAKE_ARRAY_FULL")

    context = ServicerContext()
    with pytest.raises(Aborted):
        await _call(context, "StartVM", handler)  # type: ignore[arg-type]
    assert context.aborted is not None
    code, _, trailers = context.aborted
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    status = status_pb2.Status.FromString(dict(trailers)["grpc-status-details-bin"])
    info = _info(status)
    assert (info.domain, info.reason) == (DOMAIN, "PEER_ERROR")
    assert info.metadata["peer_reason"] == "FAKE_ARRAY_FULL"


async def test_capabilities_and_quiesce_methods_are_enum_value_names(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path, Options(name="io.vmsnap.test.a", scheme="a"))
    try:
        driver = convert.driver_to_pb(rig.registry.drivers()[0])
        agent = convert.agent_to_pb(rig.registry.agents()[0])
    finally:
        await rig.close()
    assert list(driver.capabilities) == [
        "CAPABILITY_CONSISTENT_GROUP",
        "CAPABILITY_LIST",
        "CAPABILITY_REVERT",
    ]
    assert set(driver.capabilities) <= set(driver_pb2.Capability.keys())
    assert agent.quiesce_methods
    assert set(agent.quiesce_methods) <= set(hypervisor_pb2.QuiesceMethod.keys())
    assert "QUIESCE_METHOD_UNSPECIFIED" not in agent.quiesce_methods


def test_the_client_reads_old_and_new_names() -> None:
    new = pb.Driver(name="d", capabilities=["CAPABILITY_REVERT", "CAPABILITY_LIST"])
    old = pb.Driver(name="d", capabilities=["REVERT", "LIST"])  # a host before v0.2
    assert client_convert.driver(new).capabilities == client_convert.driver(old).capabilities
    assert client_convert.driver(new).capabilities == ("REVERT", "LIST")
    agent_new = pb.Agent(name="a", quiesce_methods=["QUIESCE_METHOD_OVERLAY"])
    agent_old = pb.Agent(name="a", quiesce_methods=["OVERLAY"])
    assert client_convert.agent(agent_new).quiesce_methods == ("OVERLAY",)
    assert client_convert.agent(agent_old).quiesce_methods == ("OVERLAY",)
