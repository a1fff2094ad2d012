"""ONTAP volume and snapshot routes: ``/api/storage/volumes[/{uuid}[/snapshots[/{uuid}]]]``."""

from __future__ import annotations

import uuid
from typing import Any

from ..httpserver import Request, Response
from . import errors
from .errors import OntapError
from .responder import MUTATION_QUERY, Responder, Route, json_body, only, only_query, opt_str
from .state import Snapshot, Volume, now_iso

VOLUME_POST_FIELDS = {"name", "svm", "size", "comment"}
# Accepted so that ordinary provisioning calls work, without any effect in the emulator.
VOLUME_POST_IGNORED = {
    "aggregates",
    "nas",
    "guarantee",
    "space",
    "snapshot_policy",
    "type",
    "style",
    "language",
    "state",
    "efficiency",
    "autosize",
    "qos",
    "tiering",
    "encryption",
    "snapshot_directory_access_enabled",
}
VOLUME_PATCH_FIELDS = {"size", "comment", "restore_to"}
SNAPSHOT_FIELDS = {"name", "comment", "snapmirror_label", "expiry_time"}
SNAPSHOT_TEMPLATE: dict[str, Any] = {
    "uuid": "",
    "name": "",
    "create_time": "",
    "state": "",
    "size": 0,
    "comment": "",
    "snapmirror_label": "",
    "expiry_time": "",
    "volume": {"uuid": "", "name": ""},
    "svm": {"uuid": "", "name": ""},
}


