"""HTTP routes of the ONTAP emulator (the subset of ``/api`` vmsnap's drivers use).

* ``GET /api/cluster``; ``GET /api/cluster/jobs[/{uuid}]``; ``GET /api/svm/svms[/{uuid}]``
* ``/api/storage/volumes``: GET (collection), POST; ``/{uuid}``: GET, PATCH (``size``,
  ``comment``, restore with ``restore_to.snapshot.name|uuid`` as query parameters or in the
  body), DELETE
* ``/api/storage/volumes/{uuid}/snapshots``: GET, POST; ``/{uuid}``: GET, PATCH, DELETE
* ``POST /api/storage/file/clone`` (``volume``, ``source_path``, ``destination_path``,
  ``overwrite_destination``, ``is_backup``...)
* ``/api/storage/volumes/{uuid}/files/{path}``: GET (a file's record, or a directory's
  entries; ``return_metadata=true`` for the directory itself), POST (``type``: directory or
  file), DELETE (``recurse=true`` for directories)
* Emulator-only: ``GET /emulator/info`` (export dir, copy counters) and
  ``GET /emulator/volumes/{uuid}`` (the volume's directory on this host).

Mutations go through :class:`~.jobs.JobRunner` (202 + job), except file create/delete.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

from ..httpserver import Request, Response
from . import errors, fsops, query
from .errors import OntapError
from .jobs import JobRunner
from .state import Job, OntapState, Snapshot, Volume, now_iso

MAX_BODY = 1 << 20
ONTAP_VERSION = {
    "full": "NetApp Release 9.14.1: Emulated by vmsnap",
    "generation": 9,
    "major": 14,
    "minor": 1,
}

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
CLONE_FIELDS = {
    "volume",
    "source_path",
    "destination_path",
    "overwrite_destination",
    "is_backup",
    "autodelete",
    "token_uuid",
    "bypass_throttle",
    "nosplit_entry",
    "is_vvol_backup",
    "range",
}
MUTATION_QUERY = {"return_timeout", "return_records"}
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

Handler = Callable[[Request, list[str]], Response]


def _json_body(request: Request, *, required: bool = True) -> dict[str, Any]:
    if not request.body.strip():
        if required:
            raise errors.invalid("body", "A JSON request body is required.")
        return {}
    try:
        body = json.loads(request.body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise errors.invalid("body", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise errors.invalid("body", "The request body must be a JSON object.")
    return body


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    for name in body:
        if name not in allowed:
            raise errors.unexpected(name)


def _only_query(request: Request, allowed: set[str]) -> None:
    for name in request.query:
        if name not in allowed:
            raise errors.unexpected(name)


def _opt_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise errors.invalid(name, f'"{name}" must be a string.')
    return value


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise errors.invalid(name, f'"{name}" must be a boolean.')
    return value


class OntapApp:
    kind = "ontap"

    def __init__(self, data_dir: Path, *, svm: str, cluster: str, job_delay: float = 0.0) -> None:
        self.data_dir = data_dir
        self.state = OntapState(data_dir, svm=svm, cluster=cluster)
        self.jobs = JobRunner(self.state, job_delay)
        self.routes: list[tuple[str, str, Handler]] = [
            ("GET", "api/cluster", self.get_cluster),
            ("GET", "api/cluster/jobs", self.list_jobs),
            ("GET", "api/cluster/jobs/*", self.get_job),
            ("GET", "api/svm/svms", self.list_svms),
            ("GET", "api/svm/svms/*", self.get_svm),
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
            ("POST", "api/storage/file/clone", self.clone_file),
            ("GET", "api/storage/volumes/*/files", self.get_files),  # the volume root
            ("GET", "api/storage/volumes/*/files/**", self.get_files),
            ("POST", "api/storage/volumes/*/files", self.create_file),  # path in the body
            ("POST", "api/storage/volumes/*/files/**", self.create_file),
            ("DELETE", "api/storage/volumes/*/files/**", self.delete_file),
            ("GET", "emulator/info", self.emulator_info),
            ("GET", "emulator/volumes/*", self.emulator_volume),
        ]

    # -- App protocol ------------------------------------------------------------------
    def max_body(self, method: str, path: str) -> int:
        return MAX_BODY

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
            args = _match(pattern.split("/"), parts)
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

    # -- helpers -----------------------------------------------------------------------
    def _accepted(
        self,
        request: Request,
        job: Job,
        *,
        created: str | None = None,
        record: Callable[[], dict[str, Any]] | None = None,
    ) -> Response:
        """202 with the job; or, with ``return_timeout``, the outcome if the job ended."""
        body: dict[str, Any] = self.jobs.link(job)
        headers = {"Location": created} if created else {}
        timeout = request.query_one("return_timeout")
        try:
            wait = min(max(int(timeout), 0), 120) if timeout is not None else 0
        except ValueError:
            raise errors.invalid("return_timeout", "Invalid value for return_timeout.") from None
        status = 202
        if wait and self.jobs.wait(job, wait):
            with self.state.lock:
                if job.state == "failure":
                    return Response.json(400, OntapError(400, str(job.code), job.message).body())
                status = 201 if created else 200
        if record is not None and (request.query_one("return_records") or "").lower() == "true":
            with self.state.lock:
                body["num_records"] = 1
                body["records"] = [record()]
        return Response.json(status, body, headers)

    def _collection(
        self,
        request: Request,
        records: list[dict[str, Any]],
        keys: tuple[str, ...],
        extra: frozenset[str] = frozenset(),
        template: dict[str, Any] | None = None,
    ) -> Response:
        # Known fields come from a template record too, so that fields= and filters on an
        # empty collection are accepted exactly as on a full one.
        samples = [*records, *([template] if template else [])]
        known = set().union(*(query.field_paths(r) for r in samples)) if samples else set()
        known |= {"uuid", "name"}
        body = query.collection(request.path, records, request.query, keys, known, extra)
        return Response.json(200, body)

    def _single(
        self,
        request: Request,
        record: dict[str, Any],
        keys: tuple[str, ...],
        extra: frozenset[str] = frozenset(),
    ) -> Response:
        control, filters = query.split_query(request.query, query.field_paths(record), set(extra))
        if filters:
            raise errors.unexpected(next(iter(filters)))
        fields = control.get("fields") or "*"
        return Response.json(200, query.project(record, fields, keys))

    # -- cluster, jobs, SVMs -----------------------------------------------------------
    def get_cluster(self, request: Request, args: list[str]) -> Response:
        record = {
            "name": self.state.cluster,
            "uuid": self.state.ids.cluster_uuid,
            "version": ONTAP_VERSION,
            "_links": {"self": {"href": "/api/cluster"}},
        }
        return self._single(request, record, ("name", "uuid"))

    def list_jobs(self, request: Request, args: list[str]) -> Response:
        with self.state.lock:
            records = [self.state.job_record(j) for j in self.state.jobs.values()]
            template = self.state.job_record(Job("", "", start_time="", end_time="", error={}))
        return self._collection(request, records, ("uuid",), template=template)

    def get_job(self, request: Request, args: list[str]) -> Response:
        with self.state.lock:
            job = self.state.jobs.get(args[0])
            if job is None:
                raise errors.not_found(f"job {args[0]}", "uuid")
            record = self.state.job_record(job)
        return self._single(request, record, ("uuid",))

    def _svm_record(self) -> dict[str, Any]:
        return {**self.state.svm_ref(), "state": "running", "subtype": "default"}

    def list_svms(self, request: Request, args: list[str]) -> Response:
        return self._collection(request, [self._svm_record()], ("uuid", "name"))

    def get_svm(self, request: Request, args: list[str]) -> Response:
        if args[0] != self.state.ids.svm_uuid:
            raise errors.not_found(f"svm {args[0]}", "uuid")
        return self._single(request, self._svm_record(), ("uuid", "name"))

    # -- volumes -----------------------------------------------------------------------
    def list_volumes(self, request: Request, args: list[str]) -> Response:
        with self.state.lock:
            records = [self.state.volume_record(v) for v in self.state.volumes.values()]
            template = self.state.volume_record(Volume("", "", 0, "", ""))
        return self._collection(request, records, ("uuid", "name"), template=template)

    def get_volume(self, request: Request, args: list[str]) -> Response:
        with self.state.lock:
            record = self.state.volume_record(self.state.volume(args[0]))
        return self._single(request, record, ("uuid", "name"))

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
        _only_query(request, MUTATION_QUERY)
        body = _json_body(request)
        _only(body, VOLUME_POST_FIELDS | VOLUME_POST_IGNORED)
        self._check_svm(body.get("svm"))
        with self.state.lock:
            name, size = self.state.check_new_volume(body.get("name"), body.get("size"))
            vol = Volume(
                uuid=str(uuid.uuid4()),
                name=name,
                size=size,
                comment=_opt_str(body, "comment") or "",
                create_time=now_iso(),
            )

        def work() -> None:
            self.state.create_volume(vol)

        job = self.jobs.submit(f"POST /api/storage/volumes/{vol.uuid}", work)
        return self._accepted(
            request,
            job,
            created=f"/api/storage/volumes/{vol.uuid}",
            record=lambda: self.state.volume_record(vol),
        )

    def patch_volume(self, request: Request, args: list[str]) -> Response:
        body = _json_body(request, required=False)
        _only(body, VOLUME_PATCH_FIELDS)
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
            comment = _opt_str(body, "comment")

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
        return self._accepted(request, job)

    def delete_volume(self, request: Request, args: list[str]) -> Response:
        _only_query(request, MUTATION_QUERY)
        with self.state.lock:
            vol = self.state.volume(args[0])

        def work() -> None:
            self.state.delete_volume(self.state.volume(vol.uuid))

        return self._accepted(
            request, self.jobs.submit(f"DELETE /api/storage/volumes/{vol.uuid}", work)
        )

    # -- snapshots ---------------------------------------------------------------------
    def list_snapshots(self, request: Request, args: list[str]) -> Response:
        with self.state.lock:
            vol = self.state.volume(args[0])
            records = [self.state.snapshot_record(s) for s in self.state.snapshots_of(vol.uuid)]
        return self._collection(request, records, ("uuid", "name"), template=SNAPSHOT_TEMPLATE)

    def get_snapshot(self, request: Request, args: list[str]) -> Response:
        with self.state.lock:
            record = self.state.snapshot_record(self.state.snapshot(args[0], args[1]))
        return self._single(request, record, ("uuid", "name"))

    def create_snapshot(self, request: Request, args: list[str]) -> Response:
        _only_query(request, MUTATION_QUERY)
        body = _json_body(request)
        _only(body, SNAPSHOT_FIELDS | {"volume", "svm"})
        with self.state.lock:
            vol = self.state.volume(args[0])
            snap = Snapshot(
                uuid=str(uuid.uuid4()),
                volume_uuid=vol.uuid,
                name=self.state.check_new_snapshot(vol, body.get("name")),
                create_time=now_iso(),
                seq=0,
                comment=_opt_str(body, "comment"),
                snapmirror_label=_opt_str(body, "snapmirror_label"),
                expiry_time=_opt_str(body, "expiry_time"),
            )

        def work() -> None:
            self.state.create_snapshot(snap)

        job = self.jobs.submit(f"POST /api/storage/volumes/{vol.uuid}/snapshots", work)
        return self._accepted(
            request,
            job,
            created=f"/api/storage/volumes/{vol.uuid}/snapshots/{snap.uuid}",
            record=lambda: self.state.snapshot_record(snap),
        )

    def patch_snapshot(self, request: Request, args: list[str]) -> Response:
        _only_query(request, MUTATION_QUERY)
        body = _json_body(request)
        _only(body, SNAPSHOT_FIELDS)
        with self.state.lock:
            vol = self.state.volume(args[0])
            snap = self.state.snapshot(vol.uuid, args[1])
            new_name = _opt_str(body, "name")
            if new_name is not None and new_name != snap.name:
                self.state.check_new_snapshot(vol, new_name)
            updates = {k: _opt_str(body, k) for k in SNAPSHOT_FIELDS - {"name"} if k in body}

        def work() -> None:
            current = self.state.snapshot(vol.uuid, snap.uuid)
            if new_name is not None:
                current.name = new_name
            for key, value in updates.items():
                setattr(current, key, value)

        return self._accepted(
            request,
            self.jobs.submit(f"PATCH /api/storage/volumes/{vol.uuid}/snapshots/{snap.uuid}", work),
        )

    def delete_snapshot(self, request: Request, args: list[str]) -> Response:
        _only_query(request, MUTATION_QUERY)
        with self.state.lock:
            snap = self.state.snapshot(args[0], args[1])

        def work() -> None:
            self.state.delete_snapshot(self.state.snapshot(snap.volume_uuid, snap.uuid))

        return self._accepted(
            request,
            self.jobs.submit(
                f"DELETE /api/storage/volumes/{snap.volume_uuid}/snapshots/{snap.uuid}", work
            ),
        )

    # -- file clones ---------------------------------------------------------------------
    def clone_file(self, request: Request, args: list[str]) -> Response:
        _only_query(request, MUTATION_QUERY)
        body = _json_body(request)
        _only(body, CLONE_FIELDS)
        if body.get("range"):
            raise errors.invalid(
                "range", "Sub-file clones (range) are not supported by the emulator."
            )
        source = _opt_str(body, "source_path")
        destination = _opt_str(body, "destination_path")
        if not source:
            raise errors.missing("source_path")
        if not destination:
            raise errors.missing("destination_path")
        overwrite = _bool(body, "overwrite_destination")
        _bool(body, "is_backup")
        with self.state.lock:
            vol = self.state.volume_by_ref(body.get("volume"))
            self.state.check_clone(vol, source, destination, overwrite)

        def work() -> str:
            self.state.clone_file(self.state.volume(vol.uuid), source, destination, overwrite)
            return f'Clone of "{source}" to "{destination}" complete.'

        return self._accepted(request, self.jobs.submit("POST /api/storage/file/clone", work))

    # -- files -----------------------------------------------------------------------------
    def _file_path(self, args: list[str]) -> tuple[Volume, Path, str]:
        vol = self.state.volume(args[0])
        rel = "/".join(args[1:]) if len(args) > 1 else "."
        root = self.state.volume_path(vol)
        return vol, fsops.resolve_inside(root, rel), rel

    def _file_record(self, vol: Volume, path: Path, rel: str) -> dict[str, Any]:
        st = path.lstat()
        kind = (
            "directory"
            if stat.S_ISDIR(st.st_mode)
            else "symlink"
            if stat.S_ISLNK(st.st_mode)
            else "file"
        )

        def t(ts: float) -> str:
            from datetime import datetime

            return datetime.fromtimestamp(int(ts), UTC).isoformat()

        return {
            "volume": {"uuid": vol.uuid, "name": vol.name},
            "path": rel,
            "name": path.name if rel not in (".", "") else ".",
            "type": kind,
            "size": st.st_size,
            "bytes_used": st.st_blocks * 512,
            "unix_permissions": int(oct(st.st_mode & 0o7777)[2:]),
            "owner_id": st.st_uid,
            "group_id": st.st_gid,
            "inode_number": st.st_ino,
            "hard_links_count": st.st_nlink,
            "accessed_time": t(st.st_atime),
            "modified_time": t(st.st_mtime),
            "changed_time": t(st.st_ctime),
            "creation_time": t(st.st_ctime),
            "_links": {"self": {"href": f"/api/storage/volumes/{vol.uuid}/files/{rel}"}},
        }

    def get_files(self, request: Request, args: list[str]) -> Response:
        with self.state.lock:
            vol, path, rel = self._file_path(args)
            if not path.exists() and not path.is_symlink():
                raise OntapError(404, errors.FILE_NOT_FOUND, f'"{rel}" does not exist.', "path")
            meta_only = (request.query_one("return_metadata") or "").lower() == "true"
            if path.is_dir() and not meta_only:
                records = [self._file_record(vol, path, rel)]
                records[0]["name"] = "."
                records.append({**self._file_record(vol, path.parent, rel), "name": ".."})
                for entry in sorted(os.listdir(path)):
                    child = f"{rel}/{entry}" if rel not in (".", "") else entry
                    records.append(self._file_record(vol, path / entry, child))
            else:
                records = [self._file_record(vol, path, rel)]
        if "fields" not in request.query:
            # File records are small and FileInfo.get() expects them whole.
            request.query["fields"] = ["*"]
        return self._collection(
            request, records, ("path", "name", "type"), frozenset({"return_metadata"})
        )

    def create_file(self, request: Request, args: list[str]) -> Response:
        _only_query(request, MUTATION_QUERY)
        body = _json_body(request)
        _only(body, {"type", "unix_permissions", "path"})
        if len(args) == 1:  # netapp-ontap sends FileInfo(uuid, path=...) this way
            path_in_body = _opt_str(body, "path")
            if not path_in_body:
                raise errors.missing("path")
            args = [args[0], *[p for p in path_in_body.split("/") if p]]
        kind = body.get("type")
        perms = body.get("unix_permissions", 755 if kind == "directory" else 644)
        if isinstance(perms, str) and perms.isdigit():
            perms = int(perms)
        if kind not in ("directory", "file"):
            raise errors.invalid("type", '"type" must be "directory" or "file".')
        if isinstance(perms, bool) or not isinstance(perms, int):
            raise errors.invalid("unix_permissions", '"unix_permissions" must be an integer.')
        with self.state.lock:
            vol, path, rel = self._file_path(args)
            if path.exists():
                raise OntapError(409, errors.FILE_EXISTS, f'"{rel}" already exists.', "path")
            if not path.parent.is_dir():
                raise OntapError(
                    404, errors.FILE_NOT_FOUND, f'Directory of "{rel}" does not exist.', "path"
                )
            mode = int(str(perms), 8)
            if kind == "directory":
                path.mkdir(mode=mode)
            else:
                path.touch(mode=mode)
            os.chmod(path, mode)
            record = self._file_record(vol, path, rel)
        return Response.json(201, {"num_records": 1, "records": [record]})

    def delete_file(self, request: Request, args: list[str]) -> Response:
        _only_query(request, MUTATION_QUERY | {"recurse"})
        with self.state.lock:
            _, path, rel = self._file_path(args)
            if rel in (".", ""):
                raise errors.invalid("path", "The volume root cannot be deleted.")
            if not path.exists() and not path.is_symlink():
                raise OntapError(404, errors.FILE_NOT_FOUND, f'"{rel}" does not exist.', "path")
            if path.is_dir() and not path.is_symlink():
                if (request.query_one("recurse") or "").lower() == "true":
                    shutil.rmtree(path)
                elif any(path.iterdir()):
                    raise OntapError(
                        400, errors.DIRECTORY_NOT_EMPTY, f'Directory "{rel}" is not empty.', "path"
                    )
                else:
                    path.rmdir()
            else:
                path.unlink()
        return Response.json(200, {})

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


def _match(pattern: list[str], parts: list[str]) -> list[str] | None:
    """``*`` matches one segment, a final ``**`` one or more; returns the matched values."""
    args: list[str] = []
    for i, p in enumerate(pattern):
        if p == "**":
            if len(parts) <= i:
                return None
            return [*args, *parts[i:]]
        if i >= len(parts):
            return None
        if p == "*":
            args.append(parts[i])
        elif p != parts[i]:
            return None
    return args if len(parts) == len(pattern) else None
