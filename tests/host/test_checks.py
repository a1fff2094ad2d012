"""The host's checks of what drivers and agents return (vmsnap_host.checks): one test per rule."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsnap_host import checks as c
from vmsnap_sdk import (
    DriverInfo,
    NativeSnapshot,
    Priority,
    RevertResult,
    SnapshotResult,
    Volume,
    VolumeDecision,
    VolumeSnapshot,
    limits,
)
from vmsnap_sdk.errors import Internal

D = "io.vmsnap.test.h"
SID = "snap-1"
VOLUMES = (Volume("vda", "h://pool/1"), Volume("vdb", "h://pool/2"))


def good(snapshot_id: str = SID, suffix: str = "") -> SnapshotResult:
    return SnapshotResult(
        snapshot_id,
        tuple(
            VolumeSnapshot(v.disk, v.locator, f"{snapshot_id}@{v.disk}{suffix}") for v in VOLUMES
        ),
        group_handle=f"cg-{snapshot_id}",
        vm_id="vm1",
    )


def with_volumes(*volumes: VolumeSnapshot) -> SnapshotResult:
    return replace(good(), volume_snapshots=volumes)


def violation(call: object) -> c.ContractViolation:
    with pytest.raises(c.ContractViolation) as caught:
        call()  # type: ignore[operator]
    return caught.value


def test_a_good_result_passes_unchanged() -> None:
    result = good()
    assert c.check_take_result(D, SID, VOLUMES, result, vm_id="vm1") is result
    # Another order of the volumes is fine; so is a result not tagged with the VM.
    shuffled = with_volumes(*reversed(result.volume_snapshots))
    assert c.check_take_result(D, SID, VOLUMES, replace(shuffled, vm_id="")) is not None


def test_a_violation_is_final_internal_and_names_the_driver_and_the_rule() -> None:
    error = violation(lambda: c.check_take_result(D, "other", VOLUMES, good()))
    assert isinstance(error, Internal) and error.final
    assert error.code is grpc.StatusCode.INTERNAL
    assert error.reason == c.DRIVER_REASON == "DRIVER_CONTRACT_VIOLATION"
    assert error.metadata == {"driver": D, "rule": c.TAKE_ECHOES_ID}
    assert (error.peer, error.rule, error.kind) == (D, c.TAKE_ECHOES_ID, "driver")
    assert error.message.startswith(f"driver {D} broke the contract (take.echoes_id): ")
    assert "'snap-1'" in error.message and "'other'" in error.message


def test_context_can_be_added_to_a_violation_like_to_any_error() -> None:
    """The host adds context with ``type(exc)(message, reason=exc.reason)``."""
    error = violation(lambda: c.check_take_result(D, "other", VOLUMES, good()))
    wrapped = type(error)(f"take failed: {error.message}", reason=error.reason)
    assert isinstance(wrapped, c.ContractViolation)
    assert wrapped.reason == c.DRIVER_REASON and D in wrapped.message


SA, SB = good().volume_snapshots
EXTRA = VolumeSnapshot("vdz", "h://pool/9", "snap-1@vdz")

WRONG_VOLUMES = {
    "extra": ((SA, SB, EXTRA), "has disk 'vdz', which the host did not ask for"),
    "missing": ((SA,), "misses disk 'vdb', which the host asked for"),
    "none": ((), "has no disk at all; the host asked for 'vda', 'vdb'"),
    "twice": ((SA, SB, SA), "names disk 'vda' more than once"),
    "twice-instead-of-other": ((SA, SA), "names disk 'vda' more than once"),
    "wrong-locator": (
        (SA, replace(SB, locator="h://pool/elsewhere")),
        "disk 'vdb' has locator 'h://pool/elsewhere'; the requested volume's is 'h://pool/2'",
    ),
}


@pytest.mark.parametrize("case", sorted(WRONG_VOLUMES))
def test_exactly_the_requested_volumes_once_each_with_their_locators(case: str) -> None:
    volumes, detail = WRONG_VOLUMES[case]
    error = violation(lambda: c.check_take_result(D, SID, VOLUMES, with_volumes(*volumes)))
    assert error.rule == c.TAKE_COVERS_VOLUMES
    assert detail in error.message


def test_every_volume_has_a_handle_and_a_valid_size() -> None:
    error = violation(
        lambda: c.check_take_result(D, SID, VOLUMES, with_volumes(SA, replace(SB, handle="")))
    )
    assert error.rule == c.TAKE_HANDLES_PRESENT and "disk 'vdb' has no handle" in error.message
    error = violation(
        lambda: c.check_take_result(D, SID, VOLUMES, with_volumes(replace(SA, size_bytes=-1), SB))
    )
    assert error.rule == c.TAKE_SIZES_VALID


def test_the_result_is_of_the_vm_asked_about() -> None:
    error = violation(lambda: c.check_take_result(D, SID, VOLUMES, good(), vm_id="vm2"))
    assert error.rule == c.TAKE_TAGGED_WITH_VM


OVERSIZE = {
    "5 MiB handle": (
        with_volumes(replace(SA, handle="h" * (5 << 20)), SB),
        "volume_snapshots[0].handle is 5242880 bytes; at most 1024",
    ),
    "group handle": (replace(good(), group_handle="g" * 1025), "group_handle is 1025 bytes"),
    "10 MiB metadata": (
        replace(good(), metadata={f"k{i}": "m" * (1 << 20) for i in range(10)}),
        "metadata is 10485780 bytes (keys and values); at most 4096",
    ),
    "many metadata entries": (
        replace(good(), metadata={f"k{i}": "" for i in range(100_000)}),
        "metadata has 100000 entries; at most 64",
    ),
    "huge disk name": (
        with_volumes(SA, replace(SB, disk="d" * (1 << 20))),
        "volume_snapshots[1].disk is 1048576 chars; at most 63",
    ),
}


@pytest.mark.parametrize("case", sorted(OVERSIZE))
def test_sizes_within_the_limits_and_the_message_stays_small(case: str) -> None:
    result, detail = OVERSIZE[case]
    error = violation(lambda: c.check_take_result(D, SID, VOLUMES, result))
    assert error.rule == c.TAKE_SIZE_LIMITS
    assert detail in error.message
    assert len(error.message) <= limits.MAX_MESSAGE


def test_a_retry_or_a_poll_keeps_the_handles_and_the_group_handle() -> None:
    before = good()
    assert c.check_take_result(D, SID, VOLUMES, replace(before, ready=False), before)
    swapped = good(suffix="-swapped")
    error = violation(lambda: c.check_take_result(D, SID, VOLUMES, swapped, before))
    assert error.rule == c.TAKE_SAME_RESULT
    assert "disk 'vda' now has handle 'snap-1@vda-swapped'" in error.message
    regrouped = replace(before, group_handle="cg-other")
    error = violation(lambda: c.check_take_result(D, SID, VOLUMES, regrouped, before))
    assert error.rule == c.TAKE_SAME_RESULT and "group handle" in error.message
    # The poll is checked like the take itself, too.
    error = violation(lambda: c.check_take_result(D, SID, VOLUMES, with_volumes(SA), before))
    assert error.rule == c.TAKE_COVERS_VOLUMES


DISKS = ["vda", "vdb", "vdc"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*DISKS, "vdz", "x" * 100]), max_size=6))
def test_any_disk_list_passes_exactly_when_it_is_the_requested_set(returned: list[str]) -> None:
    volumes = tuple(Volume(d, f"h://pool/{d}") for d in DISKS)
    result = SnapshotResult(
        SID, tuple(VolumeSnapshot(d, f"h://pool/{d}", f"h-{d}") for d in returned)
    )
    exact = sorted(returned) == sorted(DISKS)
    try:
        c.check_take_result(D, SID, volumes, result)
    except c.ContractViolation as error:
        assert not exact
        assert error.rule in {c.TAKE_COVERS_VOLUMES, c.TAKE_SIZE_LIMITS}
        assert len(error.message) <= limits.MAX_MESSAGE
    else:
        assert exact


@settings(max_examples=200, deadline=None)
@given(
    snapshot_id=st.text(max_size=5000),
    disk=st.text(max_size=5000),
    locator=st.text(max_size=5000),
    handle=st.text(max_size=5000),
    driver=st.text(max_size=5000),
)
def test_whatever_a_driver_returns_the_message_is_bounded(
    snapshot_id: str, disk: str, locator: str, handle: str, driver: str
) -> None:
    result = SnapshotResult(snapshot_id, (VolumeSnapshot(disk, locator, handle),))
    try:
        c.check_take_result(driver, SID, VOLUMES[:1], result)
    except c.ContractViolation as error:
        assert len(error.message) <= limits.MAX_MESSAGE
        assert len(error.metadata["driver"]) <= 200


# --- CanHandle -------------------------------------------------------------------


def decide(disk: str, reason: str = "h:// volume") -> VolumeDecision:
    return VolumeDecision(disk, Priority.PLUGIN, reason)


def test_decisions_come_back_one_per_asked_disk_in_asked_order() -> None:
    got = c.check_decisions(D, ["vda", "vdb"], [decide("vdb"), decide("vda")])
    assert [d.disk for d in got] == ["vda", "vdb"]


def test_a_decision_about_a_disk_not_asked_is_ignored() -> None:
    got = c.check_decisions(D, ["vda"], [decide("vda"), decide("vdz")])
    assert [d.disk for d in got] == ["vda"]


def test_a_disk_decided_twice_or_not_at_all_breaks_the_contract() -> None:
    error = violation(lambda: c.check_decisions(D, ["vda", "vdb"], [decide("vda"), decide("vda")]))
    assert error.rule == c.DECISION_PER_VOLUME and "more than once" in error.message
    error = violation(lambda: c.check_decisions(D, ["vda", "vdb"], [decide("vda")]))
    assert error.rule == c.DECISION_PER_VOLUME and "misses disk 'vdb'" in error.message
    error = violation(lambda: c.check_decisions(D, ["vda"], []))
    assert error.rule == c.DECISION_PER_VOLUME


def test_a_reason_over_the_limit_breaks_the_contract() -> None:
    assert c.check_decisions(D, ["vda"], [decide("vda", "r" * limits.MAX_REASON)])
    error = violation(
        lambda: c.check_decisions(D, ["vda"], [decide("vda", "r" * (limits.MAX_REASON + 1))])
    )
    assert error.rule == c.DECISION_SIZE_LIMITS
    assert "decisions[0].reason is 1025 chars; at most 1024" in error.message


# --- revert ----------------------------------------------------------------------


def test_an_undo_comes_back_exactly_when_asked_and_offered() -> None:
    undo = good("undo-1")
    kw = {"volumes": VOLUMES}
    assert c.check_revert_result(D, "", RevertResult(), undo_offered=True, **kw) is None
    assert c.check_revert_result(D, "undo-1", RevertResult(), undo_offered=False, **kw) is None
    assert c.check_revert_result(D, "undo-1", RevertResult(undo), undo_offered=True, **kw) is undo
    cases = [
        ("undo-1", RevertResult(), True, "has no undo snapshot"),
        ("", RevertResult(undo), True, "the host did not ask for one"),
        ("undo-1", RevertResult(undo), False, "it does not offer REVERT_UNDO"),
    ]
    for undo_id, result, offered, detail in cases:
        error = violation(
            lambda u=undo_id, r=result, o=offered: c.check_revert_result(
                D, u, r, undo_offered=o, **kw
            )
        )
        assert error.rule == c.REVERT_UNDO_IFF_ASKED and detail in error.message


def test_the_undo_has_the_undo_id_and_the_groups_volumes() -> None:
    def check(undo: SnapshotResult) -> c.ContractViolation:
        return violation(
            lambda: c.check_revert_result(
                D, "undo-1", RevertResult(undo), volumes=VOLUMES, undo_offered=True
            )
        )

    error = check(good("undo-2"))
    assert error.rule == c.REVERT_UNDO_COVERS and "breaks take.echoes_id" in error.message
    error = check(replace(good("undo-1"), volume_snapshots=good("undo-1").volume_snapshots[:1]))
    assert error.rule == c.REVERT_UNDO_COVERS and "misses disk 'vdb'" in error.message
    error = check(replace(good("undo-1"), group_handle="g" * 5000))
    assert error.rule == c.REVERT_UNDO_COVERS and "take.size_limits" in error.message


# --- agents ----------------------------------------------------------------------

A = "sim-1"


def native(**changes: object) -> NativeSnapshot:
    return replace(NativeSnapshot("snap-1", "vm1", ("vdc", "vdd")), **changes)


def test_a_native_snapshot_has_the_id_the_vm_and_exactly_the_disks() -> None:
    assert c.check_native(A, SID, ["vdd", "vdc"], native(), vm_id="vm1") is not None
    error = violation(lambda: c.check_native(A, SID, ["vdc", "vdd"], native(snapshot_id="x")))
    assert error.rule == c.NATIVE_ECHOES_ID
    assert error.reason == c.AGENT_REASON and error.metadata == {"agent": A, "rule": error.rule}
    assert error.message.startswith(f"agent {A} broke the contract")
    error = violation(lambda: c.check_native(A, SID, ["vdc", "vdd"], native(), vm_id="vm2"))
    assert error.rule == c.NATIVE_ECHOES_ID
    for disks in (("vdc",), ("vdc", "vdd", "vde"), ("vdc", "vdc", "vdd"), ()):
        error = violation(lambda d=disks: c.check_native(A, SID, ["vdc", "vdd"], native(disks=d)))
        assert error.rule == c.NATIVE_COVERS_DISKS
    error = violation(
        lambda: c.check_native(A, SID, ["vdc", "vdd"], native(), include_memory=True)
    )
    assert error.rule == c.NATIVE_MEMORY_AS_ASKED
    assert c.check_native(A, SID, ["vdc", "vdd"], native(), include_memory=False) is not None
    error = violation(lambda: c.check_native(A, SID, ["vdc"], native(disks=("v" * 10**6,))))
    assert error.rule == c.NATIVE_SIZE_LIMITS and len(error.message) <= limits.MAX_MESSAGE


# --- driver info -----------------------------------------------------------------


def test_driver_info_within_the_limits() -> None:
    info = DriverInfo(D, "1.0.0", labels={"model": "x"})
    assert c.check_driver_info("unix:///run/h.sock", info) is info
    huge = replace(info, labels={f"l{i}": "v" * (1 << 20) for i in range(10)})
    error = violation(lambda: c.check_driver_info("unix:///run/h.sock", huge))
    assert error.rule == c.INFO_SIZE_LIMITS
    assert error.message.startswith(f"driver {D} at unix:///run/h.sock broke the contract")
    assert "labels is 10485780 bytes" in error.message
    error = violation(
        lambda: c.check_driver_info("unix:///run/h.sock", replace(info, name="n" * 99))
    )
    assert error.message.startswith("driver at unix:///run/h.sock broke")


# --- cut -------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=3000), limit=st.integers(min_value=1, max_value=2000))
def test_cut_never_exceeds_the_limit_and_marks_what_it_cut(text: str, limit: int) -> None:
    got = c.cut(text, limit)
    assert len(got) <= limit
    if len(text) <= limit:
        assert got == text
    else:
        assert got != text
        if limit >= 64:
            assert got.endswith(f"[cut: {len(text)} chars in all]")
            assert text.startswith(got.split("… [cut: ")[0])


def test_cut_to_the_documented_message_size() -> None:
    got = c.cut("e" * (1 << 20), limits.MAX_MESSAGE)
    assert len(got) == limits.MAX_MESSAGE == 1024
    assert got.startswith("eeee") and got.endswith("[cut: 1048576 chars in all]")
