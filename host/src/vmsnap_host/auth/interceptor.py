"""The gRPC server interceptor of the control API: authenticate, check the role,
audit.

Every call to ``vmsnap.host.v1.VMSnapshotService`` goes through it; the health
and reflection services stay open (a load balancer and grpcurl need them, and
they tell nothing about the catalog). With authentication off (the default on
unix sockets and loopback) every caller is the local admin, as before; the
audit log still records every mutating call.

The role each RPC needs is one table (:data:`ROLES`); an RPC missing from it
needs admin, so a new RPC is never open by mistake. The audit record of a call
is written durably (the store's write path, like the journal) before the call
answers: every mutating call, and every refused one.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc

from vmsnap_host.auth import access
from vmsnap_host.auth.authenticate import Authenticator
from vmsnap_host.auth.principal import LOCAL, Principal, Role
from vmsnap_host.store import Store
from vmsnap_host.store.writer import Step
from vmsnap_sdk import limits
from vmsnap_sdk._errors import to_grpc_status
from vmsnap_sdk.errors import PermissionDenied, Unauthenticated, VMSnapError

log = logging.getLogger("vmsnap.host.auth")

SERVICE = "/vmsnap.host.v1.VMSnapshotService/"

#: The role each RPC needs (absent: admin).
ROLES: dict[str, Role] = {
    "GetVMSnapshot": Role.VIEWER,
    "ListVMSnapshots": Role.VIEWER,
    "GetOperation": Role.VIEWER,
    "WaitOperation": Role.VIEWER,
    "ListOperations": Role.VIEWER,
    "GetVM": Role.VIEWER,
    "ListVMs": Role.VIEWER,
    "CreateVMSnapshot": Role.OPERATOR,
    "RevertVMSnapshot": Role.OPERATOR,
    "DeleteVMSnapshot": Role.OPERATOR,
    "DefineVM": Role.OPERATOR,
    "StartVM": Role.OPERATOR,
    "StopVM": Role.OPERATOR,
    "UndefineVM": Role.OPERATOR,
    "RegisterDriver": Role.ADMIN,
    "ListDrivers": Role.ADMIN,
    "RemoveDriver": Role.ADMIN,
    "RegisterAgent": Role.ADMIN,
    "ListAgents": Role.ADMIN,
    "RemoveAgent": Role.ADMIN,
    "Reconcile": Role.ADMIN,
    "ListFindings": Role.ADMIN,
    "ListAuditRecords": Role.ADMIN,
    # Changed blocks and export (issue 15): reads of a snapshot's disks.
    "GetSnapshotDiskBlocks": Role.VIEWER,
    "ReadSnapshotDisk": Role.VIEWER,
    # Live events and cancel (issue 13).
    "WatchOperations": Role.VIEWER,
    "CancelOperation": Role.OPERATOR,
    # Clone to a new VM (issue 14).
    "CreateVMFromSnapshot": Role.OPERATOR,
    # Freeze for backup tools and adopt (issue 14). RenewFreeze and ThawVM name the
    # freeze by its token, which only the caller that froze the VM was given.
    "FreezeVM": Role.OPERATOR,
    "RenewFreeze": Role.OPERATOR,
    "ThawVM": Role.OPERATOR,
    "DiscoverSnapshots": Role.VIEWER,
    "AdoptSnapshot": Role.OPERATOR,
    # Snapshot policies and VM labels (issue 14).
    "CreatePolicy": Role.OPERATOR,
    "GetPolicy": Role.VIEWER,
    "ListPolicies": Role.VIEWER,
    "PausePolicy": Role.OPERATOR,
    "ResumePolicy": Role.OPERATOR,
    "DeletePolicy": Role.OPERATOR,
    "SetVMLabels": Role.OPERATOR,
}

#: RPCs that change something: each call is audited, whatever its result.
MUTATING = frozenset(
    {
        "CreateVMSnapshot",
        "RevertVMSnapshot",
        "DeleteVMSnapshot",
        "DefineVM",
        "StartVM",
        "StopVM",
        "UndefineVM",
        "RegisterDriver",
        "RemoveDriver",
        "RegisterAgent",
        "RemoveAgent",
        "Reconcile",
        "CancelOperation",
        "CreateVMFromSnapshot",
        "FreezeVM",
        "RenewFreeze",
        "ThawVM",
        "AdoptSnapshot",
        "CreatePolicy",
        "PausePolicy",
        "ResumePolicy",
        "DeletePolicy",
        "SetVMLabels",
    }
)


def certificate_identities(context: grpc.aio.ServicerContext[Any, Any]) -> list[str]:
    """The verified client certificate's identities: "CN=<common name>" and its SANs."""
    auth = context.auth_context() or {}
    out = [f"CN={v.decode(errors='replace')}" for v in auth.get("x509_common_name", [])]
    out += [v.decode(errors="replace") for v in auth.get("x509_subject_alternative_name", [])]
    return out


