"""Storage drivers that misbehave on purpose, one process per misbehaviour.

    python -m tests.hostile.drivers --mode MODE --listen unix:///tmp/h.sock \
        [--name io.vmsnap.test.h] [--scheme h] [--state /tmp/h.json] \
        [--impersonate io.vmsnap.test.a] [--grace 0]

Each is the fake in-memory driver of ``tests/fakes/driver.py`` — it really
holds the snapshots it cuts, records every call in ``--state`` and lists what
it holds with ListVMSnapshots (CAPABILITY_LIST) — served through the SDK's own
servicer. A mode then spoils what goes out on the wire, *after* the SDK's
checks: the SDK refuses to send most of these answers itself, and a driver
written from the .proto alone has no such guard.

Modes (``MODES``):

    extra-volume           the result has a snapshot of a disk that was not asked for
    missing-volume         the result misses the last requested disk
    no-volumes             the result has no volume snapshot at all
    swap-on-poll           ready=false, then GetVMSnapshot answers other handles
    huge-handle            the first handle is 5 MiB
    huge-labels            the result carries 10 MiB of metadata
    huge-reason            CanHandle gives a 5 MiB reason for every volume it claims
    huge-info              GetDriverInfo carries 10 MiB of labels
    canhandle-fails        CanHandle answers UNAVAILABLE
    canhandle-hangs        CanHandle sleeps 60 s before answering
    garbage-details        TakeVMSnapshot cuts, then fails with a malformed
                           grpc-status-details-bin
    garbage-health         Probe (the host's health check) fails with a malformed
                           grpc-status-details-bin
    huge-error             TakeVMSnapshot cuts, then fails with a 1 MiB message
    impostor               GetDriverInfo announces --impersonate's name
    unavailable-after-cut  TakeVMSnapshot cuts, then answers UNAVAILABLE

:func:`held` asks a running driver which snapshots it still holds.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from tests.fakes.driver import FakeDriver, Options
from vmsnap_sdk import (
    VM,
    Capability,
    DriverInfo,
    Operation,
    Server,
    SnapshotResult,
    TakeRequest,
    Volume,
    VolumeDecision,
    VolumeSnapshot,
)
from vmsnap_sdk._driver_service import DriverServicer
from vmsnap_sdk._logging import configure_logging
from vmsnap_sdk._proto.driver.v1 import driver_pb2, driver_pb2_grpc
from vmsnap_sdk.errors import Unavailable
from vmsnap_sdk.serve import DRIVER_SERVICE, add_server_arguments, server_tls_from_args

MIB = 1 << 20

MODES: dict[str, str] = {
    "extra-volume": "the result has a snapshot of a disk that was not asked for",
    "missing-volume": "the result misses the last requested disk",
    "no-volumes": "the result has no volume snapshot at all",
    "swap-on-poll": "ready=false, then GetVMSnapshot answers other handles",
    "huge-handle": "the first handle is 5 MiB",
    "huge-labels": "the result carries 10 MiB of metadata",
    "huge-reason": "CanHandle gives a 5 MiB reason for every volume it claims",
    "huge-info": "GetDriverInfo carries 10 MiB of labels",
    "canhandle-fails": "CanHandle answers UNAVAILABLE",
    "canhandle-hangs": "CanHandle sleeps 60 s before answering",
    "garbage-details": "TakeVMSnapshot cuts, then fails with malformed error details",
    "garbage-health": "Probe fails with malformed error details",
    "huge-error": "TakeVMSnapshot cuts, then fails with a 1 MiB message",
    "impostor": "GetDriverInfo announces another driver's name",
    "unavailable-after-cut": "TakeVMSnapshot cuts, then answers UNAVAILABLE",
}

#: Not a google.rpc.Status, whatever a parser tries.
GARBAGE_DETAILS = b"\xff\x00\x13garbage, not a google.rpc.Status\x99"
HANG_SECONDS = 60.0


class HostileDriver(FakeDriver):
    """The fake driver, with the misbehaviours that the SDK lets a driver have."""

    def __init__(self, options: Options, mode: str, impersonate: str) -> None:
        if mode == "swap-on-poll":
            options = replace(
                options,
                not_ready_polls=1,
                capabilities=options.capabilities | {Capability.POST_PROCESSING},
            )
        super().__init__(options)
        self.mode = mode
        self.impersonate = impersonate

    async def get_info(self) -> DriverInfo:
        info = await super().get_info()
        if self.mode == "impostor":
            return replace(info, name=self.impersonate)
        return info

    async def can_handle(
        self, vm: VM, volumes: Sequence[Volume], operation: Operation, options: Mapping[str, str]
    ) -> Sequence[VolumeDecision]:
        if self.mode == "canhandle-fails":
            raise Unavailable(f"{self.o.name}: CanHandle cannot reach the array (hostile test)")
        if self.mode == "canhandle-hangs":
            await asyncio.sleep(HANG_SECONDS)
        return await super().can_handle(vm, volumes, operation, options)

    async def take_snapshot(self, request: TakeRequest) -> SnapshotResult:
        result = await super().take_snapshot(request)
        if self.mode == "unavailable-after-cut":
            # The snapshot exists on the array; the answer never makes it back.
            raise Unavailable(f"{self.o.name}: the array stopped answering after the cut")
        return result

    async def get_snapshot(self, vm_snapshot_id: str) -> SnapshotResult:
        result = await super().get_snapshot(vm_snapshot_id)
        if self.mode == "swap-on-poll":
            return replace(
                result,
                volume_snapshots=tuple(
                    VolumeSnapshot(v.disk, v.locator, v.handle + "-swapped", v.size_bytes)
                    for v in result.volume_snapshots
                ),
            )
        return result


def spoil(mode: str, result: driver_pb2.VMSnapshotResult) -> None:
    """Break a result the way ``mode`` says, in place (modes that do not touch results: no-op)."""
    if mode == "extra-volume":
        result.volume_snapshots.add(
            disk="vdz", locator="h://pool/999", handle=f"{result.vm_snapshot_id}@vdz"
        )
    elif mode == "missing-volume":
        del result.volume_snapshots[-1]
    elif mode == "no-volumes":
        del result.volume_snapshots[:]
    elif mode == "huge-handle":
        result.volume_snapshots[0].handle = "h" * (5 * MIB)
    elif mode == "huge-labels":
        result.metadata.update({f"label-{i}": "l" * MIB for i in range(10)})


class HostileServicer(DriverServicer):
    """The SDK's servicer, whose answers the wire-level modes spoil after it checked them."""

    def __init__(self, driver: HostileDriver) -> None:
        super().__init__(driver)
        self.mode = driver.mode

    async def GetDriverInfo(self, request: Any, context: Any) -> Any:
        response = await super().GetDriverInfo(request, context)
        if self.mode == "huge-info":
            response.labels.update({f"label-{i}": "l" * MIB for i in range(10)})
        return response

    async def Probe(self, request: Any, context: Any) -> Any:
        if self.mode == "garbage-health":
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "array down",
                (("grpc-status-details-bin", GARBAGE_DETAILS),),
            )
        return await super().Probe(request, context)

    async def CanHandle(self, request: Any, context: Any) -> Any:
        response = await super().CanHandle(request, context)
        if self.mode == "huge-reason":
            for decision in response.decisions:
                if decision.priority != driver_pb2.PRIORITY_CANT_HANDLE:
                    decision.reason = "r" * (5 * MIB)
        return response

    async def TakeVMSnapshot(self, request: Any, context: Any) -> Any:
        response = await super().TakeVMSnapshot(request, context)  # the cut happened
        if self.mode == "garbage-details":
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "array down",
                (("grpc-status-details-bin", GARBAGE_DETAILS),),
            )
        if self.mode == "huge-error":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "e" * MIB)
        spoil(self.mode, response.result)
        return response

    async def GetVMSnapshot(self, request: Any, context: Any) -> Any:
        response = await super().GetVMSnapshot(request, context)
        spoil(self.mode, response.result)
        return response


