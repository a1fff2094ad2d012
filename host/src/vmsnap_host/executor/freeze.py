"""The freeze lifecycle of a take: quiesce under a lease, renew, thaw for sure.

A freeze ends with its take (docs/design.md, "Freeze"): the thaw is retried
until the agent confirms it or the agent's lease has surely run out (the agent
then thawed by itself), never given up after a few tries. The host tracks the
lease on its own clock from the moment it *sent* each Quiesce/RenewQuiesce, so
"surely run out" never depends on the agent's clock. Recovery thaws by the
journaled token, or — when the host died between Quiesce and journaling the
token — by operation id: the agent records which operation holds each freeze.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TypeVar

from vmsnap_host import checks
from vmsnap_host.config import Settings
from vmsnap_host.model import QuiescePolicy
from vmsnap_host.renewer import Renewer
from vmsnap_sdk import (
    HypervisorAgent,
    NativeSnapshotAtFreeze,
    QuiesceMethod,
    QuiesceResult,
    UnquiesceResult,
)
from vmsnap_sdk.errors import (
    Aborted,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    Reason,
    TransientError,
    VMSnapError,
)

log = logging.getLogger("vmsnap.host.freeze")

_T = TypeVar("_T")

#: Extra time past the lease before the host trusts the agent to have thawed.
_LEASE_MARGIN = 1.0


async def with_deadline(call: Awaitable[_T], seconds: float, what: str) -> _T:
    """``call`` within ``seconds``, else DeadlineExceeded (the call is cancelled).

    ``asyncio.timeout`` runs the call in the caller's task: ``wait_for`` made a
    task of it, a few loop turns more for each of a take's calls."""
    try:
        async with asyncio.timeout(max(seconds, 0.01)):
            return await call
    except TimeoutError as exc:
        raise DeadlineExceeded(f"{what}: no answer within {seconds:.1f} s") from exc


@dataclass
class Freeze:
    """A freeze in force, as the host knows it."""

    agent: HypervisorAgent
    agent_name: str
    operation_id: str
    result: QuiesceResult
    lease: float
    started: datetime
    started_mono: float
    #: Monotonic time by which the agent has surely thawed by itself.
    ends_by: float
    renewals: Renewer | None = None
    thawed: bool = False
    #: What really ended the freeze, in words (for the record).
    ended: str = ""
    frozen_seconds: float = 0.0
    #: Why the native snapshot the Quiesce answered is not believed (it fails the
    #: checks of a TakeNativeSnapshot answer): the take fails with it.
    problem: VMSnapError | None = None

    def seconds_left(self) -> float:
        return self.ends_by - _LEASE_MARGIN - time.monotonic()

    @property
    def released(self) -> bool:
        """The agent ended the freeze in the Quiesce (QuiesceResponse.released), as
        believed (:func:`_believed` keeps it only with the snapshot that ended it):
        no renewal, no Unquiesce."""
        return self.result.released


def _believed(
    result: QuiesceResult, at_freeze: NativeSnapshotAtFreeze | None, agent: str, vm_id: str
) -> tuple[QuiesceResult, VMSnapError | None]:
    """What of a Quiesce's answer the host believes. A native snapshot only when one
    was asked for and it passes the checks of a TakeNativeSnapshot answer (the id,
    the VM, exactly the disks, no memory); ``released`` only with it, and only for
    GUEST_FREEZE_AND_CUT (the one method that holds nothing after its cut): else an
    Unquiesce follows as always. A snapshot that fails the checks is returned as the
    problem: the take fails with it, and the freeze is thawed all the same."""
    native = result.native_snapshot if at_freeze is not None else None
    problem: VMSnapError | None = None
    if native is not None and at_freeze is not None:
        try:
            checks.check_native(
                agent,
                at_freeze.snapshot_id,
                at_freeze.disks,
                native,
                vm_id=vm_id,
                include_memory=False,
            )
        except VMSnapError as exc:
            problem, native = exc, None
    released = (
        result.released
        and native is not None
        and result.method is QuiesceMethod.GUEST_FREEZE_AND_CUT
    )
    return replace(result, native_snapshot=native, released=released), problem


