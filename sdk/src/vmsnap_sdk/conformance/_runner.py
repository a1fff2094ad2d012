"""Running the checks against one endpoint and collecting a report.

Checks run one after another (their order is the category order); each has
its own deadline, its own cleanup registry and its own ids, and the cleanup
runs whatever the check did. A problem in cleanup is written into that
check's detail and the run goes on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc

from vmsnap_sdk import _convert as cv
from vmsnap_sdk._tls import ClientTLS, open_channel
from vmsnap_sdk._types import Capability
from vmsnap_sdk.conformance._expect import CheckFailed, CheckSkipped
from vmsnap_sdk.conformance._registry import Check, all_checks, select
from vmsnap_sdk.conformance._resources import Resources
from vmsnap_sdk.conformance._rpc import RpcFailure
from vmsnap_sdk.conformance._session import Connection, Params, Session

Status = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check."""

    id: str
    category: str
    description: str
    status: Status
    detail: str = ""
    seconds: float = 0.0

    def verify(self) -> None:
        """Raise AssertionError with the detail when the check failed."""
        if self.status == "failed":
            raise AssertionError(f"{self.id}: {self.detail}\n({self.description})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "category": self.category,
            "description": self.description,
            "status": self.status,
            "detail": self.detail,
            "seconds": round(self.seconds, 4),
        }


@dataclass
class Report:
    """Every check's outcome, and who the driver said it was."""

    driver: dict[str, Any]
    checks: list[CheckResult] = field(default_factory=list)
    #: Why no check ran ("" when the driver answered): nothing listens at the
    #: address, or the connection cannot be made (TLS, name, permissions).
    unreachable: str = ""

    @property
    def summary(self) -> dict[str, int]:
        counts = {"passed": 0, "failed": 0, "skipped": 0}
        for result in self.checks:
            counts[result.status] += 1
        return counts

    @property
    def ok(self) -> bool:
        return self.summary["failed"] == 0 and not self.unreachable

    def by_status(self, status: Status) -> list[str]:
        return [r.id for r in self.checks if r.status == status]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "driver": self.driver,
            "checks": [r.to_dict() for r in self.checks],
            "summary": self.summary,
        }
        if self.unreachable:
            data["unreachable"] = self.unreachable
        return data


def _driver_facts(conn: Connection) -> dict[str, Any]:
    facts: dict[str, Any] = {"endpoint": conn.address}
    if conn.info is None:
        facts["error"] = f"GetDriverInfo failed: {conn.info_error}"
        return facts
    info = conn.info
    facts.update(
        name=info.name,
        vendor_version=info.vendor_version,
        contract_versions=list(info.contract_versions),
        capabilities=sorted(
            f"CAPABILITY_{cv._enum(Capability, c).name}" for c in info.capabilities
        ),
        limits={
            "max_volumes_per_snapshot": info.limits.max_volumes_per_snapshot,
            "max_snapshots_per_volume": info.limits.max_snapshots_per_volume,
            "max_concurrent_calls": info.limits.max_concurrent_calls,
        },
        labels=dict(info.labels),
    )
    return facts


async def run_check(
    check: Check,
    conn: Connection,
    params: Params,
    *,
    check_timeout: float = 30.0,
    rpc_timeout: float = 10.0,
    cleanup_timeout: float = 10.0,
) -> CheckResult:
    """Run one check and its cleanup; never raises."""
    start = time.monotonic()
    status: Status = "passed"
    detail = ""
    missing = [c for c in check.requires if c not in conn.capabilities]
    resources = Resources()
    if conn.info is not None and missing:
        status = "skipped"
        detail = f"the driver does not advertise CAPABILITY_{missing[0].name}"
    else:
        session = Session(conn, params, resources, rpc_timeout=rpc_timeout)
        try:
            await asyncio.wait_for(check.run(session), check_timeout)
        except CheckSkipped as exc:
            status, detail = "skipped", str(exc)
        except CheckFailed as exc:
            status, detail = "failed", str(exc)
        except RpcFailure as exc:
            status, detail = "failed", f"unexpected {exc.method} → {exc.summary()}"
        except TimeoutError:
            status, detail = "failed", f"the check did not finish within {check_timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - a bad answer must not stop the run
            status, detail = "failed", f"{type(exc).__name__}: {exc}"
    problems = await resources.cleanup(cleanup_timeout)
    if problems:
        note = "cleanup failed: " + "; ".join(problems)
        detail = f"{detail} [{note}]" if detail else note
    return CheckResult(
        check.id, check.category, check.description, status, detail, time.monotonic() - start
    )


async def run_suite(
    address: str,
    *,
    tls: ClientTLS | None = None,
    params: Params | None = None,
    only: Sequence[str] = (),
    checks: Sequence[Check] | None = None,
    check_timeout: float = 30.0,
    rpc_timeout: float = 10.0,
) -> Report:
    """Run the suite (or the checks of ``only``'s categories) against a driver."""
    selected = select(list(checks) if checks is not None else all_checks(), tuple(only))
    channel = open_channel(address, tls)
    try:
        conn = Connection(address, channel)
        await conn.load_info(rpc_timeout)
        report = Report(driver=_driver_facts(conn))
        # A driver that answered leaves the channel READY; one that never did
        # would fail every check with the same UNAVAILABLE: say it once.
        if (
            conn.info is None
            and conn.info_code == grpc.StatusCode.UNAVAILABLE
            and channel.get_state() != grpc.ChannelConnectivity.READY
        ):
            report.unreachable = (
                f"cannot reach the driver at {address}: {conn.info_error}; "
                "is it serving there (and with the TLS settings given)?"
            )
            return report
        for check in selected:
            report.checks.append(
                await run_check(
                    check,
                    conn,
                    params or Params(),
                    check_timeout=check_timeout,
                    rpc_timeout=rpc_timeout,
                )
            )
        return report
    finally:
        await channel.close(None)