def held(address: str, timeout: float = 5.0) -> dict[str, list[str]]:
    """What a running driver still holds (ListVMSnapshots): snapshot id → its disks.

    Through a plain channel with room for large answers: a hostile driver's
    listing is its real holdings, but this must work whatever it sends.
    """
    options = [("grpc.max_receive_message_length", 64 * MIB)]
    found: dict[str, list[str]] = {}
    with grpc.insecure_channel(address, options=options) as channel:
        stub = driver_pb2_grpc.StorageDriverStub(channel)
        token = ""
        while True:
            page = stub.ListVMSnapshots(
                driver_pb2.ListVMSnapshotsRequest(page_size=1000, page_token=token),
                timeout=timeout,
            )
            for s in page.vm_snapshots:
                found[s.vm_snapshot_id] = [v.disk for v in s.volume_snapshots]
            token = page.next_page_token
            if not token:
                return found


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser)
    parser.add_argument("--mode", required=True, choices=sorted(MODES))
    parser.add_argument("--name", default="io.vmsnap.test.h")
    parser.add_argument("--scheme", default="h")
    parser.add_argument("--state", type=Path)
    parser.add_argument(
        "--impersonate",
        default="io.vmsnap.test.a",
        help="the name an impostor announces (another driver's)",
    )
    return parser


async def serve(args: argparse.Namespace) -> None:
    driver = HostileDriver(
        Options(name=args.name, scheme=args.scheme, state=args.state), args.mode, args.impersonate
    )
    server = Server(args.listen, tls=server_tls_from_args(args), grace_seconds=args.grace)
    server.add_service(
        DRIVER_SERVICE, HostileServicer(driver), driver_pb2_grpc.add_StorageDriverServicer_to_server
    )
    await server.start()
    await server.serve_until_signal()


def main() -> None:
    args = _arguments().parse_args()
    configure_logging(args.log_level)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