def choose_method(
    policy: QuiescePolicy,
    offered: frozenset[QuiesceMethod],
    agent: str,
    *,
    native_only: bool = False,
) -> QuiesceMethod:
    """The freeze for ``policy`` among the agent's methods. ``native_only``: the plan
    is the agent's own native snapshot alone, which cuts every disk at one instant by
    itself; overlays would add only their creation and their commit to the take. So
    the guest is frozen for the agent's native cut alone (GUEST_FREEZE_AND_CUT: thawed
    as soon as the cut is made) or else for the take (GUEST_FREEZE), when offered."""
    if native_only and policy is not QuiescePolicy.OFF:
        for method in (QuiesceMethod.GUEST_FREEZE_AND_CUT, QuiesceMethod.GUEST_FREEZE):
            if method in offered:
                return method
    if policy is QuiescePolicy.OFF:
        if QuiesceMethod.OVERLAY in offered:
            return QuiesceMethod.OVERLAY
        raise FailedPrecondition(
            f"the plan needs a freeze but agent {agent} offers no overlay freeze; take the "
            "snapshot with --quiesce best-effort or required",
            reason=Reason.NO_QUIESCE_METHOD,
        )
    for method in (QuiesceMethod.GUEST_FREEZE_AND_OVERLAY, QuiesceMethod.GUEST_FREEZE):
        if method in offered:
            return method
    if policy is QuiescePolicy.BEST_EFFORT and QuiesceMethod.OVERLAY in offered:
        return QuiesceMethod.OVERLAY
    raise FailedPrecondition(
        f"agent {agent} offers no guest freeze; take the snapshot with --quiesce off or "
        "best-effort",
        reason=Reason.NO_QUIESCE_METHOD,
    )


def _unanswered(exc: VMSnapError) -> bool:
    """Whether a call got no answer from the peer: a transient error (UNAVAILABLE,
    DEADLINE_EXCEEDED, CANCELLED, UNKNOWN) or INTERNAL, the registry's refusal to
    call a peer that is not serving included. Any other status is its answer."""
    return isinstance(exc, TransientError | Internal)


def _outcome_unknown(exc: VMSnapError) -> bool:
    """Whether a call failed without the peer's answer and may have acted
    (_unanswered), but for the registry's refusal to send to an agent that is not
    serving (AGENT_NOT_SERVING: the call never left the host)."""
    return exc.reason != Reason.AGENT_NOT_SERVING and _unanswered(exc)