class Gate:
    """Authentication, roles and audit of the control API."""

    def __init__(self, store: Store, authenticator: Authenticator | None) -> None:
        self.store = store
        #: None: authentication off, every caller is LOCAL.
        self.authenticator = authenticator

    def principal(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        if self.authenticator is None:
            return LOCAL
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        return self.authenticator.authenticate(metadata, certificate_identities(context))

    def audit_step(self, call: access.Call) -> Step:
        """The write step of ``call``'s audit record, as the call stands now."""
        principal = call.principal
        return self.store.w_audit(
            principal=principal.name if principal else "",
            via=principal.via if principal else "",
            project=call.project,
            method=call.method,
            target=limits.cut(call.target, 1024),
            request_id=call.request_id[:128],
            result=call.result,
            refused=call.refused,
            detail=limits.cut(call.detail, 1024),
            peer=call.peer[:255],
        )

    async def audit(self, call: access.Call) -> None:
        if call.audited:
            return
        call.audited = True
        principal = call.principal
        try:
            await self.store.write(self.audit_step(call))
        except Exception:
            # The call's work is done; losing its record must be loud, not silent.
            log.exception(
                "audit record not written",
                extra={
                    "fields": {"method": call.method, "principal": principal and principal.name}
                },
            )


Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # generic in the stubs only
    _Interceptor = grpc.aio.ServerInterceptor


class AuthInterceptor(_Interceptor):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(SERVICE):
            return handler  # health, reflection: open
        name = method[len(SERVICE) :]
        gate = self.gate

        async def admit(call: access.Call, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            """Who calls, and may they: else audit the refusal and abort."""
            try:
                call.principal = gate.principal(context)
                needed = ROLES.get(name, Role.ADMIN)
                if call.principal.role < needed:
                    raise PermissionDenied(
                        f"{name} needs the {needed.name.lower()} role; "
                        f"{call.principal.name} is {call.principal.role.name.lower()}",
                    )
            except (Unauthenticated, PermissionDenied) as exc:
                call.refused = True
                access.failed(exc)
                await gate.audit(call)
                await _abort(context, exc)

        def open_call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> access.Call:
            call = access.Call(
                method=name,
                peer=context.peer() or "",
                request_id=str(getattr(request, "request_id", ""))[:128],
            )
            call.recorder = lambda: (
                gate.audit(call) if (name in MUTATING or call.refused) else _nothing()
            )
            if name in MUTATING:
                call.audit_step = lambda: gate.audit_step(call)
            return call

        async def around(
            request: Any, context: grpc.aio.ServicerContext[Any, Any], body: Behavior
        ) -> Any:
            """``body`` inside the call's access context: admitted, then audited."""
            call = open_call(request, context)
            token = access.begin(call)
            try:
                await admit(call, context)
                try:
                    return await body(request, context)
                finally:
                    if name in MUTATING or call.refused:
                        await gate.audit(call)
            finally:
                access.end(token)

        if handler.unary_unary is not None:
            inner = cast(Behavior, handler.unary_unary)

            async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                return await around(request, context, inner)

            return grpc.unary_unary_rpc_method_handler(
                behavior,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            # A server stream (following operations, reading a disk): gated the same
            # way; audited when refused or mutating. The wrapper has the inner
            # handler's form: an async generator, or a coroutine that writes.
            streamer = handler.unary_stream

            if inspect.isasyncgenfunction(streamer):
                generate = cast(StreamBehavior, streamer)

                async def stream(
                    request: Any, context: grpc.aio.ServicerContext[Any, Any]
                ) -> AsyncIterator[Any]:
                    # The generator's body runs inside the call's access context.
                    call = open_call(request, context)
                    token = access.begin(call)
                    try:
                        await admit(call, context)
                        try:
                            async for item in generate(request, context):
                                yield item
                        finally:
                            if name in MUTATING or call.refused:
                                await gate.audit(call)
                    finally:
                        access.end(token)

                handler_fn: Any = stream
            else:
                writes = cast(Behavior, streamer)

                async def written(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                    return await around(request, context, writes)

                handler_fn = written
            return grpc.unary_stream_rpc_method_handler(
                handler_fn,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # No client-streaming RPC exists on the control API: one added later must be
        # gated here before it can be served, so it is refused until then.
        return grpc.unary_unary_rpc_method_handler(_unsupported(name))


def _unsupported(name: str) -> Behavior:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name}: client streams are not served")

    return refuse


async def _nothing() -> None:
    return None


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: VMSnapError) -> None:
    log.info(
        "call refused",
        extra={"fields": {"code": error.code.name, "peer": context.peer() or ""}},
    )
    code, message, trailers = to_grpc_status(error)
    await context.abort(code, message, trailers)


__all__ = ["MUTATING", "ROLES", "AuthInterceptor", "Gate", "certificate_identities"]
