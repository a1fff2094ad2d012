"""Shared plumbing of the ONTAP routes: body checks, job answers, collection queries."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..httpserver import Request, Response
from . import errors, query
from .errors import OntapError
from .jobs import JobRunner
from .state import Job, OntapState

MUTATION_QUERY = {"return_timeout", "return_records"}

Handler = Callable[[Request, list[str]], Response]
Route = tuple[str, str, Handler]


def json_body(request: Request, *, required: bool = True) -> dict[str, Any]:
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


def only(body: dict[str, Any], allowed: set[str]) -> None:
    for name in body:
        if name not in allowed:
            raise errors.unexpected(name)


def only_query(request: Request, allowed: set[str]) -> None:
    for name in request.query:
        if name not in allowed:
            raise errors.unexpected(name)


def opt_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise errors.invalid(name, f'"{name}" must be a string.')
    return value


def bool_field(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise errors.invalid(name, f'"{name}" must be a boolean.')
    return value


class Responder:
    """What every route needs: the state, the job runner and ONTAP's answer shapes."""

    def __init__(self, state: OntapState, jobs: JobRunner) -> None:
        self.state = state
        self.jobs = jobs

    def accepted(
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

    def collection(
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

    def single(
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


def match(pattern: list[str], parts: list[str]) -> list[str] | None:
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
