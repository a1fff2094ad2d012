"""robustness: oversized and malformed input is INVALID_ARGUMENT, never INTERNAL or UNKNOWN.

The driver stays healthy afterwards. The SDK validates for its users; a
driver written from the .proto alone must do the same.
"""

from __future__ import annotations

import contextlib
from typing import Any

from grpc_health.v1 import health_pb2

from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._types import Capability
from vmsnap_sdk.conformance._expect import expect, expect_code
from vmsnap_sdk.conformance._registry import check
from vmsnap_sdk.conformance._rpc import RpcFailure, call
from vmsnap_sdk.conformance._session import Session
from vmsnap_sdk.conformance.checks._common import INVALID, copy_volume, own_or_foreign

HUGE = 100_000


async def take_invalid(s: Session, request: driver_pb2.TakeVMSnapshotRequest, what: str) -> None:
    await expect_code(s.take_raw(request), INVALID, what=what)


async def base_request(s: Session) -> driver_pb2.TakeVMSnapshotRequest:
    return s.take_request(s.new_id(), await own_or_foreign(s))


@check("robustness.huge_id", "A 100 000-char vm_snapshot_id is INVALID_ARGUMENT")
async def huge_id(s: Session) -> None:
    request = await base_request(s)
    request.vm_snapshot_id = "x" * HUGE
    await take_invalid(s, request, "take with a 100 000-char id")


@check("robustness.unicode_id", "Non-ASCII and bidi characters in ids are INVALID_ARGUMENT")
async def unicode_id(s: Session) -> None:
    for bad in ("snap-é", "snap\u202eevil", "snap\u00a0x"):
        request = await base_request(s)
        request.vm_snapshot_id = bad
        await take_invalid(s, request, f"take with id {bad!r}")


@check("robustness.take_10k_volumes", "A take of 10 000 volumes is INVALID_ARGUMENT (at most 256)")
async def take_many_volumes(s: Session) -> None:
    volumes = [common_pb2.Volume(disk=f"d{i}", locator=f"x://pool/{i}") for i in range(10_000)]
    await take_invalid(s, s.take_request(s.new_id(), volumes), "take of 10 000 volumes")


@check("robustness.can_handle_10k_volumes", "CanHandle of 10 000 volumes is INVALID_ARGUMENT")
async def can_handle_many(s: Session) -> None:
    volumes = [common_pb2.Volume(disk=f"d{i}", locator=f"x://pool/{i}") for i in range(10_000)]
    request = driver_pb2.CanHandleRequest(
        vm=s.vm(), volumes=volumes, operation=driver_pb2.OPERATION_TAKE
    )
    await expect_code(
        call("CanHandle", s.driver.CanHandle, request, s.rpc_timeout),
        INVALID,
        what="CanHandle of 10 000 volumes",
    )


@check("robustness.bad_locator", "Locators that are not URIs are INVALID_ARGUMENT")
async def bad_locator(s: Session) -> None:
    for locator in ("no-scheme-at-all", "://pool/1", "scheme://", ""):
        request = await base_request(s)
        request.volumes[0].locator = locator
        await take_invalid(s, request, f"take with locator {locator!r}")


@check("robustness.huge_locator", "A 100 000-char locator is INVALID_ARGUMENT (at most 1024)")
async def huge_locator(s: Session) -> None:
    request = await base_request(s)
    request.volumes[0].locator = "x://" + "a" * HUGE
    await take_invalid(s, request, "take with a 100 000-char locator")


@check("robustness.control_chars_disk", "Control characters in disk names are INVALID_ARGUMENT")
async def control_chars_disk(s: Session) -> None:
    for disk in ("vd\x00a", "vd\na", "VDA", ""):
        request = await base_request(s)
        request.volumes[0].disk = disk
        await take_invalid(s, request, f"take with disk {disk!r}")


@check(
    "robustness.control_chars_name", "Control characters in vm_snapshot_name are INVALID_ARGUMENT"
)
async def control_chars_name(s: Session) -> None:
    for name in ("line\nbreak", "bell\x07", "nul\x00"):
        request = await base_request(s)
        request.vm_snapshot_name = name
        await take_invalid(s, request, f"take named {name!r}")


@check("robustness.long_name", "A 10 000-char vm_snapshot_name is INVALID_ARGUMENT (at most 255)")
async def long_name(s: Session) -> None:
    request = await base_request(s)
    request.vm_snapshot_name = "n" * 10_000
    await take_invalid(s, request, "take with a 10 000-char name")


