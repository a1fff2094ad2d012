"""The error model is in the contract, and the code keeps to it.

- every ErrorInfo reason the host, the SDK and the vmsnap agents can return is a
  value of ``vmsnap.common.v1.ErrorReason`` (read from their source: every
  ``reason=`` and ``default_reason``), and the host and SDK name it through
  ``vmsnap_sdk.errors.Reason``, never as a loose string;
- each reason's comment in common.proto names the code(s) it comes with, and
  every place that raises it raises one of those;
- every RPC of every contract lists its errors (code, reason, when) in its
  comment, with real codes and reasons;
- ``vmsnap_sdk.errors.Reason`` is the proto enum, member for member.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.support.procs import ROOT
from vmsnap_sdk import errors as sdk_errors
from vmsnap_sdk._proto.common.v1 import common_pb2
from vmsnap_sdk.errors import Reason

PROTO = ROOT / "proto/vmsnap"
CONTRACTS = {
    "common": PROTO / "common/v1/common.proto",
    "driver": PROTO / "driver/v1/driver.proto",
    "hypervisor": PROTO / "hypervisor/v1/hypervisor.proto",
    "host": PROTO / "host/v1/host.proto",
}
#: Where reasons are made: the SDK and the host must use Reason; the vmsnap
#: agents may write the names as strings, which must still be enum values.
STRICT = [ROOT / "sdk/src/vmsnap_sdk", ROOT / "host/src/vmsnap_host"]
LENIENT = [ROOT / "agent/src/vmsnap_agent"]
#: Calls whose ``reason=`` is free text for people, not an ErrorInfo reason.
NOT_ERRORS = {"VolumeDecision"}
CODES = {c.name for c in grpc.StatusCode}
ENUM = set(common_pb2.ErrorReason.DESCRIPTOR.values_by_name) - {"ERROR_REASON_UNSPECIFIED"}


def _documented_codes() -> dict[str, set[str]]:
    """Each ErrorReason value → the codes its comment starts with (empty: any code)."""
    lines = CONTRACTS["common"].read_text().splitlines()
    body = lines[next(i for i, x in enumerate(lines) if x.startswith("enum ErrorReason")) :]
    out: dict[str, set[str]] = {}
    comment: list[str] = []
    for line in body:
        stripped = line.strip()
        if stripped.startswith("//"):
            comment.append(stripped[2:].strip())
            continue
        match = re.match(r"([A-Z][A-Z0-9_]*) = \d+;", stripped)
        if match and match.group(1) != "ERROR_REASON_UNSPECIFIED":
            # The value's own comment: the lines after a "-- group" heading.
            own = [c for c in comment if not c.startswith("--")]
            head = own[0] if own else ""
            assert ":" in head, f"{match.group(1)}: its comment must start with its code(s)"
            out[match.group(1)] = set(re.findall(r"[A-Z_]+", head.split(":")[0])) & CODES
        if stripped == "}":
            break
        if not stripped.startswith("//"):
            comment = []
    return out


DOCUMENTED = _documented_codes()


@dataclass(frozen=True)
class Site:
    path: Path
    line: int
    raiser: str  # the called name, or "default_reason of <class>"
    reason: str  # the enum name, or "" when not a constant (passed through)
    literal: bool  # written as a string, not through Reason


def _module_strings(tree: ast.Module) -> dict[str, str]:
    values: dict[str, str] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            values[node.targets[0].id] = node.value.value
    return values


def _values(expr: ast.expr, strings: dict[str, str]) -> Iterator[tuple[str, bool]]:
    """(reason, written as a literal) for every constant a reason expression can be;
    fails on reasons made at run time from strings (f-strings, concatenation)."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        yield expr.value, True
    elif isinstance(expr, ast.Attribute) and ast.unparse(expr.value) == "Reason":
        yield expr.attr, False
    elif isinstance(expr, ast.Name) and expr.id in strings:
        yield strings[expr.id], True
    elif isinstance(expr, ast.IfExp):
        yield from _values(expr.body, strings)
        yield from _values(expr.orelse, strings)
    elif isinstance(expr, ast.BoolOp):
        for value in expr.values:
            yield from _values(value, strings)
    elif isinstance(expr, ast.JoinedStr | ast.BinOp):
        raise AssertionError(f"a reason made at run time: {ast.unparse(expr)}")
    # Anything else passes a reason on (exc.reason, a parameter, kind.not_serving).


def _sites(roots: list[Path]) -> Iterator[Site]:
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if "_proto" in path.parts:
                continue
            tree = ast.parse(path.read_text())
            strings = _module_strings(tree)
            for node in ast.walk(tree):
                found: list[tuple[str, ast.expr]] = []
                if isinstance(node, ast.Call):
                    name = ast.unparse(node.func).split(".")[-1]
                    if name in NOT_ERRORS:
                        continue
                    found += [(name, kw.value) for kw in node.keywords if kw.arg == "reason"]
                if isinstance(node, ast.ClassDef):
                    for item in node.body:
                        target = (
                            item.targets[0]
                            if isinstance(item, ast.Assign)
                            else item.target
                            if isinstance(item, ast.AnnAssign)
                            else None
                        )
                        if (
                            isinstance(target, ast.Name)
                            and target.id == "default_reason"
                            and item.value is not None  # type: ignore[union-attr]
                        ):
                            found.append((f"default_reason of {node.name}", item.value))  # type: ignore[union-attr]
                for raiser, expr in found:
                    try:
                        values = list(_values(expr, strings))
                    except AssertionError as exc:
                        raise AssertionError(f"{path}:{node.lineno}: {exc}") from None
                    for reason, literal in values:
                        yield Site(path, node.lineno, raiser, reason, literal)