class FreezeKeeper:
    """Quiesce, renew and thaw through one agent, so that no freeze outlives its take."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def freeze(
        self,
        agent: HypervisorAgent,
        agent_name: str,
        vm_id: str,
        operation_id: str,
        policy: QuiescePolicy,
        method: QuiesceMethod,
        *,
        native_snapshot: bool = True,
        at_freeze: NativeSnapshotAtFreeze | None = None,
    ) -> Freeze:
        """``native_snapshot``: whether the take calls TakeNativeSnapshot under this
        freeze; when it does not (every disk on an array) the agent is told so
        (QuiesceRequest.no_native_snapshot) and prepares nothing for one inside
        the freeze (the QEMU agent: no cut of its local disks).

        ``at_freeze``: the native snapshot asked for in the Quiesce itself
        (QuiesceRequest.native_snapshot); the answer's ``native_snapshot`` is it,
        when the agent took it. A freeze the agent answers ``released`` (it ended
        at the cut, nothing held) needs no renewal and no Unquiesce."""
        lease = self.settings.quiesce_lease_seconds
        best_effort = policy is not QuiescePolicy.REQUIRED
        started, sent = datetime.now(UTC), time.monotonic()
        saves_memory = method is QuiesceMethod.PAUSE_AND_SAVE_MEMORY
        # Saving the memory copies the whole RAM before the pause: the call may take
        # longer than the lease, which the agent starts when the VM is paused.
        timeout = lease + (self.settings.take_timeout_seconds if saves_memory else 0.0)
        try:
            result = await with_deadline(
                agent.quiesce(
                    vm_id,
                    method,
                    lease,
                    best_effort,
                    operation_id,
                    no_native_snapshot=not native_snapshot,
                    native_snapshot=at_freeze,
                ),
                timeout,
                "Quiesce",
            )
        except FailedPrecondition as exc:
            if policy is QuiescePolicy.REQUIRED:
                raise FailedPrecondition(
                    f"quiesce is REQUIRED but the guest could not be frozen: {exc.message}; "
                    "fix the guest agent, or take the snapshot with --quiesce best-effort to "
                    "accept a lower consistency (it is recorded)",
                    reason=exc.reason or Reason.QUIESCE_FAILED,
                ) from exc
            raise
        except BaseException as exc:
            if not isinstance(exc, VMSnapError) or _outcome_unknown(exc):
                # No answer (the agent died after freezing, the call timed out or was
                # cancelled): the agent may hold a freeze for this operation. Thaw it
                # before the take ends, as a thaw is retried (docs/design.md, "Freeze").
                # The agent may have started its lease at any moment until now.
                await self._thaw_unanswered(
                    agent, agent_name, operation_id, time.monotonic() + lease
                )
            raise
        if saves_memory:
            sent = time.monotonic()  # the agent's lease began when the VM paused
        result, problem = _believed(result, at_freeze, agent_name, vm_id)
        freeze = Freeze(
            agent=agent,
            agent_name=agent_name,
            operation_id=operation_id,
            result=result,
            lease=lease,
            started=started,
            started_mono=sent,
            ends_by=sent + lease + _LEASE_MARGIN,
            problem=problem,
        )
        if freeze.released:
            # Over already, by the agent's word with the snapshot that ended it.
            freeze.thawed = True
            freeze.frozen_seconds = time.monotonic() - sent
            freeze.ended = "thawed at the cut (the agent took the native snapshot in the Quiesce)"
            return freeze
        freeze.renewals = Renewer(lease / 3, functools.partial(self._renew, freeze))
        return freeze

    async def _thaw_unanswered(
        self, agent: HypervisorAgent, agent_name: str, operation_id: str, lease_end: float
    ) -> None:
        """Unquiesce by operation id after a Quiesce whose outcome is unknown: retried
        until the agent answers or the lease it may have given has surely ended (it
        thawed by itself then). Thawing nothing is an answer too."""
        _, error = await self._unquiesce_retried(
            lambda: agent.unquiesce("", operation_id=operation_id),
            lease_end + _LEASE_MARGIN,
            # While the agent cannot be reached (the registry refusing to call it
            # too, until its health check passes), it may still hold the freeze.
            retry=_unanswered,
        )
        if error is not None:
            log.warning(
                "thaw by operation id after an unanswered Quiesce not confirmed",
                extra={
                    "fields": {"agent": agent_name, "operation": operation_id, "error": str(error)}
                },
            )

    async def _unquiesce_retried(
        self,
        call: Callable[[], Awaitable[UnquiesceResult]],
        ends_by: float,
        *,
        retry: Callable[[VMSnapError], bool] = lambda _: True,
    ) -> tuple[UnquiesceResult | None, VMSnapError | None]:
        """An Unquiesce (``call``), retried with a growing pause (50 ms to 1 s) while
        ``retry`` says its error may pass and ``ends_by`` (monotonic) is not reached:
        the agent's answer, or None and the last error."""
        delay = 0.05
        while True:
            try:
                answer = await with_deadline(
                    call(), self.settings.call_timeout_seconds, "Unquiesce"
                )
            except VMSnapError as exc:
                left = ends_by - time.monotonic()
                if left <= 0 or not retry(exc):
                    return None, exc
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 1.0)
            else:
                return answer, None

    async def _renew(self, freeze: Freeze) -> bool:
        sent = time.monotonic()
        try:
            await with_deadline(
                freeze.agent.renew_quiesce(freeze.result.token, freeze.lease),
                freeze.lease / 3,
                "RenewQuiesce",
            )
        except VMSnapError as exc:
            log.warning(
                "freeze lease renewal failed",
                extra={"fields": {"operation": freeze.operation_id, "error": str(exc)}},
            )
            return True
        freeze.ends_by = max(freeze.ends_by, sent + freeze.lease + _LEASE_MARGIN)
        return True

    def take_deadline(self, freeze: Freeze | None) -> float:
        """How long the groups may take: inside the lease when frozen (a take still
        running when the agent would thaw could not be consistent anyway)."""
        if freeze is None:
            return self.settings.take_timeout_seconds
        return max(0.1, min(self.settings.take_timeout_seconds, freeze.seconds_left() * 0.8))

    async def thaw(self, freeze: Freeze) -> VMSnapError | None:
        """Thaw, retrying until the agent confirms or its lease surely ended. Returns
        None when the freeze held to the end, else why the cut may not be consistent."""
        if freeze.released:
            return None
        if freeze.renewals is not None:
            await freeze.renewals.stop()
        token = freeze.result.token
        result, last = await self._unquiesce_retried(
            lambda: freeze.agent.unquiesce(token), freeze.ends_by
        )
        if result is not None:
            freeze.thawed = True
            freeze.frozen_seconds = time.monotonic() - freeze.started_mono
            if not result.thawed_now:
                freeze.ended = "the agent had thawed the VM by itself (lease ran out)"
                return Aborted(
                    "the freeze lease ran out before every group had cut: the agent thawed the "
                    "VM by itself, so the groups may not share one point in time; retry, or "
                    "raise quiesce_lease_seconds",
                    reason=Reason.FREEZE_LEASE_EXPIRED,
                )
            freeze.ended = "thawed"
            return None
        # The agent never answered, and its lease has surely run out: it thawed the VM
        # by itself (the contract). The cut may not be consistent: fail the take.
        freeze.thawed = True
        freeze.frozen_seconds = freeze.ends_by - freeze.started_mono
        freeze.ended = "the agent did not answer the thaw; its lease ended, so it thawed by itself"
        log.warning(
            "thaw unconfirmed; lease over",
            extra={"fields": {"operation": freeze.operation_id, "error": str(last)}},
        )
        return Aborted(
            f"agent {freeze.agent_name} did not confirm the thaw ({last}); its freeze lease "
            "has ended, so the VM thawed by itself, but the groups may not share one point in "
            "time; retry",
            reason=Reason.THAW_UNCONFIRMED,
        )

    async def thaw_recorded(
        self, agent: HypervisorAgent | None, token: str, operation_id: str
    ) -> str:
        """Recovery: thaw what an interrupted operation may still hold (by its token
        when journaled, else by operation id). Returns what really happened."""
        if agent is None:
            return "its agent is not registered; the agent's lease thaws the VM by itself"
        try:
            if token:
                result = await with_deadline(
                    agent.unquiesce(token), self.settings.call_timeout_seconds, "Unquiesce"
                )
            else:
                result = await with_deadline(
                    agent.unquiesce("", operation_id=operation_id),
                    self.settings.call_timeout_seconds,
                    "Unquiesce",
                )
        except VMSnapError as exc:
            return (
                f"the agent could not be reached to thaw ({exc.message}); its freeze lease "
                "thaws the VM by itself, and the reconciler thaws it if it still holds"
            )
        if result.thawed_now:
            return "the VM was frozen and is thawed now"
        return "the VM was not frozen"


__all__ = ["Freeze", "FreezeKeeper", "choose_method", "with_deadline"]
