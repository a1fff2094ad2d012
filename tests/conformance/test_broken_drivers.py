"""Every check can fail: each one fails against at least one deliberately broken driver.

``EXPECTED`` says, per variant, which checks its fault must trip. Each
variant's test asserts that those checks fail (others may fail too, as a
consequence); a static test asserts that together they name every check, so
no check in the suite is one that cannot fail.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.broken import VARIANTS
from tests.support.procs import ROOT, Proc, python_proc, wait_serving
from vmsnap_sdk.conformance import all_checks, run_suite

BAD_INPUT = {
    "blocks.bounds_invalid",
    "blocks.read_bounds_invalid",
    "clone.missing_id_invalid",
    "can_handle.duplicate_disk_invalid",
    "can_handle.empty_request_invalid",
    "can_handle.operation_required",
    "delete.missing_id_invalid",
    "list.page_size_bounds",
    "revert.missing_id_invalid",
    "revert.undo_needs_id",
    "robustness.bad_locator",
    "robustness.can_handle_10k_volumes",
    "robustness.can_handle_huge_options",
    "robustness.control_chars_disk",
    "robustness.control_chars_name",
    "robustness.delete_bad_id",
    "robustness.duplicate_disks",
    "robustness.fixture_bad_input",
    "robustness.huge_id",
    "robustness.huge_locator",
    "robustness.huge_page_token",
    "robustness.huge_parameter_map",
    "robustness.huge_parameter_value",
    "robustness.long_name",
    "robustness.negative_size",
    "robustness.take_10k_volumes",
    "robustness.unicode_id",
    "take.bad_id_invalid",
    "take.missing_id_invalid",
    "take.missing_vm_invalid",
    "take.missing_volumes_invalid",
}

EXPECTED: dict[str, set[str]] = {
    "bad_identity": {
        "identity.name_reverse_dns",
        "identity.contract_v1",
        "identity.vendor_version_semver",
        "identity.capabilities_known",
        "identity.limits_sane",
        "identity.info_stable",
        "health.probe_ready",
        "robustness.stays_healthy",
    },
    "bare_server": {
        "health.grpc_health_serving",
        "health.grpc_health_service",
        "health.reflection_lists_service",
        "health.reflection_lists_fixture",
    },
    "overclaims": {
        "capabilities.revert",
        "capabilities.list",
        "capabilities.revert_undo",
        "capabilities.post_processing",
        "capabilities.get_unknown",
        "capabilities.clone_volumes",
        "capabilities.list_unmanaged",
    },
    "underclaims": {
        "capabilities.revert",
        "capabilities.list",
        "capabilities.fixture",
        "capabilities.clone_volumes",
        "capabilities.list_unmanaged",
    },
    "claims_everything": {
        "can_handle.unknown_volume_cant_handle",
        "can_handle.claims_own_volumes",
        "can_handle.reasons_present",
    },
    "can_handle_side_effects": {"can_handle.pure", "can_handle.no_side_effects"},
    "reversed_decisions": {"can_handle.one_decision_per_volume", "can_handle.all_operations"},
    "sloppy_result": {
        "take.covers_requested_volumes",
        "take.echoes_id",
        "take.handles_present",
        "take.group_snapshot",
        "take.consistency_reported",
        "take.tagged_with_vm",
        "take.metadata_bounded",
        "take.sizes_valid",
        "capabilities.consistent_group",
    },
    "disk_handles": {"take.distinct_handles", "concurrency.parallel_takes"},
    "non_idempotent_take": {
        "take.retry_same_result",
        "take.same_id_other_volumes",
        "concurrency.same_id_converges",
        "deadlines.short_take_converges",
    },
    "revert_noop": {
        "revert.restores_data",
        "revert.restores_every_volume",
        "revert.repeatable",
        "revert.undo_restores_current",
        "revert.undo_deletable",
        "revert.deleted_not_found",
    },
    "delete_strict": {
        "delete.unknown_id_ok",
        "delete.idempotent",
        "delete.after_failed_take",
        "concurrency.parallel_deletes",
    },
    "delete_noop": {
        "delete.gone_from_list",
        "delete.by_id_alone",
        "deadlines.short_delete_converges",
    },
    "delete_by_volume": {"delete.leaves_other_snapshots"},
    "bad_paging": {
        "list.contains_taken",
        "list.paging_complete",
        "list.page_size_respected",
        "list.no_duplicates",
        "list.filter_vm_id",
        "list.empty_for_unknown_vm",
        "list.invalid_token",
    },
    "racy": {"concurrency.parallel_takes", "concurrency.same_id_converges"},
    "concurrent_same_id": {"concurrency.same_id_converges"},
    "corrupting_revert": {"concurrency.reverts_never_corrupt", "concurrency.take_during_revert"},
    "deadline_wrong_code": {
        "deadlines.short_take_converges",
        "deadlines.short_delete_converges",
    },
    "internal_on_bad_input": BAD_INPUT | {"errors.invalid_argument_error_info"},
    "crash_on_bad_input": BAD_INPUT | {"errors.messages_helpful"},
    "no_details": {
        "errors.invalid_argument_error_info",
        "errors.bad_request_names_field",
        "errors.not_found_error_info",
        "errors.already_exists_error_info",
        "errors.details_match_status",
        "errors.messages_helpful",
    },
    "wrong_codes": {
        "take.unknown_volume_not_found",
        "take.same_id_other_volumes",
        "capabilities.get_unknown",
        "errors.not_found_error_info",
    },
    "delta_omits_range": {"blocks.delta_lists_changes"},
    "unsorted_ranges": {
        "blocks.delta_lists_changes",
        "blocks.delta_paged",
        "blocks.allocated_covers_data",
    },
    "ignores_page_size": {"blocks.delta_paged"},
    "reads_live_volume": {"blocks.read_returns_snapshot_bytes"},
    "clone_shares": {"clone.reads_snapshot", "clone.independent"},
    "clone_not_idempotent": {"clone.retry_same_volumes", "clone.same_id_other_targets"},
    "clone_delete_noop": {"clone.delete_removes"},
    "clone_unclaimed": {"clone.claimed"},
    "lists_managed": {"unmanaged.excludes_managed", "unmanaged.only_given_volumes"},
    "unmanaged_side_effects": {"unmanaged.read_only"},
}


def test_every_check_fails_against_some_broken_variant() -> None:
    named = set().union(*EXPECTED.values())
    assert sorted(c.id for c in all_checks() if c.id not in named) == []
    assert named <= {c.id for c in all_checks()}
    assert set(EXPECTED) == set(VARIANTS)


@pytest.fixture(autouse=True)
def quiet_servers() -> Iterator[None]:
    # In-process broken servers log every failed call; the report says enough.
    logging.disable(logging.ERROR)
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
async def test_broken_variant_fails_the_checks_of_its_fault(variant: str, sockdir: Path) -> None:
    address = f"unix://{sockdir}/{variant}.sock"
    server = await VARIANTS[variant](address)
    try:
        report = await run_suite(address, check_timeout=15)
    finally:
        await server.stop(0)
    failed = set(report.by_status("failed"))
    assert EXPECTED[variant] <= failed, {
        r.id: (r.status, r.detail) for r in report.checks if r.id in EXPECTED[variant] - failed
    }
    for result in report.checks:
        if result.status == "failed":
            assert result.detail.startswith(("expected ", "unexpected ")), result


@pytest.fixture
def delete_strict_process(sockdir: Path, tmp_path: Path) -> Iterator[str]:
    address = f"unix://{sockdir}/strict.sock"
    proc: Proc = python_proc(
        ["-m", "tests.conformance.broken", "delete_strict", "--listen", address],
        tmp_path / "strict.log",
    )
    try:
        wait_serving(address)
        yield address
    finally:
        proc.stop()


def test_cli_against_a_broken_process_exits_1_and_reports_why(
    delete_strict_process: str, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmsnap_sdk.conformance.cli",
            delete_strict_process,
            "--only",
            "delete",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(out.read_text())
    by_id = {c["id"]: c for c in report["checks"]}
    unknown = by_id["delete.unknown_id_ok"]
    assert unknown["status"] == "failed"
    assert "expected delete of an unknown id to succeed" in unknown["detail"]
    assert "NOT_FOUND" in unknown["detail"]
    assert report["summary"]["failed"] >= 3
    assert "FAIL  delete.unknown_id_ok" in done.stdout
