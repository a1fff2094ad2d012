"""health: Probe, grpc.health.v1 and reflection, which the registry and operators use."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._types import Capability
from vmsnap_sdk.conformance._expect import expect
from vmsnap_sdk.conformance._registry import check
from vmsnap_sdk.conformance._rpc import call, failure_from
from vmsnap_sdk.conformance._session import Session

DRIVER_SERVICE = driver_pb2.DESCRIPTOR.services_by_name["StorageDriver"].full_name
FIXTURE_SERVICE = driver_pb2.DESCRIPTOR.services_by_name["ConformanceFixture"].full_name


async def _health(s: Session, service: str) -> str:
    stub: Any = s.conn.health
    reply: Any = await call(
        "Health.Check", stub.Check, health_pb2.HealthCheckRequest(service=service), s.rpc_timeout
    )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def _reflected_services(s: Session) -> set[str]:
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(s.conn.channel)
    stream = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=s.rpc_timeout
    )
    names: set[str] = set()
    try:
        async for reply in stream:
            names.update(service.name for service in reply.list_services_response.service)
    except grpc.aio.AioRpcError as exc:
        raise failure_from("ServerReflectionInfo", exc) from None
    return names


@check(
    "health.probe_ready",
    "Probe answers ready=true when the array answers: the host routes work by it",
)
async def probe_ready(s: Session) -> None:
    reply = await call("Probe", s.driver.Probe, driver_pb2.ProbeRequest(), s.rpc_timeout)
    expect(reply.ready, "ready=true", f"ready=false ({reply.message!r})")


@check(
    "health.grpc_health_serving",
    'grpc.health.v1 Check("") is SERVING: load balancers and the host poll it',
)
async def grpc_health_serving(s: Session) -> None:
    status = await _health(s, "")
    expect(status == "SERVING", "SERVING", status)


@check(
    "health.grpc_health_service", "grpc.health.v1 reports vmsnap.driver.v1.StorageDriver SERVING"
)
async def grpc_health_service(s: Session) -> None:
    status = await _health(s, DRIVER_SERVICE)
    expect(status == "SERVING", "SERVING", status)


@check(
    "health.reflection_lists_service",
    "Server reflection lists vmsnap.driver.v1.StorageDriver: grpcurl works",
)
async def reflection_lists_service(s: Session) -> None:
    names = await _reflected_services(s)
    expect(DRIVER_SERVICE in names, f"{DRIVER_SERVICE} in the reflected services", sorted(names))


@check(
    "health.reflection_lists_fixture",
    "Reflection lists vmsnap.driver.v1.ConformanceFixture when the driver offers it",
    requires=(Capability.CONFORMANCE_FIXTURE,),
)
async def reflection_lists_fixture(s: Session) -> None:
    names = await _reflected_services(s)
    expect(FIXTURE_SERVICE in names, f"{FIXTURE_SERVICE} in the reflected services", sorted(names))
