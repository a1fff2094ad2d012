"""ONTAP file routes: file clones and ``/api/storage/volumes/{uuid}/files/{path}``."""

from __future__ import annotations

import os
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..httpserver import Request, Response
from . import errors, filedata, fsops
from .errors import OntapError
from .responder import (
    MUTATION_QUERY,
    Responder,
    Route,
    bool_field,
    json_body,
    only,
    only_query,
    opt_str,
)
from .state import Volume

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


class FileRoutes:
    def __init__(self, r: Responder) -> None:
        self.r = r
        self.state = r.state
        self.jobs = r.jobs

    def routes(self) -> list[Route]:
        return [
            ("POST", "api/storage/file/clone", self.clone_file),
            ("GET", "api/storage/volumes/*/files", self.get_files),  # the volume root
            ("GET", "api/storage/volumes/*/files/**", self.get_files),
            ("POST", "api/storage/volumes/*/files", self.create_file),  # path in the body
            ("POST", "api/storage/volumes/*/files/**", self.create_file),
            ("PATCH", "api/storage/volumes/*/files/**", self.patch_file),
            ("DELETE", "api/storage/volumes/*/files/**", self.delete_file),
        ]

    # -- file clones ---------------------------------------------------------------------
    def clone_file(self, request: Request, args: list[str]) -> Response:
        only_query(request, MUTATION_QUERY)
        body = json_body(request)
        only(body, CLONE_FIELDS)
        if body.get("range"):
            raise errors.invalid(
                "range", "Sub-file clones (range) are not supported by the emulator."
            )
        source = opt_str(body, "source_path")
        destination = opt_str(body, "destination_path")
        if not source:
            raise errors.missing("source_path")
        if not destination:
            raise errors.missing("destination_path")
        overwrite = bool_field(body, "overwrite_destination")
        bool_field(body, "is_backup")
        with self.state.lock:
            vol = self.state.volume_by_ref(body.get("volume"))
            self.state.check_clone(vol, source, destination, overwrite)

        def work() -> str:
            self.state.clone_file(self.state.volume(vol.uuid), source, destination, overwrite)
            return f'Clone of "{source}" to "{destination}" complete.'

        return self.r.accepted(request, self.jobs.submit("POST /api/storage/file/clone", work))

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
        if filedata.is_multipart(request.headers.get("accept")):
            return self._read_file(request, args)
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
        return self.r.collection(
            request, records, ("path", "name", "type"), frozenset({"return_metadata"})
        )

    def create_file(self, request: Request, args: list[str]) -> Response:
        if filedata.is_multipart(request.headers.get("content-type")):
            return self._write_file(request, args, create=True)
        only_query(request, MUTATION_QUERY)
        body = json_body(request)
        only(body, {"type", "unix_permissions", "path"})
        if len(args) == 1:  # netapp-ontap sends FileInfo(uuid, path=...) this way
            path_in_body = opt_str(body, "path")
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
        only_query(request, MUTATION_QUERY | {"recurse"})
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

    # -- file contents (multipart/form-data) -------------------------------------------
    def _int_query(self, request: Request, name: str, default: int | None) -> int:
        raw = request.query_one(name)
        if raw is None:
            if default is None:
                raise errors.missing(name)
            return default
        try:
            return int(raw)
        except ValueError:
            raise errors.invalid(name, f'Invalid value for "{name}".') from None

    def _read_file(self, request: Request, args: list[str]) -> Response:
        only_query(request, {"byte_offset", "length"})
        offset = self._int_query(request, "byte_offset", 0)
        length = self._int_query(request, "length", None)
        if offset < 0 or length < 0:
            raise errors.invalid("byte_offset", "byte_offset and length must not be negative.")
        with self.state.lock:
            _, path, rel = self._file_path(args)
            if not path.is_file():
                raise OntapError(404, errors.FILE_NOT_FOUND, f'"{rel}" is not a file.', "path")
            data = filedata.read_range(path, offset, length)
        body, content_type = filedata.encode_form(
            [("bytes_read", str(len(data)).encode()), ("data", data)]
        )
        return Response(200, body, content_type)

    def _write_file(self, request: Request, args: list[str], *, create: bool) -> Response:
        allowed = {"byte_offset", "overwrite"} if create else {"byte_offset"}
        only_query(request, allowed | MUTATION_QUERY)
        content_type = request.headers.get("content-type", "")
        data = filedata.data_field(filedata.parse_form(content_type, request.body))
        offset = self._int_query(request, "byte_offset", 0 if create else None)
        overwrite = (request.query_one("overwrite") or "").lower() == "true"
        with self.state.lock:
            _, path, rel = self._file_path(args)
            if create:
                if path.exists() and not overwrite:
                    raise OntapError(409, errors.FILE_EXISTS, f'"{rel}" already exists.', "path")
                if not path.parent.is_dir():
                    raise OntapError(
                        404, errors.FILE_NOT_FOUND, f'Directory of "{rel}" does not exist.', "path"
                    )
            elif not path.is_file():
                raise OntapError(404, errors.FILE_NOT_FOUND, f'"{rel}" is not a file.', "path")
            written = filedata.write_at(path, offset, data, truncate=create)
        records = [{"path": rel, "bytes_written": written}]
        return Response.json(201 if create else 200, {"num_records": 1, "records": records})

    def patch_file(self, request: Request, args: list[str]) -> Response:
        if not filedata.is_multipart(request.headers.get("content-type")):
            raise errors.invalid(
                "data", "Only file contents (multipart/form-data) can be patched here."
            )
        return self._write_file(request, args, create=False)
