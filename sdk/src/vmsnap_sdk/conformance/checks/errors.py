"""errors: codes as in DESIGN.md, with google.rpc.Status details the host can act on.

ErrorInfo (domain "vmsnap.io", a reason) on every error the driver raises;
BadRequest naming the field on INVALID_ARGUMENT; the details' code and the
status code agree; messages say what is wrong and leak no internals.
"""

from __future__ import annotations

from vmsnap_sdk._errors import DOMAIN
from vmsnap_sdk.conformance._expect import expect, expect_code, fail
from vmsnap_sdk.conformance._registry import check
from vmsnap_sdk.conformance._rpc import RpcFailure
from vmsnap_sdk.conformance._session import Session
from vmsnap_sdk.conformance.checks._common import (
    ALREADY_EXISTS,
    INVALID,
    missing_volume,
    own_or_foreign,
)

LEAKS = ("Traceback", 'File "', "Exception calling application", "Exception iterating")


async def invalid_failure(s: Session) -> RpcFailure:
    failure = await expect_code(
        s.take("", await own_or_foreign(s)), INVALID, what="take without an id"
    )
    assert failure is not None
    return failure


async def not_found_failure(s: Session) -> RpcFailure:
    volume, codes, what = await missing_volume(s)
    failure = await expect_code(s.take(s.new_id(), [volume]), *codes, what=what)
    assert failure is not None
    return failure


def require_error_info(failure: RpcFailure) -> None:
    if failure.details is None:
        fail(
            f"google.rpc.Status details with ErrorInfo on {failure.code.name}",
            failure.details_error or "no grpc-status-details-bin trailer",
        )
    infos = failure.details.error_infos
    expect(
        any(domain == DOMAIN and reason for domain, reason in infos),
        f"ErrorInfo with domain {DOMAIN!r} and a reason on {failure.code.name}",
        list(infos) or "no ErrorInfo",
    )


@check(
    "errors.invalid_argument_error_info",
    "INVALID_ARGUMENT carries ErrorInfo (domain vmsnap.io, a reason)",
)
async def invalid_error_info(s: Session) -> None:
    require_error_info(await invalid_failure(s))


@check("errors.bad_request_names_field", "INVALID_ARGUMENT carries BadRequest naming the bad field")
async def bad_request(s: Session) -> None:
    failure = await invalid_failure(s)
    violations = failure.details.field_violations if failure.details else ()
    expect(
        any("vm_snapshot_id" in field for field, _ in violations),
        "a BadRequest field violation for vm_snapshot_id",
        list(violations) or "no BadRequest",
    )
    request = s.take_request(s.new_id(), await own_or_foreign(s))
    request.volumes[0].disk = "BAD DISK"
    second = await expect_code(s.take_raw(request), INVALID, what="take with disk 'BAD DISK'")
    violations = second.details.field_violations if second and second.details else ()
    expect(
        any(field.startswith("volumes") for field, _ in violations),
        "a BadRequest field violation for volumes[0].disk",
        list(violations) or "no BadRequest",
    )


@check("errors.not_found_error_info", "NOT_FOUND carries ErrorInfo (domain vmsnap.io, a reason)")
async def not_found_error_info(s: Session) -> None:
    require_error_info(await not_found_failure(s))


@check(
    "errors.already_exists_error_info",
    "ALREADY_EXISTS carries ErrorInfo (domain vmsnap.io, a reason)",
)
async def already_exists_error_info(s: Session) -> None:
    volumes = await s.volumes(2)
    snapshot_id = s.new_id()
    await s.take(snapshot_id, volumes[:1])
    failure = await expect_code(
        s.take(snapshot_id, volumes), ALREADY_EXISTS, what="the same id with other volumes"
    )
    assert failure is not None
    require_error_info(failure)


@check(
    "errors.details_match_status", "The details' google.rpc.Status has the same code as the call"
)
async def details_match(s: Session) -> None:
    for failure in (await invalid_failure(s), await not_found_failure(s)):
        if failure.details is None:
            fail("google.rpc.Status details", failure.details_error or "none")
        expect(
            failure.details.code == failure.code.value[0],
            f"details code {failure.code.value[0]} ({failure.code.name})",
            failure.details.code,
        )


@check("errors.messages_helpful", "Error messages are present and leak no tracebacks or internals")
async def messages(s: Session) -> None:
    for failure in (await invalid_failure(s), await not_found_failure(s)):
        expect(bool(failure.message.strip()), f"a message on {failure.code.name}", "empty")
        leaked = [marker for marker in LEAKS if marker in failure.message]
        expect(not leaked, "no traceback in the message", failure.message[:200])
