"""Size limits of what drivers and agents send: the contract's figures, in one place.

The contract states them once, in proto/vmsnap/driver/v1/driver.proto ("Size
limits"); this module is the same table for Python, shared by everyone who
enforces it:

- the SDK's server adapter refuses to send a driver's answer that breaks one
  (INTERNAL, naming the field and the limit, and logged), so a vendor finds out
  in its own tests rather than in production;
- the host refuses to store one (``vmsnap_host.checks``): the take fails, is
  compensated, and its cause names the driver and the rule;
- the SDK's clients cut what a peer says in an error (message, ErrorInfo,
  BadRequest, RetryInfo) to these sizes before it becomes a VMSnapError;
- the conformance suite checks a driver against them.

Why limits at all: the host stores what drivers return and hands it to every
client of its API. One driver's 5 MiB handle once made ``ListOperations`` fail
for every client, forever. Each figure leaves room for any real array (an
ONTAP or Element handle is tens of bytes) and keeps the largest possible
result of one take (256 volumes) well under a megabyte.

Text meant for people (reasons, messages) is counted in characters; opaque
values the host stores and hands back (handles, metadata, labels) in bytes of
UTF-8, which is what they cost on the wire and on disk.

=========================================  ==========================================
what                                       limit
=========================================  ==========================================
volume snapshot handle                     1..1024 bytes (``MAX_HANDLE_BYTES``)
group handle                               0..1024 bytes (``MAX_GROUP_HANDLE_BYTES``)
volume locator                             1024 bytes (``MAX_LOCATOR_BYTES``)
disk name                                  63 chars (``MAX_DISK``)
vm_snapshot_id, vm_id, native snapshot id  128 chars (``MAX_ID``)
volumes of one result, disks of a native   256 (``MAX_VOLUMES``)
result metadata                            64 entries, keys 1..128 bytes, 4 KiB in all
driver labels (GetDriverInfo)              64 entries, keys 1..128 bytes, 4 KiB in all
driver name                                63 chars (reverse-DNS)
vendor version                             64 chars
contract versions                          8 entries of 16 chars
CanHandle reason                           1024 chars (``MAX_REASON``)
list page                                  1000 results, next_page_token 1024 chars
error and probe messages                   1024 chars; longer ones are cut (``cut``)
ErrorInfo reason                           63 chars; longer ones are cut
ErrorInfo metadata                         16 entries, keys 64 chars, values 256 chars
BadRequest                                 16 violations, field 256 chars, text 1024
RetryInfo delay                            0..3600 s; outside that it is clamped
=========================================  ==========================================

Results in this module are problems as text naming the field
(``"volume_snapshots[0].handle is 5242880 bytes; at most 1024"``), or ``None``
when the value keeps every limit. They never quote the offending value, so a
problem stays small whatever the peer sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vmsnap_sdk._types import (
    DriverInfo,
    NativeSnapshot,
    SnapshotResult,
    UnmanagedSnapshot,
    VolumeDecision,
)

MAX_HANDLE_BYTES = 1024
MAX_GROUP_HANDLE_BYTES = 1024
MAX_LOCATOR_BYTES = 1024
MAX_DISK = 63
#: An unmanaged snapshot's name, as the array shows it.
MAX_NAME = 255
MAX_ID = 128
MAX_VOLUMES = 256

MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_BYTES = 128
MAX_METADATA_BYTES = 4096

MAX_LABEL_ENTRIES = 64
MAX_LABEL_KEY_BYTES = 128
MAX_LABELS_BYTES = 4096

MAX_DRIVER_NAME = 63
MAX_VENDOR_VERSION = 64
MAX_CONTRACT_VERSIONS = 8
MAX_CONTRACT_VERSION = 16

MAX_REASON = 1024
MAX_PAGE_RESULTS = 1000
MAX_PAGE_TOKEN = 1024

MAX_MESSAGE = 1024
MAX_ERROR_REASON = 63
MAX_ERROR_METADATA_ENTRIES = 16
MAX_ERROR_METADATA_KEY = 64
MAX_ERROR_METADATA_VALUE = 256
MAX_FIELD_VIOLATIONS = 16
MAX_FIELD_PATH = 256
MAX_RETRY_DELAY_SECONDS = 3600.0


def cut(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` if it fits in ``limit`` characters, else its start with a mark of the cut.

    The result is never longer than ``limit``, and says how long the text was,
    so a reader knows something is missing (and how much).
    """
    if len(text) <= limit:
        return text
    mark = f"… [cut: {len(text)} chars in all]"
    if len(mark) >= limit:
        return text[:limit]
    return text[: limit - len(mark)] + mark