@check("robustness.duplicate_disks", "A take naming one disk twice is INVALID_ARGUMENT")
async def duplicate_disks(s: Session) -> None:
    request = await base_request(s)
    request.volumes.append(copy_volume(request.volumes[0]))
    await take_invalid(s, request, "take naming a disk twice")


@check("robustness.negative_size", "A negative volume size is INVALID_ARGUMENT")
async def negative_size(s: Session) -> None:
    request = await base_request(s)
    request.volumes[0].size_bytes = -1
    await take_invalid(s, request, "take with size_bytes=-1")


@check("robustness.huge_parameter_map", "10 000 parameters are INVALID_ARGUMENT (at most 64)")
async def huge_parameter_map(s: Session) -> None:
    request = await base_request(s)
    request.parameters.update({f"key{i}": "v" for i in range(10_000)})
    await take_invalid(s, request, "take with 10 000 parameters")


@check("robustness.huge_parameter_value", "A 1 MB parameter value is INVALID_ARGUMENT")
async def huge_parameter_value(s: Session) -> None:
    request = await base_request(s)
    request.parameters["big"] = "v" * 1_000_000
    await take_invalid(s, request, "take with a 1 MB parameter")


@check(
    "robustness.can_handle_huge_options",
    "CanHandle with 10 000 options is INVALID_ARGUMENT (at most 64)",
)
async def huge_options(s: Session) -> None:
    volumes = await own_or_foreign(s)
    request = driver_pb2.CanHandleRequest(
        vm=s.vm(volumes),
        volumes=volumes,
        operation=driver_pb2.OPERATION_TAKE,
        options={f"opt{i}": "v" for i in range(10_000)},
    )
    await expect_code(
        call("CanHandle", s.driver.CanHandle, request, s.rpc_timeout),
        INVALID,
        what="CanHandle with 10 000 options",
    )


@check("robustness.delete_bad_id", "A delete with a malformed id is INVALID_ARGUMENT, not OK")
async def delete_bad_id(s: Session) -> None:
    for bad in ("bad id", "nul\x00", "y" * HUGE):
        await expect_code(s.delete(bad), INVALID, what=f"delete of id {bad[:20]!r}")


@check(
    "robustness.huge_page_token",
    "A 100 000-char page token is INVALID_ARGUMENT",
    requires=(Capability.LIST,),
)
async def huge_page_token(s: Session) -> None:
    await expect_code(s.list_page(10, "t" * HUGE), INVALID, what="list with a huge token")


@check(
    "robustness.fixture_bad_input",
    "The fixture rejects bad names and sizes with INVALID_ARGUMENT",
    requires=(Capability.CONFORMANCE_FIXTURE,),
)
async def fixture_bad_input(s: Session) -> None:
    for name, size in (("../escape", 1 << 20), ("ok-name", 0), ("n" * 1000, 1 << 20)):
        request = driver_pb2.CreateTestVolumeRequest(name=name, size_bytes=size)
        await expect_code(
            call("CreateTestVolume", s.fixture.CreateTestVolume, request, s.rpc_timeout),
            INVALID,
            what=f"CreateTestVolume({name[:20]!r}, {size})",
        )


@check(
    "robustness.stays_healthy",
    "After a barrage of bad requests the driver is still ready and SERVING",
)
async def stays_healthy(s: Session) -> None:
    for _ in range(3):
        for change in ("id", "locator", "disk", "map"):
            request = await base_request(s)
            if change == "id":
                request.vm_snapshot_id = "\x00" * 1000
            elif change == "locator":
                request.volumes[0].locator = "\x01"
            elif change == "disk":
                request.volumes[0].disk = "\x02" * 100
            else:
                request.parameters.update({str(i): "x" for i in range(1000)})
            with contextlib.suppress(RpcFailure):
                await s.take_raw(request)
    probe = await call("Probe", s.driver.Probe, driver_pb2.ProbeRequest(), s.rpc_timeout)
    expect(probe.ready, "Probe ready=true afterwards", f"ready=false ({probe.message!r})")
    health: Any = s.conn.health
    reply: Any = await call(
        "Health.Check", health.Check, health_pb2.HealthCheckRequest(service=""), s.rpc_timeout
    )
    expect(
        reply.status == health_pb2.HealthCheckResponse.SERVING,
        "health SERVING afterwards",
        health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status),
    )
