"""Collection queries as ONTAP implements them.

* ``fields=a,b.c`` projects records (``*``/``**``: everything); an unknown field is HTTP 400
  ``262197``. Key fields (``uuid``, ``name``) and ``_links`` always come back.
* Any other query parameter naming a record field filters: ``*`` wildcards, ``a|b``
  alternatives, ``!x`` negation, and ``<``/``>``/``<=``/``>=`` on numbers.
* ``max_records`` pages with a ``_links.next.href`` carrying ``start.uuid``;
  ``return_records=false`` returns only ``num_records``; ``order_by=field [asc|desc]``.
"""

from __future__ import annotations

import fnmatch
import urllib.parse
from collections.abc import Iterable
from typing import Any

from . import errors
from .errors import OntapError

# Query parameters that are not filters.
CONTROL = {
    "fields",
    "max_records",
    "return_records",
    "return_timeout",
    "order_by",
    "start.uuid",
    "ignore_unknown_fields",
}
MISSING = object()


def lookup(record: dict[str, Any], path: str) -> Any:
    cur: Any = record
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return MISSING
        cur = cur[part]
    return cur


def _known(record_fields: set[str], path: str) -> bool:
    return any(
        f == path or f.startswith(path + ".") or path.startswith(f + ".") for f in record_fields
    )


def field_paths(record: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in record.items():
        p = f"{prefix}{k}"
        out.add(p)
        if isinstance(v, dict):
            out |= field_paths(v, p + ".")
    return out


def project(record: dict[str, Any], fields: str | None, keys: Iterable[str]) -> dict[str, Any]:
    if fields is None:
        wanted = list(keys)
    else:
        wanted = [f for f in fields.split(",") if f]
        if "*" in wanted or "**" in wanted:
            return record
        wanted += list(keys)
    out: dict[str, Any] = {}
    for path in wanted:
        value = lookup(record, path)
        if value is MISSING:
            continue
        cur = out
        parts = path.split(".")
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = value
    if "_links" in record:
        out["_links"] = record["_links"]
    return out


def _match_one(value: Any, pattern: str) -> bool:
    if pattern.startswith("!"):
        return not _match_one(value, pattern[1:])
    for op in ("<=", ">=", "<", ">"):
        if pattern.startswith(op) and isinstance(value, int | float):
            try:
                bound = float(pattern[len(op) :])
            except ValueError:
                return False
            return {
                "<=": value <= bound,
                ">=": value >= bound,
                "<": value < bound,
                ">": value > bound,
            }[op]
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return fnmatch.fnmatchcase(text, pattern)


def matches(record: dict[str, Any], filters: dict[str, str]) -> bool:
    for path, pattern in filters.items():
        value = lookup(record, path)
        if value is MISSING:
            return False
        if not any(_match_one(value, alt) for alt in pattern.split("|")):
            return False
    return True


def split_query(
    query: dict[str, list[str]], known_fields: set[str], allowed_extra: set[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """(control params, filters); unknown names are 400 ``Unexpected argument``."""
    control: dict[str, str] = {}
    filters: dict[str, str] = {}
    for name, values in query.items():
        value = values[-1]
        if name in CONTROL or name in allowed_extra:
            control[name] = value
        elif _known(known_fields, name):
            filters[name] = value
        else:
            raise errors.unexpected(name)
    fields = control.get("fields")
    if fields:
        for f in fields.split(","):
            if f and f not in ("*", "**") and not _known(known_fields, f):
                raise OntapError(
                    400,
                    errors.INVALID_FIELD_VALUE,
                    f'The value "{f}" is invalid for field "fields"',
                    "fields",
                )
    return control, filters


def _int_param(control: dict[str, str], name: str) -> int | None:
    if name not in control:
        return None
    try:
        value = int(control[name])
    except ValueError:
        raise errors.invalid(name, f'Invalid value for "{name}".') from None
    if value < 0:
        raise errors.invalid(name, f'Invalid value for "{name}".')
    return value


def collection(
    path: str,
    records: list[dict[str, Any]],
    query: dict[str, list[str]],
    keys: tuple[str, ...],
    known_fields: set[str],
    allowed_extra: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Filter, order, page and project ``records`` (full records with ``uuid``)."""
    control, filters = split_query(query, known_fields, set(allowed_extra))
    selected = [r for r in records if matches(r, filters)]
    order = control.get("order_by")
    if order:
        field, _, direction = order.partition(" ")
        selected.sort(key=lambda r: str(lookup(r, field)), reverse=direction == "desc")
    else:
        selected.sort(key=lambda r: str(r.get("uuid", "")))
    start = control.get("start.uuid")
    if start:
        idx = next((i for i, r in enumerate(selected) if r.get("uuid") == start), len(selected))
        selected = selected[idx:]
    max_records = _int_param(control, "max_records")
    body: dict[str, Any] = {}
    page = selected
    if max_records is not None and len(selected) > max_records:
        page = selected[:max_records]
        nxt = {k: v[-1] for k, v in query.items()}
        nxt["start.uuid"] = str(selected[max_records].get("uuid"))
        body["_links"] = {"next": {"href": f"{path}?{urllib.parse.urlencode(nxt)}"}}
    if control.get("return_records", "true").lower() == "false":
        body["num_records"] = len(selected)
        return body
    body["records"] = [project(r, control.get("fields"), keys) for r in page]
    body["num_records"] = len(page)
    body.setdefault("_links", {})["self"] = {"href": path}
    return body
