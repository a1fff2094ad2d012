"""pytest plugin: the conformance checks as tests in a vendor's own test run.

Loaded through the ``pytest11`` entry point of vmsnap-sdk; inert unless a test
asks for ``vmsnap_check`` or ``vmsnap_report``. Options::

    --vmsnap-endpoint ADDRESS   the driver to check (unix:///x.sock, host:port)
    --vmsnap-params FILE        test volumes and parameters (JSON), without the fixture
    --vmsnap-only CATEGORY      only these categories or check ids (repeatable)
    --vmsnap-tls-ca/--vmsnap-tls-cert/--vmsnap-tls-key FILE

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

import pytest

from vmsnap_sdk._tls import ClientTLS
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


def _selected(config: pytest.Config) -> list[Check]:
    only = tuple(p for item in config.getoption("vmsnap_only") for p in item.split(",") if p)
    return select(all_checks(), only)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "vmsnap_check" in metafunc.fixturenames:
        ids = [c.id for c in _selected(metafunc.config)]
        metafunc.parametrize("vmsnap_check", ids, ids=ids, indirect=True)


@pytest.fixture(scope="session")
def vmsnap_report(request: pytest.FixtureRequest) -> Report:
    """The whole suite's report against ``--vmsnap-endpoint`` (run once per session)."""
    config = request.config
    endpoint = config.getoption("vmsnap_endpoint")
    if not endpoint:
        pytest.skip("no --vmsnap-endpoint given")
    ca, cert, key = (config.getoption(f"vmsnap_tls_{n}") for n in ("ca", "cert", "key"))
    tls = ClientTLS(ca, cert, key) if (ca or cert or key) else None
    path = config.getoption("vmsnap_params")
    params = Params.load(path) if path else Params()
    suite = run_suite(endpoint, tls=tls, params=params, checks=_selected(config))
    # Its own thread and loop: the vendor's tests may have a loop running already.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, suite).result()


@pytest.fixture
def vmsnap_check(request: pytest.FixtureRequest, vmsnap_report: Report) -> CheckResult:
    """The result of one check; skips the test when the check was skipped."""
    check_id: str = request.param
    result = next(r for r in vmsnap_report.checks if r.id == check_id)
    if result.status == "skipped":
        pytest.skip(result.detail)
    return result
