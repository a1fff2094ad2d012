"""The conformance suite as a pytest module: ``pytest --pyargs vmsnap_sdk.conformance.pytest_suite
--vmsnap-endpoint ADDRESS`` runs one test per check."""

from __future__ import annotations

from vmsnap_sdk.conformance._runner import CheckResult


def test_vmsnap_conformance(vmsnap_check: CheckResult) -> None:
    vmsnap_check.verify()
