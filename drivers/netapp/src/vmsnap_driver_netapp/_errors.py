"""The one place where ONTAP errors become vmsnap errors.

``netapp-ontap`` raises ``NetAppRestError`` for everything; what it carries
decides the code::

    HTTP 401                               → FailedPrecondition: check credentials
    HTTP 403                               → FailedPrecondition: the user lacks a role
    HTTP 404 (entry or file does not exist) → NotFound
    HTTP 409 (file exists, object busy)    → Aborted: another operation is in the way
    HTTP 4xx naming space or a limit       → ResourceExhausted
    other HTTP 4xx                         → Internal, with ONTAP's message (a driver bug)
    HTTP 5xx                               → Unavailable
    no HTTP status, caused by
        a read timeout / a job poll timeout → Unknown: the work may still run
        a connection or TLS failure        → Unavailable
    a job that failed                      → by its ONTAP code, else Internal

Messages name the cluster by URL and quote ONTAP's error message and code; they
never carry the password (a last scrub removes it should a message echo it).
"""

from __future__ import annotations

import re
from typing import Any

import requests
from netapp_ontap.error import NetAppRestError

from vmsnap_sdk.errors import (
    Aborted,
    FailedPrecondition,
    Internal,
    NotFound,
    ResourceExhausted,
    Unavailable,
    Unknown,
    VMSnapError,
)

#: ONTAP error codes meaning "no space" or "a limit is reached" (volume full,
#: maximum file clones, maximum snapshots per volume).
EXHAUSTED_CODES = frozenset({"13", "917927", "1638518", "13107406", "524436"})
_EXHAUSTED_TEXT = re.compile(r"(not enough|no) space|out of space|limit|maximum", re.IGNORECASE)


def translate(exc: BaseException, *, url: str, action: str, secret: str) -> VMSnapError:
    """The vmsnap error for an exception raised by netapp-ontap during ``action``."""
    error = _translate(exc, url=url, action=action)
    if secret and secret in error.message:
        error.message = error.message.replace(secret, "***")
        error.args = (error.message,)
    return error


def _body_error(exc: NetAppRestError) -> tuple[str, str]:
    body: Any = exc.response_body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", "")), str(body["error"].get("code", ""))
    return "", ""


def _translate(exc: BaseException, *, url: str, action: str) -> VMSnapError:
    if isinstance(exc, VMSnapError):
        return exc
    if isinstance(exc, NetAppRestError):
        status = exc.status_code
        message, code = _body_error(exc)
        said = f"{action}: ONTAP at {url} answered HTTP {status}: {message} (code {code})"
        if status == 401:
            return FailedPrecondition(
                f"{action}: ONTAP at {url} refused the credentials (HTTP 401); "
                "check the user and the password file configured for the driver",
                reason="ONTAP_UNAUTHENTICATED",
            )
        if status == 403:
            return FailedPrecondition(
                f"{said}; the driver's user needs a role that allows it", reason="ONTAP_FORBIDDEN"
            )
        if status == 404:
            return NotFound(said, reason="ONTAP_NOT_FOUND")
        if status is not None and 400 <= status < 500:
            if code in EXHAUSTED_CODES or status == 507 or _EXHAUSTED_TEXT.search(message):
                return ResourceExhausted(said, reason="ONTAP_EXHAUSTED")
            if status == 409:
                return Aborted(said, reason="ONTAP_CONFLICT", retry_delay=1.0)
            return Internal(said, reason="ONTAP_REJECTED")
        if status is not None and status >= 500:
            return Unavailable(said, reason="ONTAP_SERVER_ERROR", retry_delay=2.0)
        return _without_status(exc, url, action)
    if isinstance(exc, requests.RequestException | OSError):
        return _transport(exc, url, action)
    return Internal(f"{action}: unexpected {type(exc).__name__} from the ONTAP client")


def _without_status(exc: NetAppRestError, url: str, action: str) -> VMSnapError:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, requests.RequestException | OSError):
        return _transport(cause, url, action)
    text = str(exc)
    if "Job failed" in text or "job" in text.lower():
        # A job that ran and failed, or one still running when polling gave up.
        if "timed out" in text.lower() or "timeout" in text.lower():
            return Unknown(
                f"{action}: an ONTAP job at {url} was still running when the driver stopped "
                "waiting; the operation may complete",
                reason="ONTAP_JOB_TIMEOUT",
            )
        if _EXHAUSTED_TEXT.search(text):
            return ResourceExhausted(f"{action}: ONTAP job failed at {url}: {text}")
        return Internal(f"{action}: ONTAP job failed at {url}: {text}", reason="ONTAP_JOB_FAILED")
    return Internal(f"{action}: the ONTAP client failed for {url}: {type(exc).__name__}")


def _transport(exc: BaseException, url: str, action: str) -> VMSnapError:
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return Unknown(
            f"{action}: ONTAP at {url} did not answer in time; the operation may have run",
            reason="ONTAP_TIMEOUT",
        )
    if isinstance(exc, requests.exceptions.SSLError):
        return Unavailable(
            f"{action}: TLS to ONTAP at {url} failed; check the CA file "
            "(or, on a test array only, --insecure-skip-tls-verify)",
            reason="ONTAP_TLS",
        )
    return Unavailable(f"{action}: cannot reach ONTAP at {url}", reason="ONTAP_UNREACHABLE")