class VolumeRoutes:
    def __init__(self, r: Responder) -> None:
        self.r = r
        self.state = r.state
        self.jobs = r.jobs

    def routes(self) -> list[Route]:
        return [
            ("GET", "api/storage/volumes", self.list_volumes),
            ("POST", "api/storage/volumes", self.create_volume),
            ("GET", "api/storage/volumes/*", self.get_volume),
            ("PATCH", "api/storage/volumes/*", self.patch_volume),
            ("DELETE", "api/storage/volumes/*", self.delete_volume),
            ("GET", "api/storage/volumes/*/snapshots", self.list_snapshots),
            ("POST", "api/storage/volumes/*/snapshots", self.create_snapshot),
            ("GET", "api/storage/volumes/*/snapshots/*", self.get_snapshot),
            ("PATCH", "api/storage/volumes/*/snapshots/*", self.patch_snapshot),
            ("DELETE", "api/storage/volumes/*/snapshots/*", self.delete_snapshot),
        ]

    # -- volumes -----------------------------------------------------------------------
    def list_volumes(self, request: Request, args: list[str]) -> Response:
        with self.state.lock:
            records = [self.state.volume_record(v) for v in self.state.volumes.values()]
            template = self.state.volume_record(Volume("", "", 0, "", ""))
        return self.r.collection(request, records, ("uuid", "name"), template=template)

    def get_volume(self, request: Request, args: list[str]) -> Response:
        with self.state.lock:
            record = self.state.volume_record(self.state.volume(args[0]))
        return self.r.single(request, record, ("uuid", "name"))

    def _check_svm(self, ref: Any) -> None:
        if not isinstance(ref, dict) or not (ref.get("name") or ref.get("uuid")):
            raise errors.missing("svm.name")
        if ref.get("name") not in (None, self.state.svm) or ref.get("uuid") not in (
            None,
            self.state.ids.svm_uuid,
        ):
            raise OntapError(
                404,
                errors.SVM_NOT_FOUND,
                f'SVM "{ref.get("name") or ref.get("uuid")}" does not exist.',
                "svm.name",
            )

    def create_volume(self, request: Request, args: list[str]) -> Response:
        only_query(request, MUTATION_QUERY)
        body = json_body(request)
        only(body, VOLUME_POST_FIELDS | VOLUME_POST_IGNORED)
        self._check_svm(body.get("svm"))
        with self.state.lock:
            name, size = self.state.check_new_volume(body.get("name"), body.get("size"))
            vol = Volume(
                uuid=str(uuid.uuid4()),
                name=name,
                size=size,
                comment=opt_str(body, "comment") or "",
                create_time=now_iso(),
            )

        def work() -> None:
            self.state.create_volume(vol)

        job = self.jobs.submit(f"POST /api/storage/volumes/{vol.uuid}", work)
        return self.r.accepted(
            request,
            job,
            created=f"/api/storage/volumes/{vol.uuid}",
            record=lambda: self.state.volume_record(vol),
        )

    def patch_volume(self, request: Request, args: list[str]) -> Response:
        body = json_body(request, required=False)
        only(body, VOLUME_PATCH_FIELDS)
        restore = body.get("restore_to") or {}
        if not isinstance(restore, dict):
            raise errors.invalid("restore_to", '"restore_to" must be an object.')
        snap_ref = restore.get("snapshot") or {}
        if not isinstance(snap_ref, dict):
            raise errors.invalid("restore_to.snapshot", '"restore_to.snapshot" is an object.')
        for name in request.query:
            if name in ("restore_to.snapshot.name", "restore_to.snapshot.uuid"):
                snap_ref = {**snap_ref, name.rsplit(".", 1)[1]: request.query_one(name)}
            elif name not in MUTATION_QUERY:
                raise errors.unexpected(name)
        with self.state.lock:
            vol = self.state.volume(args[0])
            snap = (
                self.state.snapshot_by_ref(vol, snap_ref.get("name"), snap_ref.get("uuid"))
                if snap_ref
                else None
            )
            size = self.state.check_size(body["size"]) if "size" in body else None
            comment = opt_str(body, "comment")

        def work() -> str:
            current = self.state.volume(vol.uuid)
            if snap is not None:
                self.state.restore_volume(current, self.state.snapshot(vol.uuid, snap.uuid))
            if size is not None:
                current.size = size
            if comment is not None:
                current.comment = comment
            return f'Volume "{vol.name}" modified.'

        job = self.jobs.submit(f"PATCH /api/storage/volumes/{vol.uuid}", work)
        return self.r.accepted(request, job)

    def delete_volume(self, request: Request, args: list[str]) -> Response:
        only_query(request, MUTATION_QUERY)
        with self.state.lock:
            vol = self.state.volume(args[0])

        def work() -> None:
            self.state.delete_volume(self.state.volume(vol.uuid))

        return self.r.accepted(
            request, self.jobs.submit(f"DELETE /api/storage/volumes/{vol.uuid}", work)
        )

    # -- snapshots ---------------------------------------------------------------------
    def list_snapshots(self, request: Request, args: list[str]) -> Response:
        with self.state.lock:
            vol = self.state.volume(args[0])
            records = [self.state.snapshot_record(s) for s in self.state.snapshots_of(vol.uuid)]
        return self.r.collection(request, records, ("uuid", "name"), template=SNAPSHOT_TEMPLATE)

    def get_snapshot(self, request: Request, args: list[str]) -> Response:
        with self.state.lock:
            record = self.state.snapshot_record(self.state.snapshot(args[0], args[1]))
        return self.r.single(request, record, ("uuid", "name"))

    def create_snapshot(self, request: Request, args: list[str]) -> Response:
        only_query(request, MUTATION_QUERY)
        body = json_body(request)
        only(body, SNAPSHOT_FIELDS | {"volume", "svm"})
        with self.state.lock:
            vol = self.state.volume(args[0])
            snap = Snapshot(
                uuid=str(uuid.uuid4()),
                volume_uuid=vol.uuid,
                name=self.state.check_new_snapshot(vol, body.get("name")),
                create_time=now_iso(),
                seq=0,
                comment=opt_str(body, "comment"),
                snapmirror_label=opt_str(body, "snapmirror_label"),
                expiry_time=opt_str(body, "expiry_time"),
            )

        def work() -> None:
            self.state.create_snapshot(snap)

        job = self.jobs.submit(f"POST /api/storage/volumes/{vol.uuid}/snapshots", work)
        return self.r.accepted(
            request,
            job,
            created=f"/api/storage/volumes/{vol.uuid}/snapshots/{snap.uuid}",
            record=lambda: self.state.snapshot_record(snap),
        )

    def patch_snapshot(self, request: Request, args: list[str]) -> Response:
        only_query(request, MUTATION_QUERY)
        body = json_body(request)
        only(body, SNAPSHOT_FIELDS)
        with self.state.lock:
            vol = self.state.volume(args[0])
            snap = self.state.snapshot(vol.uuid, args[1])
            new_name = opt_str(body, "name")
            if new_name is not None and new_name != snap.name:
                self.state.check_new_snapshot(vol, new_name)
            updates = {k: opt_str(body, k) for k in SNAPSHOT_FIELDS - {"name"} if k in body}

        def work() -> None:
            current = self.state.snapshot(vol.uuid, snap.uuid)
            if new_name is not None:
                current.name = new_name
            for key, value in updates.items():
                setattr(current, key, value)

        return self.r.accepted(
            request,
            self.jobs.submit(f"PATCH /api/storage/volumes/{vol.uuid}/snapshots/{snap.uuid}", work),
        )

    def delete_snapshot(self, request: Request, args: list[str]) -> Response:
        only_query(request, MUTATION_QUERY)
        with self.state.lock:
            snap = self.state.snapshot(args[0], args[1])

        def work() -> None:
            self.state.delete_snapshot(self.state.snapshot(snap.volume_uuid, snap.uuid))

        return self.r.accepted(
            request,
            self.jobs.submit(
                f"DELETE /api/storage/volumes/{snap.volume_uuid}/snapshots/{snap.uuid}", work
            ),
        )
