"""FreezeVM / RenewFreeze / ThawVM: a VM frozen for a third-party tool's cut.

A freeze is a FREEZE operation (docs/design.md, "Freeze API for third-party
tools"). FreezeVM journals it, takes the VM's lease in the same commit (so no
take, revert or delete runs while it holds: they are refused at admission with
ABORTED, VM_FROZEN, and another replica's would wait for the lease), then asks
the agent to Quiesce under the *caller's* lease. The agent thaws by itself when
that lease lapses: a caller that crashed, or a host that went down, can never
leave the VM frozen. While the freeze holds, the manager runs :meth:`hold` as
the operation's work: it keeps the VM's lease and ends the operation when
ThawVM thawed it, or when the lease lapsed (error FREEZE_EXPIRED, after making
sure the agent thawed). After a host restart recovery runs :meth:`hold` again:
a freeze still within its lease holds on (its caller may go on renewing), one
that lapsed is recorded so.

The expiry is kept on the host's clock from the moment each Quiesce or
RenewQuiesce was *sent*: the agent's own lease starts later, so the agent has
surely thawed by then (plus a margin). RenewFreeze and ThawVM may reach any
replica: the token names the operation, whose journal holds the agent's token
and the expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from vmsnap_host.executor.errors import error_info
from vmsnap_host.executor.freeze import choose_method, with_deadline
from vmsnap_host.model import OperationRecord, OperationType, QuiescePolicy
from vmsnap_host.registry import Registry
from vmsnap_host.state import OperationClosed
from vmsnap_host.store import Store
from vmsnap_sdk import Consistency, QuiesceMethod, VMState
from vmsnap_sdk.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    Reason,
    VMSnapError,
)

log = logging.getLogger("vmsnap.host.freeze_api")

MIN_LEASE = 1.0
MAX_LEASE = 600.0
#: Past the expiry before the host records a lapse: a renewal the agent accepted
#: just before its lease ran out has been journaled by then.
LAPSE_MARGIN = 0.5
#: How often a held freeze re-reads its operation (ThawVM may end it on another replica).
POLL = 0.2


@dataclass(frozen=True)
class FreezeState:
    """A freeze as FreezeVM answers it."""

    token: str
    operation_id: str
    consistency: Consistency
    method: QuiesceMethod
    expire_time: datetime
    message: str = ""


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _expired(op: OperationRecord) -> FailedPrecondition:
    """Why a freeze that ended cannot be renewed or thawed any more."""
    if op.error is None:
        return FailedPrecondition(
            f"freeze {op.id} of VM {op.vm_id} was thawed already (ThawVM); freeze again "
            "with a new request_id",
            reason=Reason.FREEZE_EXPIRED,
        )
    return FailedPrecondition(op.error.message, reason=Reason.FREEZE_EXPIRED)


def _lapsed(op: OperationRecord, expires_at: float, how: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"the freeze of VM {op.vm_id} expired at {_at(expires_at).isoformat()} (its lease "
        f"was not renewed in time); {how}, so the VM's writes may have resumed: a cut made "
        "after that may not be consistent; freeze again with a new request_id",
        reason=Reason.FREEZE_EXPIRED,
    )


class FreezeAPI:
    """The three RPCs, and the work a FREEZE operation does while it holds."""

    def __init__(self, store: Store, registry: Registry, call_timeout: float) -> None:
        #: Per held freeze: set by ThawVM to end the hold at once; set when it ended.
        self._wakers: dict[str, asyncio.Event] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self.store = store
        self.registry = registry
        self.call_timeout = call_timeout

    # --- FreezeVM -------------------------------------------------------------------

    def replay(self, op: OperationRecord, vm_id: str) -> FreezeState:
        """The answer to a retry of FreezeVM with the same request_id."""
        if op.type is not OperationType.FREEZE or op.vm_id != vm_id:
            raise AlreadyExists(
                f"request_id {op.request_id} was already used for another request "
                f"({op.type.name} on VM {op.vm_id}); use a new request_id",
                reason=Reason.REQUEST_ID_REUSED,
            )
        if op.done:
            raise _expired(op)
        j = op.journal
        if not j.get("agent_token"):
            raise Aborted(
                f"freeze {op.id} of VM {op.vm_id} is still being made; retry",
                reason=Reason.VM_BUSY,
            )
        return self._state(op)

    @staticmethod
    def _state(op: OperationRecord) -> FreezeState:
        j = op.journal
        return FreezeState(
            token=str(j["token"]),
            operation_id=op.id,
            consistency=Consistency[str(j["consistency"])],
            method=QuiesceMethod[str(j["method"])],
            expire_time=_at(float(j["expires_at"])),
            message=str(j.get("message", "")),
        )

    @staticmethod
    def new_token(operation_id: str) -> str:
        # The operation id (any replica finds the freeze) and a secret: operation
        # ids are shown to every reader of ListOperations, the token thaws.
        return f"{operation_id}.{secrets.token_urlsafe(18)}"

    async def check_vm(self, vm_id: str, policy: QuiescePolicy) -> tuple[str, QuiesceMethod]:
        """The VM's agent and the method to freeze it with (the request's checks)."""
        entry, vm = await self.registry.find_vm(vm_id)
        if vm.state is not VMState.RUNNING:
            raise FailedPrecondition(
                f"VM {vm_id} is {vm.state.name}; a freeze needs it RUNNING (a stopped VM "
                "writes nothing: cut it without a freeze)",
                reason=Reason.VM_STATE,
            )
        offered = (entry.info.quiesce_methods if entry.info else frozenset()) or (
            frozenset(QuiesceMethod) - {QuiesceMethod.UNSPECIFIED}
        )
        return entry.name, choose_method(policy, offered, entry.name)

    async def refuse_if_busy(self, vm_id: str) -> None:
        """FreezeVM does not queue: a freeze the caller waits minutes for is useless
        to it (its own cut has a schedule), and a take behind it would be refused."""
        for _, op in await self.store.read(self.store.list_operations, vm_id, None, 20, True):
            if op.type is OperationType.FREEZE:
                raise Aborted(
                    f"VM {vm_id} is frozen already (freeze operation {op.id}); thaw that "
                    "one first or wait for its lease to lapse",
                    reason=Reason.VM_FROZEN,
                )
            raise Aborted(
                f"VM {vm_id} has a {op.type.name} operation running or queued ({op.id}); "
                "retry when it is done (WaitOperation)",
                reason=Reason.VM_BUSY,
            )

    async def quiesce(
        self,
        op: OperationRecord,
        agent_name: str,
        method: QuiesceMethod,
        lease: float,
        policy: QuiescePolicy,
    ) -> FreezeState:
        """Freeze through the agent and journal it; on failure the operation ends
        failed (and anything the agent may have frozen is thawed by operation id)."""
        agent = self.registry.agent(agent_name)
        sent = time.time()
        try:
            result = await with_deadline(
                agent.quiesce(op.vm_id, method, lease, policy is not QuiescePolicy.REQUIRED, op.id),
                self.call_timeout,
                "Quiesce",
            )
        except VMSnapError as exc:
            if policy is QuiescePolicy.REQUIRED and isinstance(exc, FailedPrecondition):
                exc = FailedPrecondition(
                    f"quiesce is REQUIRED but the guest could not be frozen: {exc.message}; "
                    "fix the guest agent, or freeze with --quiesce best-effort",
                    reason=exc.reason or Reason.QUIESCE_FAILED,
                )
            # The outcome may be unknown (a timeout): thaw whatever this operation
            # may hold; the agent's lease does it anyway if this fails too.
            with contextlib.suppress(VMSnapError):
                await with_deadline(
                    agent.unquiesce("", operation_id=op.id), self.call_timeout, "Unquiesce"
                )
            await self.store.write(self.store.w_finish(op.id, error_info(exc), "not frozen"))
            raise exc from None
        await self.store.write(
            self.store.w_journal(
                op.id,
                "frozen",
                50,
                agent=agent_name,
                agent_token=result.token,
                consistency=result.consistency.name,
                method=result.method.name,
                frozen_at=sent,
                expires_at=sent + lease,
                message=result.warning,
            )
        )
        log.info(
            "VM frozen for a caller",
            extra={"fields": {"vm": op.vm_id, "operation": op.id, "lease": lease}},
        )
        record = await self.store.read(self.store.get_operation, op.id)
        assert record is not None
        return self._state(record)

    # --- RenewFreeze, ThawVM --------------------------------------------------------

    async def _by_token(self, token: str) -> OperationRecord:
        operation_id = token.partition(".")[0]
        op = await self.store.read(self.store.get_operation, operation_id) if operation_id else None
        if (
            op is None
            or op.type is not OperationType.FREEZE
            or not hmac.compare_digest(str(op.journal.get("token", "")), token)
        ):
            raise NotFound(
                "no freeze has this token; freeze with FreezeVM", reason=Reason.FREEZE_NOT_FOUND
            )
        return op

    async def _end(self, op: OperationRecord, error: VMSnapError | None, step: str) -> None:
        """Finish the operation; another path (ThawVM, the hold) may have first."""
        with contextlib.suppress(OperationClosed):
            await self.store.write(
                self.store.w_finish(op.id, error_info(error) if error else None, step)
            )

    async def renew(self, token: str, lease: float) -> datetime:
        op = await self._by_token(token)
        if op.done:
            raise _expired(op)
        j = op.journal
        expires_at = float(j.get("expires_at", 0.0))
        if time.time() > expires_at:
            raise _lapsed(op, expires_at, "the VM's agent thawed it then")
        agent = self.registry.agent(str(j["agent"]))
        sent = time.time()
        try:
            await with_deadline(
                agent.renew_quiesce(str(j["agent_token"]), lease),
                self.call_timeout,
                "RenewQuiesce",
            )
        except NotFound:
            error = _lapsed(op, expires_at, "the VM's agent had thawed it")
            await self._end(op, error, "expired")
            raise error from None
        try:
            await self.store.write(
                self.store.w_journal(op.id, "frozen", 50, expires_at=sent + lease)
            )
        except OperationClosed:
            ended = await self.store.read(self.store.get_operation, op.id)
            raise _expired(ended or op) from None
        return _at(sent + lease)

    async def thaw(self, token: str) -> float:
        """Thaw; how long the VM was frozen."""
        op = await self._by_token(token)
        j = op.journal
        if op.done:
            if op.error is None:
                return float(j.get("frozen_seconds", 0.0))  # thawed already: idempotent
            raise _expired(op)
        if not j.get("agent_token"):
            raise Aborted(f"freeze {op.id} is still being made; retry", reason=Reason.VM_BUSY)
        expires_at = float(j["expires_at"])
        agent = self.registry.agent(str(j["agent"]))
        result = await with_deadline(
            agent.unquiesce(str(j["agent_token"])), self.call_timeout, "Unquiesce"
        )
        if not result.thawed_now:
            error = _lapsed(op, expires_at, "the VM's agent thawed it then")
            await self._end(op, error, "expired")
            raise error
        try:
            await self.store.write(
                self.store.w_journal(
                    op.id, "thawed", 100, frozen_seconds=result.frozen_for_seconds
                ),
                self.store.w_finish(op.id, None, "thawed"),
            )
        except OperationClosed:
            ended = await self.store.read(self.store.get_operation, op.id)
            if ended is not None and ended.error is not None:
                raise _expired(ended) from None
        # Wake the holding task now (not at its next poll) and let it end, so the
        # VM's queue is free when ThawVM answers: a take sent right after is not
        # refused as queued behind a finished freeze.
        waker = self._wakers.get(op.id)
        if waker is not None:
            waker.set()
            hold_ended = self._ended.get(op.id)
            if hold_ended is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(hold_ended.wait()), timeout=2.0)
        log.info(
            "VM thawed by its caller",
            extra={"fields": {"vm": op.vm_id, "frozen_seconds": result.frozen_for_seconds}},
        )
        return result.frozen_for_seconds

    # --- while it holds -------------------------------------------------------------

    async def hold(self, op: OperationRecord, *, resume: bool) -> None:
        """The FREEZE operation's work, run by the manager holding the VM's lease:
        until ThawVM ended it, or its lease lapsed."""
        waker = self._wakers.setdefault(op.id, asyncio.Event())
        ended = self._ended.setdefault(op.id, asyncio.Event())
        try:
            await self._hold(op, waker)
        finally:
            self._wakers.pop(op.id, None)
            self._ended.pop(op.id, None)
            ended.set()

    async def _hold(self, op: OperationRecord, waker: asyncio.Event) -> None:
        while True:
            record = await self.store.read(self.store.get_operation, op.id)
            if record is None or record.done:
                return
            j = record.journal
            if not j.get("agent_token"):
                # The host stopped between Quiesce and journaling its token: thaw by
                # operation id (the agent records which operation holds a freeze).
                how = await self._thaw_quietly(str(j.get("agent", "")), "", op.id)
                await self._end(
                    record,
                    Aborted(
                        f"the host restarted while freezing VM {op.vm_id}: {how}; freeze "
                        "again with a new request_id",
                        reason=Reason.HOST_RESTARTED,
                    ),
                    "not frozen",
                )
                return
            expires_at = float(j["expires_at"])
            left = expires_at + LAPSE_MARGIN - time.time()
            if left <= 0:
                how = await self._thaw_quietly(str(j["agent"]), str(j["agent_token"]), "")
                log.warning(
                    "freeze lease lapsed",
                    extra={"fields": {"vm": op.vm_id, "operation": op.id, "thaw": how}},
                )
                await self._end(record, _lapsed(record, expires_at, how), "expired")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waker.wait(), timeout=min(left, POLL))
            waker.clear()

    async def _thaw_quietly(self, agent_name: str, token: str, operation_id: str) -> str:
        """Make sure the agent thawed; what happened, in words."""
        entry = self.registry.agent_entry(agent_name) if agent_name else None
        if entry is None:
            return "its agent is not registered: the agent's lease thawed the VM"
        try:
            agent = self.registry.agent(agent_name)
            result = await with_deadline(
                agent.unquiesce(token, operation_id=operation_id),
                self.call_timeout,
                "Unquiesce",
            )
        except VMSnapError as exc:
            return f"the agent did not answer ({exc.message}): its lease thawed the VM"
        if result.thawed_now:
            return "the host thawed the VM"
        return "the VM's agent thawed it by its lease"


__all__ = ["MAX_LEASE", "MIN_LEASE", "FreezeAPI", "FreezeState"]
