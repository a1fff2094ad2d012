"""The rules a caller must know are stated on the fields, and say what the code checks.

A client generated from proto/ alone sees only the comments: the id and disk
patterns there are the ones the SDK validates, every field the host's API
requires says so, request_id reuse is stated on every mutating request, and
WaitOperation's timeout says how it relates to the call's deadline.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.support.procs import ROOT
from vmsnap_sdk import _validate as val

PROTO = ROOT / "proto/vmsnap"
HOST = PROTO / "host/v1/host.proto"
COMMON = PROTO / "common/v1/common.proto"
SERVICER = ROOT / "host/src/vmsnap_host/api/servicer.py"


def _fields(path: Path) -> dict[tuple[str, str], str]:
    """(message, field) → the field's comment, for every message of a file."""
    text = path.read_text()
    out: dict[tuple[str, str], str] = {}
    message = ""
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("message "):
            message = stripped.split()[1]
        if stripped.startswith("//"):
            comment.append(stripped[2:].strip())
            continue
        match = re.match(r"(?:repeated |map<[^>]+> )?[\w.]+ (\w+) = \d+;", stripped)
        if match and message:
            out[(message, match.group(1))] = " ".join(comment)
        comment = []
    return out


HOST_FIELDS = _fields(HOST)
COMMON_FIELDS = _fields(COMMON)
ID_RULE = "1..128 chars of [A-Za-z0-9._-], starting with a letter or digit"


def test_the_patterns_in_the_contract_are_the_sdks() -> None:
    assert val.ID_PATTERN.pattern == r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
    assert val.DISK_PATTERN.pattern in COMMON_FIELDS[("Volume", "disk")]
    assert ID_RULE in COMMON_FIELDS[("VM", "id")]
    assert "1..1024 chars" in COMMON_FIELDS[("Volume", "locator")]
    assert ID_RULE in HOST.read_text()


def _validated_by_the_servicer() -> dict[str, set[str]]:
    """RPC → request fields the servicer requires (require_id / require_text)."""
    tree = ast.parse(SERVICER.read_text())
    out: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncFunctionDef) and node.name[0].isupper():
            required = set()
            for call in ast.walk(node):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr in ("require_id", "require_text")
                    and isinstance(call.args[0], ast.Constant)
                    and not any(
                        k.arg == "required"
                        and isinstance(k.value, ast.Constant)
                        and not k.value.value
                        for k in call.keywords
                    )
                ):
                    required.add(str(call.args[0].value).split(".")[0])
            # `if request.vm_id: require_id("vm_id", ...)`: checked only when given.
            optional = {
                test.attr
                for branch in ast.walk(node)
                if isinstance(branch, ast.If) and isinstance(test := branch.test, ast.Attribute)
            }
            out[node.name] = required - optional
    return out


def test_every_field_the_host_requires_says_required() -> None:
    validated = _validated_by_the_servicer()
    assert validated["CreateVMSnapshot"] >= {"request_id", "vm_id", "name"}
    missing = []
    for rpc, fields in validated.items():
        for field in fields:
            comment = HOST_FIELDS.get((f"{rpc}Request", field))
            if comment is None:
                continue  # a nested field (vm.id): stated on vmsnap.common.v1.VM
            if not comment.startswith("Required"):
                missing.append(f"{rpc}Request.{field}: {comment!r}")
    assert not missing, "\n".join(missing)


def test_request_id_reuse_is_stated_on_every_mutating_request() -> None:
    for message in (
        "CreateVMSnapshotRequest",
        "RevertVMSnapshotRequest",
        "DeleteVMSnapshotRequest",
    ):
        comment = HOST_FIELDS[(message, "request_id")]
        assert comment.startswith("Required"), message
        assert "Retries" in comment and "REQUEST_ID_REUSED" in comment, message
        assert ID_RULE in comment, message


def test_wait_operation_says_how_its_timeout_meets_the_deadline() -> None:
    comment = HOST_FIELDS[("WaitOperationRequest", "timeout")]
    assert "0 .. 600 s" in comment and "unset = 30 s" in comment
    assert "deadline longer than" in comment


def test_every_request_field_of_the_host_has_a_comment() -> None:
    bare = [f"{m}.{f}" for (m, f), c in HOST_FIELDS.items() if m.endswith("Request") and not c]
    assert not bare, bare