def test_reason_class_is_the_proto_enum() -> None:
    assert {m.name for m in Reason} == ENUM
    assert all(m.value == m.name for m in Reason)
    assert sdk_errors.VMSnapError("x").reason == "UNKNOWN"


def test_every_reason_in_the_code_is_an_enum_value() -> None:
    strict = list(_sites(STRICT))
    lenient = list(_sites(LENIENT))
    assert len(strict) > 50 and len(lenient) > 10, "the scan found too little: is it broken?"
    outside = [s for s in strict + lenient if s.reason not in ENUM]
    assert not outside, "\n".join(f"{s.path}:{s.line}: {s.reason!r}" for s in outside)
    loose = [s for s in strict if s.literal]
    assert not loose, "use vmsnap_sdk.errors.Reason:\n" + "\n".join(
        f"{s.path}:{s.line}: {s.reason!r}" for s in loose
    )


def _raised_code(raiser: str) -> str | None:
    cls = getattr(sdk_errors, raiser.removeprefix("default_reason of "), None)
    if isinstance(cls, type) and issubclass(cls, sdk_errors.VMSnapError):
        return str(cls.code.name)
    return None


def test_each_reason_is_raised_with_a_code_its_comment_names() -> None:
    assert set(DOCUMENTED) == ENUM
    wrong = []
    for site in _sites(STRICT + LENIENT):
        code = _raised_code(site.raiser)
        codes = DOCUMENTED.get(site.reason, set())
        if code is not None and codes and code not in codes:
            wrong.append(
                f"{site.path}:{site.line}: {site.reason} raised as {code}, documented {codes}"
            )
    assert not wrong, "\n".join(wrong)


@dataclass(frozen=True)
class Listed:
    service: str
    rpc: str
    code: str
    reason: str


def _rpcs(path: Path) -> Iterator[tuple[str, str, list[str]]]:
    """(service, rpc, its comment lines) for every RPC of a contract."""
    service = ""
    comment: list[str] = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("service "):
            service = stripped.split()[1]
        if stripped.startswith("//"):
            comment.append(stripped[2:])
            continue
        match = re.match(r"rpc (\w+)\(", stripped)
        if match:
            yield service, match.group(1), comment
        comment = []


def _listed(service: str, rpc: str, comment: list[str]) -> list[Listed]:
    starts = [
        i for i, c in enumerate(comment) if c.strip().startswith(("Errors", "Operation.error"))
    ]
    assert starts, f"{service}.{rpc}: its comment lists no errors (an 'Errors:' block)"
    if comment[starts[0]].strip() == "Errors: only those every RPC can end with.":
        return []
    out = []
    for c in comment[starts[0] + 1 :]:
        # Listed errors are indented 3 spaces, their continuation lines far more;
        # anything else is prose or a heading.
        if not c.startswith("   ") or c.startswith(" " * 10):
            continue
        words = c.split()
        assert words[0] in CODES, f"{service}.{rpc}: {words[0]!r} is no gRPC code: {c!r}"
        assert len(words) >= 3, f"{service}.{rpc}: code, reason and when on one line: {c!r}"
        out.append(Listed(service, rpc, words[0], words[1]))
    assert out, f"{service}.{rpc}: the Errors block lists nothing"
    return out


def test_every_rpc_lists_its_codes_and_reasons() -> None:
    listed: list[Listed] = []
    rpcs = 0
    for name in ("driver", "hypervisor", "host"):
        for service, rpc, comment in _rpcs(CONTRACTS[name]):
            rpcs += 1
            listed += _listed(service, rpc, comment)
    assert rpcs >= 45
    for item in listed:
        where = f"{item.service}.{item.rpc}: {item.code} {item.reason}"
        assert item.reason == "-" or item.reason in ENUM, f"{where}: no such ErrorReason"
        codes = DOCUMENTED.get(item.reason, set())
        if item.reason != "-" and codes:
            assert item.code in codes, f"{where}: the reason's comment names {codes}"


def test_the_host_lists_what_its_code_raises() -> None:
    """Each reason the host raises appears in host.proto (an RPC or operation lists it)."""
    text = CONTRACTS["host"].read_text()
    raised = {s.reason for s in _sites([ROOT / "host/src/vmsnap_host"])}
    # Generic ones are covered by "every RPC can end with"; the contract
    # violations and restarts by the operation lists.
    missing = sorted(r for r in raised if not re.search(rf"\b{r}\b", text))
    assert not missing, f"host.proto never names: {missing}"


def test_every_other_enum_keeps_its_value_prefix() -> None:
    """buf's ENUM_VALUE_PREFIX is off for common.proto only because of ErrorReason."""
    for path in CONTRACTS.values():
        enum_name = ""
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("enum "):
                enum_name = stripped.split()[1]
                prefix = re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", enum_name).upper() + "_"
                prefix = prefix.replace("V_M", "VM")
            match = re.match(r"([A-Z][A-Z0-9_]*) = \d+;", stripped)
            if match and enum_name and enum_name != "ErrorReason":
                assert match.group(1).startswith(prefix), (path.name, enum_name, match.group(1))


@pytest.mark.parametrize("name", sorted(ENUM))
def test_reason_names_fit_error_info(name: str) -> None:
    # AIP-193: UPPER_SNAKE_CASE, at most 63 chars (vmsnap_sdk.limits.MAX_ERROR_REASON).
    assert re.fullmatch(r"[A-Z][A-Z0-9_]{0,61}[A-Z0-9]", name)
