"""HTTP routes of the ONTAP emulator (the subset of ``/api`` vmsnap's drivers use).

* ``GET /api/cluster``; ``GET /api/cluster/jobs[/{uuid}]``; ``GET /api/svm/svms[/{uuid}]``
* ``/api/storage/volumes``: GET (collection), POST; ``/{uuid}``: GET, PATCH (``size``,
  ``comment``, restore with ``restore_to.snapshot.name|uuid`` as query parameters or in the
  body), DELETE
* ``/api/storage/volumes/{uuid}/snapshots``: GET, POST; ``/{uuid}``: GET, PATCH, DELETE
* ``POST /api/storage/file/clone`` (``volume``, ``source_path``, ``destination_path``,
  ``overwrite_destination``, ``is_backup``...)
* ``/api/storage/volumes/{uuid}/files/{path}``: GET (a file's record, or a directory's
  entries; ``return_metadata=true`` for the directory itself; with ``Accept:
  multipart/form-data``, the file's bytes), POST (``type``: directory or file; or multipart
  contents), PATCH (multipart contents at ``byte_offset``), DELETE (``recurse=true``)
* Emulator-only: ``GET /emulator/info`` (export dir, copy counters) and
  ``GET /emulator/volumes/{uuid}`` (the volume's directory on this host).

Mutations go through :class:`~.jobs.JobRunner` (202 + job), except file create/delete.
This module holds the cluster, job, SVM and emulator-only routes and the dispatch;
:mod:`.volumes` and :mod:`.files` hold the storage routes, :mod:`.responder` the plumbing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..httpserver import Request, Response
from . import errors
from .errors import OntapError
from .files import FileRoutes
from .jobs import JobRunner
from .responder import Responder, Route, match
from .state import Job, OntapState
from .volumes import VolumeRoutes

MAX_BODY = 1 << 20
ONTAP_VERSION = {
    "full": "NetApp Release 9.14.1: Emulated by vmsnap",
    "generation": 9,
    "major": 14,
    "minor": 1,
}


class OntapApp:
    kind = "ontap"

    def __init__(self, data_dir: Path, *, svm: str, cluster: str, job_delay: float = 0.0) -> None:
        self.data_dir = data_dir
        self.state = OntapState(data_dir, svm=svm, cluster=cluster)
        self.jobs = JobRunner(self.state, job_delay)
        self.r = Responder(self.state, self.jobs)
        self.routes: list[Route] = [
            ("GET", "api/cluster", self.get_cluster),
            ("GET", "api/cluster/jobs", self.list_jobs),
            ("GET", "api/cluster/jobs/*", self.get_job),
            ("GET", "api/svm/svms", self.list_svms),
            ("GET", "api/svm/svms/*", self.get_svm),
            *VolumeRoutes(self.r).routes(),
            *FileRoutes(self.r).routes(),
            ("GET", "emulator/info", self.emulator_info),
            ("GET", "emulator/volumes/*", self.emulator_volume),
        ]

    # -- App protocol ------------------------------------------------------------------
    def max_body(self, method: str, path: str) -> int:
        # File contents travel as multipart (≤ 1 MiB of data plus the form's framing).
        return 2 * MAX_BODY if "/files/" in path else MAX_BODY

    def unauthorized(self) -> Response:
        return Response.json(
            401, OntapError(401, errors.NOT_AUTHORIZED, "not authorized for that command").body()
        )

    def error(self, status: int, message: str) -> Response:
        code = errors.TOO_LARGE if status == 413 else errors.INTERNAL
        return Response.json(status, OntapError(status, code, message).body())

    def listen_info(self) -> dict[str, Any]:
        return {
            "svm": self.state.svm,
            "cluster": self.state.cluster,
            "export_dir": str(self.state.export_dir),
        }

    def close(self) -> None:
        self.jobs.stop()
        with self.state.lock:
            self.state.commit()

    # -- routing -----------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        parts = [p for p in request.path.split("/") if p]
        matched_path = False
        for method, pattern, handler in self.routes:
            args = match(pattern.split("/"), parts)
            if args is None:
                continue
            matched_path = True
            if method == request.method:
                try:
                    return handler(request, args)
                except OntapError as exc:
                    return Response.json(exc.status, exc.body())
        if matched_path:
            return Response.json(405, OntapError(405, "3", "Method not allowed.").body())
        return Response.json(404, OntapError(404, "3", "API not found").body())

    # -- cluster, jobs, SVMs -----------------------------------------------------------
    def get_cluster(self, request: Request, args: list[str]) -> Response:
        record = {
            "name": self.state.cluster,
            "uuid": self.state.ids.cluster_uuid,
            "version": ONTAP_VERSION,
            "_links": {"self": {"href": "/api/cluster"}},
        }
        return self.r.single(request, record, ("name", "uuid"))

    def list_jobs(self, request: Request, args: list[str]) -> Response:
        with self.state.lock:
            records = [self.state.job_record(j) for j in self.state.jobs.values()]
            template = self.state.job_record(Job("", "", start_time="", end_time="", error={}))
        return self.r.collection(request, records, ("uuid",), template=template)

    def get_job(self, request: Request, args: list[str]) -> Response:
        with self.state.lock:
            job = self.state.jobs.get(args[0])
            if job is None:
                raise errors.not_found(f"job {args[0]}", "uuid")
            record = self.state.job_record(job)
        return self.r.single(request, record, ("uuid",))

    def _svm_record(self) -> dict[str, Any]:
        return {**self.state.svm_ref(), "state": "running", "subtype": "default"}

    def list_svms(self, request: Request, args: list[str]) -> Response:
        return self.r.collection(request, [self._svm_record()], ("uuid", "name"))

    def get_svm(self, request: Request, args: list[str]) -> Response:
        if args[0] != self.state.ids.svm_uuid:
            raise errors.not_found(f"svm {args[0]}", "uuid")
        return self.r.single(request, self._svm_record(), ("uuid", "name"))

    # -- emulator-only -------------------------------------------------------------------
    def emulator_info(self, request: Request, args: list[str]) -> Response:
        with self.state.lock:
            return Response.json(
                200,
                {
                    "kind": self.kind,
                    "data_dir": str(self.data_dir),
                    "svm": self.state.svm,
                    "export_dir": str(self.state.export_dir),
                    "stats": self.state.stats.as_dict(),
                },
            )

    def emulator_volume(self, request: Request, args: list[str]) -> Response:
        with self.state.lock:
            vol = self.state.volume(args[0])
            return Response.json(
                200,
                {
                    "uuid": vol.uuid,
                    "name": vol.name,
                    "export_path": str(self.state.volume_path(vol)),
                },
            )
