"""identity: GetDriverInfo says who the driver is and what it speaks."""

from __future__ import annotations

import re

from vmsnap_sdk._proto.driver.v1 import driver_pb2
from vmsnap_sdk._validate import DRIVER_NAME_PATTERN
from vmsnap_sdk.conformance._expect import expect
from vmsnap_sdk.conformance._registry import check
from vmsnap_sdk.conformance._rpc import call
from vmsnap_sdk.conformance._session import Session

SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")


@check(
    "identity.name_reverse_dns",
    "The name is reverse-DNS and at most 63 chars: the host keys drivers by it",
)
async def name_reverse_dns(s: Session) -> None:
    name = s.info.name
    expect(
        0 < len(name) <= 63 and DRIVER_NAME_PATTERN.match(name) is not None,
        "a reverse-DNS name of at most 63 chars, e.g. com.example.array",
        repr(name),
    )


@check(
    "identity.contract_v1",
    'contract_versions contains "v1": the host only speaks versions it knows',
)
async def contract_v1(s: Session) -> None:
    versions = list(s.info.contract_versions)
    expect("v1" in versions, 'contract_versions containing "v1"', versions)


@check("identity.vendor_version_semver", "vendor_version is a semantic version, shown to operators")
async def vendor_version(s: Session) -> None:
    version = s.info.vendor_version
    expect(SEMVER.match(version) is not None, "a semantic version such as 1.4.2", repr(version))


@check(
    "identity.capabilities_known",
    "Capabilities are known values, each once: the host plans with them",
)
async def capabilities_known(s: Session) -> None:
    caps = list(s.info.capabilities)
    known = set(driver_pb2.Capability.values()) - {driver_pb2.CAPABILITY_UNSPECIFIED}
    unknown = [c for c in caps if c not in known]
    expect(not unknown, "only defined capabilities (never UNSPECIFIED)", unknown)
    expect(len(caps) == len(set(caps)), "each capability once", caps)


@check("identity.limits_sane", "Limits are zero (none) or positive: the host plans within them")
async def limits_sane(s: Session) -> None:
    limits = s.info.limits
    values = {
        "max_volumes_per_snapshot": limits.max_volumes_per_snapshot,
        "max_snapshots_per_volume": limits.max_snapshots_per_volume,
        "max_concurrent_calls": limits.max_concurrent_calls,
    }
    bad = {k: v for k, v in values.items() if v < 0}
    expect(not bad, "limits of 0 (no limit) or more", bad)


@check("identity.info_stable", "GetDriverInfo answers the same each time: the host caches it")
async def info_stable(s: Session) -> None:
    again = await call(
        "GetDriverInfo", s.driver.GetDriverInfo, driver_pb2.GetDriverInfoRequest(), s.rpc_timeout
    )
    first = s.info
    expect(
        again.SerializeToString(deterministic=True) == first.SerializeToString(deterministic=True),
        "the same answer twice",
        f"{first.name} {first.vendor_version} then {again.name} {again.vendor_version}",
    )
