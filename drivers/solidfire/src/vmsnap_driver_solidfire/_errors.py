"""The one place where Element errors become vmsnap errors.

What the vendor client raises, and what it becomes::

    solidfire.common.ApiServerError      the cluster answered with an error object
        xVolumeIDDoesNotExist, x...IDDoesNotExist   → NotFound
        xMaxSnapshotsPerVolumeExceeded, x...Full    → ResourceExhausted
        xUnknownAPIMethod / xUnknownAPIVersion      → FailedPrecondition (cluster too old)
        no error object (timeout, broken reply)     → Unknown: the call may have run
        anything else                               → Internal, with the cluster's words
    solidfire.common.ApiConnectionError
        "Bad Credentials" (HTTP 401)                → FailedPrecondition: check credentials
        refused, unreachable, TLS failure           → Unavailable
    requests exceptions, OSError                    → Unavailable (before the call ran) or
                                                      Unknown (a read timeout: it may have run)
    solidfire.common.SdkOperationError              → FailedPrecondition (configuration)

Messages name the cluster by URL and quote the cluster's error name and message;
they never carry the password (a last scrub removes it should a vendor message
ever echo it).
"""

from __future__ import annotations

import requests
from solidfire.common import ApiConnectionError, ApiServerError, SdkOperationError

from vmsnap_sdk.errors import (
    FailedPrecondition,
    Internal,
    NotFound,
    ResourceExhausted,
    Unavailable,
    Unknown,
    VMSnapError,
)

NOT_FOUND_NAMES = frozenset(
    {
        "xVolumeIDDoesNotExist",
        "xVolumeDoesNotExist",
        "xSnapshotIDDoesNotExist",
        "xGroupSnapshotIDDoesNotExist",
        "xAccountIDDoesNotExist",
        "xAccountDoesNotExist",
    }
)
EXHAUSTED_NAMES = frozenset(
    {
        "xMaxSnapshotsPerVolumeExceeded",
        "xMaxSnapshotsPerNodeExceeded",
        "xMaxGroupSnapshotsExceeded",
        "xExceededLimit",
        "xSliceFull",
        "xClusterFull",
        "xInsufficientSpace",
    }
)
UNSUPPORTED_NAMES = frozenset({"xUnknownAPIMethod", "xUnknownAPIVersion"})
BUSY_NAMES = frozenset({"xNotPrimary", "xDBConnectionLoss", "xServiceUnavailable"})


def translate(exc: BaseException, *, url: str, action: str, secret: str) -> VMSnapError:
    """The vmsnap error for an exception raised by the Element client during ``action``."""
    error = _translate(exc, url=url, action=action)
    if secret and secret in error.message:
        error.message = error.message.replace(secret, "***")
        error.args = (error.message,)
    return error


def _translate(exc: BaseException, *, url: str, action: str) -> VMSnapError:
    if isinstance(exc, VMSnapError):
        return exc
    if isinstance(exc, ApiServerError):
        name = exc.error_name
        message = exc.message or ""
        said = f"{action}: the Element cluster at {url} answered {name}: {message}"
        if name in NOT_FOUND_NAMES:
            return NotFound(said, reason="ELEMENT_" + name)
        if name in EXHAUSTED_NAMES:
            return ResourceExhausted(said, reason="ELEMENT_" + name)
        if name in UNSUPPORTED_NAMES:
            return FailedPrecondition(
                f"{said} (the cluster runs an Element version this driver does not support)",
                reason="ELEMENT_UNSUPPORTED",
            )
        if name in BUSY_NAMES:
            return Unavailable(said, reason="ELEMENT_BUSY", retry_delay=2.0)
        if name == "Unknown":
            # The client wraps a read timeout or an unreadable reply this way: the
            # cluster may have done the work. The host retries the idempotent call.
            cause = exc.__context__
            kind = type(cause).__name__ if cause is not None else "no error object"
            return Unknown(
                f"{action}: no usable answer from the Element cluster at {url} ({kind}); "
                "the operation may have been carried out",
                reason="ELEMENT_NO_ANSWER",
            )
        return Internal(said, reason="ELEMENT_ERROR")
    if isinstance(exc, ApiConnectionError):
        if "Bad Credentials" in str(exc):
            return FailedPrecondition(
                f"{action}: the Element cluster at {url} refused the credentials (HTTP 401); "
                "check the user and the password file configured for the driver",
                reason="ELEMENT_UNAUTHENTICATED",
            )
        return Unavailable(_unreachable(exc, url, action), reason="ELEMENT_UNREACHABLE")
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return Unknown(
            f"{action}: the Element cluster at {url} did not answer in time; "
            "the operation may have been carried out",
            reason="ELEMENT_TIMEOUT",
        )
    if isinstance(exc, requests.RequestException | OSError):
        return Unavailable(_unreachable(exc, url, action), reason="ELEMENT_UNREACHABLE")
    if isinstance(exc, SdkOperationError):
        return FailedPrecondition(
            f"{action}: the Element client refused the configuration for {url}: "
            f"{exc.args[0] if exc.args else type(exc).__name__}",
            reason="ELEMENT_CONFIGURATION",
        )
    return Internal(f"{action}: unexpected {type(exc).__name__} from the Element client")


def _unreachable(exc: BaseException, url: str, action: str) -> str:
    text = str(exc)
    if "SSL" in text or "CERTIFICATE" in text.upper():
        return (
            f"{action}: TLS to the Element cluster at {url} failed; check the CA file "
            "(or, on a test array only, --insecure-skip-tls-verify)"
        )
    return f"{action}: cannot reach the Element cluster at {url}"
