"""pytest plugin: the conformance checks as tests in a vendor's own test run.

Loaded through the ``pytest11`` entry point of vmsnap-sdk; inert unless a test
asks for ``vmsnap_check`` or ``vmsnap_report``. Options::

    --vmsnap-endpoint ADDRESS   the driver to check (unix:///x.sock, host:port)
    --vmsnap-params FILE        test volumes and parameters (JSON), without the fixture
    --vmsnap-only CATEGORY      only these categories or check ids (repeatable)
    --vmsnap-tls-ca/--vmsnap-tls-cert/--vmsnap-tls-key FILE
    --vmsnap-fail-on-skip       a skipped check fails
    --vmsnap-require CAPABILITY the driver must advertise it (repeatable)

A run that collects these tests without ``--vmsnap-endpoint`` is a usage error
(pytest's exit status 4), not a green run of skips; a driver that cannot be
reached ends the session at once with one line (exit status 1). In JUnit XML
each test's classname is ``vmsnap.conformance.CATEGORY``.

Every test that takes ``vmsnap_check`` runs once per check (the test id is
the check id); the suite itself runs once per session, in its own thread and
event loop, so the driver must serve from another process or thread. The
shortest test file::

    def test_vmsnap_conformance(vmsnap_check):
        vmsnap_check.verify()

or, with no file at all: ``pytest --pyargs vmsnap_sdk.conformance.pytest_suite
--vmsnap-endpoint unix:///run/driver.sock``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import pytest

try:  # pytest's junitxml plugin state; absent (None) if a pytest moves it
    from _pytest import junitxml

    _XML_KEY: Any = junitxml.xml_key
except (ImportError, AttributeError):  # pragma: no cover
    _XML_KEY = None

from vmsnap_sdk._tls import ClientTLS
from vmsnap_sdk._types import Capability
from vmsnap_sdk.conformance._policy import (
    CAPABILITY_NAMES,
    REQUIRED_ID,
    apply_policy,
    parse_capabilities,
)
from vmsnap_sdk.conformance._registry import Check, all_checks, select
from vmsnap_sdk.conformance._runner import CheckResult, Report, run_suite
from vmsnap_sdk.conformance._session import Params


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vmsnap-conformance", "vmsnap driver conformance suite")
    group.addoption("--vmsnap-endpoint", metavar="ADDRESS", help="driver to check")
    group.addoption("--vmsnap-params", metavar="FILE", help="JSON test volumes and parameters")
    group.addoption(
        "--vmsnap-only", action="append", default=[], metavar="CATEGORY", help="categories to run"
    )
    group.addoption("--vmsnap-tls-ca", metavar="FILE", help="PEM CA of the driver's certificate")
    group.addoption("--vmsnap-tls-cert", metavar="FILE", help="PEM client certificate")
    group.addoption("--vmsnap-tls-key", metavar="FILE", help="PEM client key")
    group.addoption(
        "--vmsnap-fail-on-skip", action="store_true", help="count a skipped check as failed"
    )
    group.addoption(
        "--vmsnap-require",
        action="append",
        default=[],
        metavar="CAPABILITY",
        help=f"fail unless the driver advertises it: {', '.join(CAPABILITY_NAMES)}",
    )


_FIXTURES = ("vmsnap_check", "vmsnap_report")


def _required(config: pytest.Config) -> tuple[Capability, ...]:
    try:
        return parse_capabilities(config.getoption("vmsnap_require"))
    except ValueError as exc:
        raise pytest.UsageError(f"--vmsnap-require: {exc}") from None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A run of the suite without a driver is a usage error, not a run of skips."""
    wanted = any(f in getattr(item, "fixturenames", ()) for item in items for f in _FIXTURES)
    if wanted and not config.getoption("vmsnap_endpoint"):
        raise pytest.UsageError(
            "the vmsnap conformance tests need --vmsnap-endpoint ADDRESS, the driver to check "
            "(unix:///run/driver.sock or host:port)"
        )
    if wanted:
        _required(config)


def _selected(config: pytest.Config) -> list[Check]:
    only = tuple(p for item in config.getoption("vmsnap_only") for p in item.split(",") if p)
    return select(all_checks(), only)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "vmsnap_check" in metafunc.fixturenames:
        ids = [c.id for c in _selected(metafunc.config)]
        if metafunc.config.getoption("vmsnap_require"):
            ids.append(REQUIRED_ID)
        metafunc.parametrize("vmsnap_check", ids, ids=ids, indirect=True)


@pytest.fixture(scope="session")
def vmsnap_report(request: pytest.FixtureRequest) -> Report:
    """The whole suite's report against ``--vmsnap-endpoint`` (run once per session)."""
    config = request.config
    endpoint = config.getoption("vmsnap_endpoint")
    if not endpoint:  # collection refuses this already; a direct caller gets the same words
        raise pytest.UsageError("the vmsnap conformance tests need --vmsnap-endpoint ADDRESS")
    ca, cert, key = (config.getoption(f"vmsnap_tls_{n}") for n in ("ca", "cert", "key"))
    tls = ClientTLS(ca, cert, key) if (ca or cert or key) else None
    path = config.getoption("vmsnap_params")
    params = Params.load(path) if path else Params()
    suite = run_suite(endpoint, tls=tls, params=params, checks=_selected(config))
    # Its own thread and loop: the vendor's tests may have a loop running already.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        report = pool.submit(asyncio.run, suite).result()
    if report.unreachable:
        pytest.exit(report.unreachable, returncode=pytest.ExitCode.TESTS_FAILED)
    return apply_policy(
        report,
        require=_required(config),
        fail_on_skip=bool(config.getoption("vmsnap_fail_on_skip")),
    )


@pytest.fixture
def vmsnap_check(request: pytest.FixtureRequest, vmsnap_report: Report) -> CheckResult:
    """The result of one check; skips the test when the check was skipped."""
    check_id: str = request.param
    result = next(r for r in vmsnap_report.checks if r.id == check_id)
    _junit_classname(request, f"vmsnap.conformance.{result.category}")
    if result.status == "skipped":
        pytest.skip(result.detail)
    return result


def _junit_classname(request: pytest.FixtureRequest, classname: str) -> None:
    """Give the test its category as JUnit classname (pytest's own is the module's path,
    empty for a ``--pyargs`` module outside the rootdir).

    This is what the ``record_xml_attribute`` fixture does, without its warning
    under the default junit_family (xunit2), where classname is a valid attribute.
    """
    if _XML_KEY is None:
        return
    xml = request.config.stash.get(_XML_KEY, None)
    if xml is not None:
        xml.node_reporter(request.node.nodeid).add_attribute("classname", classname)