def _bytes(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


def map_problem(
    field: str,
    values: Mapping[str, str],
    *,
    max_entries: int,
    max_key_bytes: int,
    max_total_bytes: int,
) -> str | None:
    """The first limit a string map breaks: entry count, an empty or long key, total size."""
    if len(values) > max_entries:
        return f"{field} has {len(values)} entries; at most {max_entries}"
    total = 0
    for key, value in values.items():
        size = _bytes(key)
        if size == 0 or size > max_key_bytes:
            return f"{field} has a key of {size} bytes; keys are 1..{max_key_bytes} bytes"
        total += size + _bytes(value)
    if total > max_total_bytes:
        return f"{field} is {total} bytes (keys and values); at most {max_total_bytes}"
    return None


def _text(field: str, value: str, limit: int) -> str | None:
    if len(value) > limit:
        return f"{field} is {len(value)} chars; at most {limit}"
    return None


def _size(field: str, value: str, limit: int) -> str | None:
    size = _bytes(value)
    if size > limit:
        return f"{field} is {size} bytes; at most {limit}"
    return None


def result_problem(result: SnapshotResult) -> str | None:
    """The first size limit a snapshot result breaks (a take, a poll, an undo, a listing)."""
    problem = _text("vm_snapshot_id", result.vm_snapshot_id, MAX_ID) or _text(
        "vm_id", result.vm_id, MAX_ID
    )
    if problem:
        return problem
    if len(result.volume_snapshots) > MAX_VOLUMES:
        return f"volume_snapshots has {len(result.volume_snapshots)} entries; at most {MAX_VOLUMES}"
    for i, v in enumerate(result.volume_snapshots):
        at = f"volume_snapshots[{i}]"
        problem = (
            _text(f"{at}.disk", v.disk, MAX_DISK)
            or _size(f"{at}.locator", v.locator, MAX_LOCATOR_BYTES)
            or _size(f"{at}.handle", v.handle, MAX_HANDLE_BYTES)
        )
        if problem:
            return problem
    return _size("group_handle", result.group_handle, MAX_GROUP_HANDLE_BYTES) or map_problem(
        "metadata",
        result.metadata,
        max_entries=MAX_METADATA_ENTRIES,
        max_key_bytes=MAX_METADATA_KEY_BYTES,
        max_total_bytes=MAX_METADATA_BYTES,
    )


def unmanaged_problem(snapshots: Sequence[UnmanagedSnapshot], next_token: str) -> str | None:
    """The first size limit a page of ListUnmanagedSnapshots breaks."""
    if len(snapshots) > MAX_PAGE_RESULTS:
        return f"snapshots has {len(snapshots)} entries; at most {MAX_PAGE_RESULTS}"
    for i, u in enumerate(snapshots):
        problem = (
            _size(f"snapshots[{i}].id", u.id, MAX_HANDLE_BYTES)
            or _text(f"snapshots[{i}].name", u.name, MAX_NAME)
            or result_problem(u.as_result("x"))
        )
        if problem:
            return problem if problem.startswith("snapshots") else f"snapshots[{i}].{problem}"
    return _size("next_page_token", next_token, MAX_PAGE_TOKEN)


def decisions_problem(decisions: Sequence[VolumeDecision]) -> str | None:
    """The first size limit CanHandle's decisions break."""
    if len(decisions) > MAX_VOLUMES:
        return f"decisions has {len(decisions)} entries; at most {MAX_VOLUMES}"
    for i, d in enumerate(decisions):
        problem = _text(f"decisions[{i}].disk", d.disk, MAX_DISK) or _text(
            f"decisions[{i}].reason", d.reason, MAX_REASON
        )
        if problem:
            return problem
    return None


def driver_info_problem(info: DriverInfo) -> str | None:
    """The first size limit GetDriverInfo's answer breaks."""
    problem = _text("name", info.name, MAX_DRIVER_NAME) or _text(
        "vendor_version", info.vendor_version, MAX_VENDOR_VERSION
    )
    if problem:
        return problem
    if len(info.contract_versions) > MAX_CONTRACT_VERSIONS:
        return (
            f"contract_versions has {len(info.contract_versions)} entries; "
            f"at most {MAX_CONTRACT_VERSIONS}"
        )
    for i, version in enumerate(info.contract_versions):
        problem = _text(f"contract_versions[{i}]", version, MAX_CONTRACT_VERSION)
        if problem:
            return problem
    return map_problem(
        "labels",
        info.labels,
        max_entries=MAX_LABEL_ENTRIES,
        max_key_bytes=MAX_LABEL_KEY_BYTES,
        max_total_bytes=MAX_LABELS_BYTES,
    )


def native_problem(native: NativeSnapshot) -> str | None:
    """The first size limit a hypervisor agent's native snapshot breaks."""
    problem = _text("snapshot_id", native.snapshot_id, MAX_ID) or _text(
        "vm_id", native.vm_id, MAX_ID
    )
    if problem:
        return problem
    if len(native.disks) > MAX_VOLUMES:
        return f"disks has {len(native.disks)} entries; at most {MAX_VOLUMES}"
    for i, disk in enumerate(native.disks):
        problem = _text(f"disks[{i}]", disk, MAX_DISK)
        if problem:
            return problem
    return None


def page_problem(results: Sequence[SnapshotResult], next_token: str) -> str | None:
    """The first size limit a page of ListVMSnapshots breaks."""
    if len(results) > MAX_PAGE_RESULTS:
        return f"vm_snapshots has {len(results)} entries; at most {MAX_PAGE_RESULTS}"
    for i, result in enumerate(results):
        problem = result_problem(result)
        if problem:
            return f"vm_snapshots[{i}].{problem}"
    return _text("next_page_token", next_token, MAX_PAGE_TOKEN)


__all__ = [
    "MAX_CONTRACT_VERSION",
    "MAX_CONTRACT_VERSIONS",
    "MAX_DISK",
    "MAX_DRIVER_NAME",
    "MAX_ERROR_METADATA_ENTRIES",
    "MAX_ERROR_METADATA_KEY",
    "MAX_ERROR_METADATA_VALUE",
    "MAX_ERROR_REASON",
    "MAX_FIELD_PATH",
    "MAX_FIELD_VIOLATIONS",
    "MAX_GROUP_HANDLE_BYTES",
    "MAX_HANDLE_BYTES",
    "MAX_ID",
    "MAX_LABELS_BYTES",
    "MAX_LABEL_ENTRIES",
    "MAX_LABEL_KEY_BYTES",
    "MAX_LOCATOR_BYTES",
    "MAX_MESSAGE",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_ENTRIES",
    "MAX_METADATA_KEY_BYTES",
    "MAX_PAGE_RESULTS",
    "MAX_PAGE_TOKEN",
    "MAX_REASON",
    "MAX_RETRY_DELAY_SECONDS",
    "MAX_VENDOR_VERSION",
    "MAX_VOLUMES",
    "cut",
    "decisions_problem",
    "driver_info_problem",
    "map_problem",
    "native_problem",
    "page_problem",
    "result_problem",
]
