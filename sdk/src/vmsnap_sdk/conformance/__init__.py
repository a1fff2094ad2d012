"""The vmsnap driver conformance suite: checks a vendor runs against their driver.

Three ways in, one library underneath:

- the CLI ``vmsnap-conformance ENDPOINT`` (:mod:`vmsnap_sdk.conformance.cli`);
- the pytest plugin (``--vmsnap-endpoint``; :mod:`vmsnap_sdk.conformance.pytest_plugin`);
- :func:`run_suite` from Python, returning a :class:`Report`.

Every check has an id, a category and one line saying what the host relies
on (:func:`all_checks`). A check passes, fails saying what was expected and
what came back, or is skipped naming the capability that is missing.
"""

from vmsnap_sdk.conformance._expect import CheckFailed, CheckSkipped, expect, expect_code, expect_ok
from vmsnap_sdk.conformance._registry import CATEGORIES, Check, all_checks, check, select
from vmsnap_sdk.conformance._report import to_json, to_junit, to_text
from vmsnap_sdk.conformance._resources import Resources
from vmsnap_sdk.conformance._rpc import RpcFailure, StatusDetails
from vmsnap_sdk.conformance._runner import CheckResult, Report, run_check, run_suite
from vmsnap_sdk.conformance._session import Connection, Params, Session

__all__ = [
    "CATEGORIES",
    "Check",
    "CheckFailed",
    "CheckResult",
    "CheckSkipped",
    "Connection",
    "Params",
    "Report",
    "Resources",
    "RpcFailure",
    "Session",
    "StatusDetails",
    "all_checks",
    "check",
    "expect",
    "expect_code",
    "expect_ok",
    "run_check",
    "run_suite",
    "select",
    "to_json",
    "to_junit",
    "to_text",
]
