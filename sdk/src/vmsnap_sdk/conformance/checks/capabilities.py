"""capabilities: what GetDriverInfo advertises is what the driver does.

An advertised capability works; an absent one answers UNIMPLEMENTED, so the
host can trust the list when it plans (and re-read it on UNIMPLEMENTED).
"""

from __future__ import annotations

from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._types import Capability
from vmsnap_sdk.conformance._expect import expect, expect_code, expect_ok
from vmsnap_sdk.conformance._registry import check
from vmsnap_sdk.conformance._rpc import call
from vmsnap_sdk.conformance._session import Session, handles
from vmsnap_sdk.conformance.checks._common import INVALID, NOT_FOUND, UNIMPLEMENTED, foreign_volume


def _unknown_snapshot(s: Session) -> driver_pb2.VMSnapshotResult:
    volume = foreign_volume("vda")
    return driver_pb2.VMSnapshotResult(
        vm_snapshot_id=s.new_id("unknown"),
        volume_snapshots=[
            driver_pb2.VolumeSnapshot(disk="vda", locator=volume.locator, handle="no-such-handle")
        ],
        ready=True,
    )


@check(
    "capabilities.revert",
    "CAPABILITY_REVERT advertised ⇔ RevertVMSnapshot is served (else UNIMPLEMENTED)",
)
async def revert(s: Session) -> None:
    call_ = s.revert(_unknown_snapshot(s))
    if s.has(Capability.REVERT):
        await expect_code(
            call_, NOT_FOUND, INVALID, what="advertised revert of an unknown snapshot"
        )
    else:
        await expect_code(call_, UNIMPLEMENTED, what="revert without CAPABILITY_REVERT")


@check(
    "capabilities.list",
    "CAPABILITY_LIST advertised ⇔ ListVMSnapshots is served (else UNIMPLEMENTED)",
)
async def list_(s: Session) -> None:
    if s.has(Capability.LIST):
        await expect_ok(s.list_page(), "advertised ListVMSnapshots")
    else:
        await expect_code(s.list_page(), UNIMPLEMENTED, what="list without CAPABILITY_LIST")


@check(
    "capabilities.revert_undo",
    "CAPABILITY_REVERT_UNDO advertised ⇔ save_current_state returns an undo snapshot",
)
async def revert_undo(s: Session) -> None:
    volumes = await s.volumes(1)
    snap = await s.wait_ready(await s.take(s.new_id(), volumes))
    undo_id = s.new_id("undo")
    if s.has(Capability.REVERT_UNDO) and s.has(Capability.REVERT):
        reply = await expect_ok(
            s.revert(snap, undo_id=undo_id, volumes=volumes), "revert with undo"
        )
        expect(reply.HasField("undo"), "an undo snapshot in the answer", "none")
        expect(
            reply.undo.vm_snapshot_id == undo_id,
            f"the undo snapshot to carry the given id {undo_id!r}",
            repr(reply.undo.vm_snapshot_id),
        )
    else:
        await expect_code(
            s.revert(snap, undo_id=undo_id, volumes=volumes),
            UNIMPLEMENTED,
            what="save_current_state without CAPABILITY_REVERT_UNDO",
        )


@check(
    "capabilities.post_processing",
    "Without CAPABILITY_POST_PROCESSING a take is ready at once; with it GetVMSnapshot reaches ready",
)
async def post_processing(s: Session) -> None:
    volumes = await s.volumes(1)
    taken = await s.take(s.new_id(), volumes)
    if not s.has(Capability.POST_PROCESSING):
        expect(
            taken.ready,
            "ready=true from a driver without CAPABILITY_POST_PROCESSING",
            "ready=false",
        )
        return
    polled = await s.wait_ready(await expect_ok(s.get(taken.vm_snapshot_id), "GetVMSnapshot"))
    expect(
        handles(polled) == handles(taken),
        "GetVMSnapshot to report the take's handles",
        handles(polled),
    )


@check(
    "capabilities.get_unknown",
    "GetVMSnapshot of an unknown id is NOT_FOUND (UNIMPLEMENTED without post-processing)",
)
async def get_unknown(s: Session) -> None:
    codes = (NOT_FOUND,) if s.has(Capability.POST_PROCESSING) else (NOT_FOUND, UNIMPLEMENTED)
    await expect_code(s.get(s.new_id("unknown")), *codes, what="GetVMSnapshot of an unknown id")


@check(
    "capabilities.fixture",
    "CAPABILITY_CONFORMANCE_FIXTURE advertised ⇔ the fixture serves volumes the driver claims",
)
async def fixture(s: Session) -> None:
    if not s.has(Capability.CONFORMANCE_FIXTURE):
        request = driver_pb2.ReadVolumeRequest(locator=foreign_volume().locator, offset=0, length=1)
        await expect_code(
            call("ReadVolume", s.fixture.ReadVolume, request, s.rpc_timeout),
            UNIMPLEMENTED,
            what="the fixture without CAPABILITY_CONFORMANCE_FIXTURE",
        )
        return
    volume = await expect_ok(s.create_volume(0), "CreateTestVolume")
    reply = await call(
        "CanHandle",
        s.driver.CanHandle,
        driver_pb2.CanHandleRequest(
            vm=s.vm([volume]), volumes=[volume], operation=driver_pb2.OPERATION_TAKE
        ),
        s.rpc_timeout,
    )
    priorities = [driver_pb2.Priority.Name(d.priority) for d in reply.decisions]
    expect(
        len(reply.decisions) == 1 and reply.decisions[0].priority >= driver_pb2.PRIORITY_PLUGIN,
        "a test volume claimed at PRIORITY_PLUGIN or above",
        priorities,
    )


@check(
    "capabilities.consistent_group",
    "With CAPABILITY_CONSISTENT_GROUP an unquiesced multi-volume take is at least crash consistent",
    requires=(Capability.CONSISTENT_GROUP,),
)
async def consistent_group(s: Session) -> None:
    volumes = await s.volumes(2)
    request = s.take_request(s.new_id(), volumes)
    request.quiesced = False
    request.consistency = common_pb2.CONSISTENCY_UNSPECIFIED
    result = await s.take_raw(request)
    expect(
        result.consistency >= common_pb2.CONSISTENCY_CRASH,
        "consistency CRASH or better without a freeze",
        common_pb2.Consistency.Name(result.consistency),
    )


@check(
    "capabilities.clone_volumes",
    "CAPABILITY_CLONE_VOLUMES advertised ⇔ CloneVolumes is served (else UNIMPLEMENTED)",
)
async def clone_volumes(s: Session) -> None:
    snapshot = _unknown_snapshot(s)
    clone_id = s.new_id("clone")
    advertised = s.has(Capability.CLONE_VOLUMES)
    call_ = s.clone(snapshot, clone_id, targets=[("vda", "no-such-clone")], register=advertised)
    if advertised:
        await expect_code(call_, NOT_FOUND, INVALID, what="advertised clone of an unknown snapshot")
    else:
        await expect_code(call_, UNIMPLEMENTED, what="clone without CAPABILITY_CLONE_VOLUMES")
