"""Client of qemu-ga, the QEMU guest agent, over the host side of its virtio-serial port.

QEMU exposes the port as a unix socket (a chardev). The protocol is QMP-like JSON
without greeting or capabilities negotiation, and the channel may hold stale
replies from a previous client that gave up (the guest never knows the host
reconnected). ``guest-sync-delimited`` resynchronises: we send a 0xFF byte (which
makes qemu-ga reset its JSON parser), then the sync with a random id; qemu-ga
answers with a 0xFF byte followed by the id, and everything before the 0xFF is
discarded.

A guest that does not run qemu-ga still has the socket (QEMU accepts the
connection), so "unavailable" can only be detected by a bounded wait for the sync
reply: that is :class:`GuestAgentUnavailable`.

:class:`SharedGuestAgent` keeps one connection per VM open between calls: a
fresh connection's first sync waits up to ~100 ms for qemu-ga, which polls its
port that often while no host client is attached — a thaw on a new connection
kept the guest frozen that much longer (issue 16). It reconnects (and resyncs)
only after the connection broke or may hold an unread reply. By default the
connection stays open for the agent's life, as libvirt keeps its own: a
periodic take then never pays a new connection's sync (docs/design.md, "CPU and
freeze time"). QEMU serves one client on the port at a time, so a deployment
where another tool (a test's probe) talks to qemu-ga beside the agent sets an
idle close (``vmsnap-agent --guest-agent-idle-close SECONDS``); a held
connection (:meth:`SharedGuestAgent.hold`, the guest is frozen) is never closed
for idleness: the thaw always finds it open.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

from .errors import GuestAgentError, GuestAgentUnavailable

# A live guest answers the sync in milliseconds even under TCG; seconds mean no agent.
DEFAULT_SYNC_TIMEOUT = 3.0
DEFAULT_COMMAND_TIMEOUT = 30.0
#: How long an unused connection stays open: None, for the agent's life (the
#: default, as libvirt does); a number of seconds lets another client reach
#: qemu-ga between calls (keep it under that client's sync timeout); 0 closes it
#: after each use.
IDLE_CLOSE: float | None = None


class GuestAgentClient:
    """One connection to qemu-ga; use as ``async with GuestAgentClient(path) as ga``."""

    def __init__(self, socket_path: str, sync_timeout: float = DEFAULT_SYNC_TIMEOUT) -> None:
        self._path = socket_path
        self._sync_timeout = sync_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        #: A command was sent whose reply was not read (its caller was cancelled):
        #: the next reply on this connection may be that one.
        self.in_flight = False

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def __aenter__(self) -> GuestAgentClient:
        try:
            async with asyncio.timeout(self._sync_timeout):
                self._reader, self._writer = await asyncio.open_unix_connection(self._path)
        except (OSError, TimeoutError) as exc:
            raise GuestAgentUnavailable(f"cannot connect to guest agent socket: {exc}") from exc
        try:
            await self._sync()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None
            self._reader = None

    async def _sync(self) -> None:
        sync_id = random.randint(1, 2**31 - 1)
        assert self._reader is not None and self._writer is not None
        self._writer.write(b"\xff")
        self._send({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}})
        try:
            async with asyncio.timeout(self._sync_timeout):
                await self._writer.drain()
                while True:
                    # Skip stale replies (and the parse error our 0xFF causes) up to
                    # the delimiter qemu-ga puts right before the sync reply.
                    await self._reader.readuntil(b"\xff")
                    line = await self._reader.readline()
                    try:
                        reply = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(reply, dict) and reply.get("return") == sync_id:
                        return
        except (TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
            raise GuestAgentUnavailable(
                f"guest agent did not answer guest-sync-delimited within {self._sync_timeout}s"
            ) from exc

    def _send(self, msg: dict[str, Any]) -> None:
        assert self._writer is not None
        self._writer.write(json.dumps(msg).encode() + b"\n")

    async def execute(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> Any:
        """Run one command; raise GuestAgentError on an error reply."""
        (outcome,) = await self.execute_each([(command, arguments)], timeout)
        if isinstance(outcome, GuestAgentError):
            raise outcome
        return outcome

    async def execute_each(
        self,
        commands: Sequence[tuple[str, dict[str, Any] | None]],
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> list[Any]:
        """Send the commands in one write and read their replies in order: one round
        trip for all (qemu-ga runs them one after another, each to its end). Each
        outcome is the command's return, or its :class:`GuestAgentError` (an error
        reply); :class:`GuestAgentUnavailable` is raised for the lot."""
        if self._reader is None:
            raise GuestAgentUnavailable("not connected")
        for command, arguments in commands:
            msg: dict[str, Any] = {"execute": command}
            if arguments:
                msg["arguments"] = arguments
            self._send(msg)
        self.in_flight = True
        names = ", ".join(c for c, _ in commands)
        lines: list[bytes] = []
        try:
            async with asyncio.timeout(timeout):
                assert self._writer is not None
                await self._writer.drain()
                while len(lines) < len(commands):
                    line = (await self._reader.readline()).lstrip(b"\xff")
                    if not line:
                        raise GuestAgentUnavailable(f"guest agent closed the channel on {names}")
                    if line.strip():
                        lines.append(line)
            self.in_flight = False
        except (TimeoutError, OSError) as exc:
            # A late reply would be read as the answer to the next command: this
            # connection is unusable now; a new one resyncs.
            await self.close()
            raise GuestAgentUnavailable(f"guest agent: no reply to {names} in {timeout}s") from exc
        outcomes: list[Any] = []
        for (command, _), line in zip(commands, lines, strict=True):
            reply = json.loads(line)
            if "error" in reply:
                err = reply["error"]
                outcomes.append(
                    GuestAgentError(f"{command}: {err.get('class')}: {err.get('desc')}")
                )
            else:
                outcomes.append(reply.get("return"))
        return outcomes

    async def read_file(self, path: str, max_bytes: int = 1 << 20) -> bytes | None:
        """Whole content of a small guest file, or None when it cannot be opened."""
        try:
            handle = await self.execute("guest-file-open", {"path": path, "mode": "r"})
        except GuestAgentError:
            return None
        data = b""
        try:
            while len(data) < max_bytes:
                chunk = await self.execute("guest-file-read", {"handle": handle, "count": 65536})
                data += base64.b64decode(chunk.get("buf-b64", ""))
                if chunk.get("eof") or not chunk.get("count"):
                    break
        finally:
            await self.execute("guest-file-close", {"handle": handle})
        return data

    async def exec_command(
        self, path: str, args: list[str], timeout: float = DEFAULT_COMMAND_TIMEOUT
    ) -> tuple[int, bytes, bytes]:
        """Run a program in the guest (guest-exec) and wait: (exit code, stdout, stderr)."""
        started = await self.execute(
            "guest-exec", {"path": path, "arg": args, "capture-output": True}
        )
        pid = started["pid"]
        async with asyncio.timeout(timeout):
            while True:
                st = await self.execute("guest-exec-status", {"pid": pid})
                if st.get("exited"):
                    return (
                        int(st.get("exitcode", -1)),
                        base64.b64decode(st.get("out-data", "")),
                        base64.b64decode(st.get("err-data", "")),
                    )
                await asyncio.sleep(0.05)


class SharedGuestAgent:
    """One qemu-ga connection of one VM, kept open and shared by its callers.

    ``async with shared.session() as ga`` yields the connected client, one caller
    at a time (qemu-ga answers in order on one channel). The connection is made
    (and synced) on first use and kept; it is dropped, to be made again on the next
    session, when a session ends with an error that is not a plain error reply of
    qemu-ga, or with a command whose reply was not read."""

    def __init__(
        self,
        socket_path: str,
        sync_timeout: float = DEFAULT_SYNC_TIMEOUT,
        idle_close: float | None = IDLE_CLOSE,
    ) -> None:
        self._path = socket_path
        self._sync_timeout = sync_timeout
        self._idle_close = idle_close
        self._lock = asyncio.Lock()
        self._client: GuestAgentClient | None = None
        self._held = False
        self._idle: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None
        #: File handles to close once the guest is thawed (:meth:`defer_close`).
        self._deferred: list[int] = []
        self._closing_handles: asyncio.Task[None] | None = None
        #: Connections made so far (a test proves a thaw makes none).
        self.connects = 0

    def hold(self, held: bool) -> None:
        """Keep the connection open (the guest is frozen: the thaw must find it), or
        let it close when idle again."""
        self._held = held
        if not held:
            self._arm()
            if self._deferred and (self._closing_handles is None or self._closing_handles.done()):
                self._closing_handles = asyncio.ensure_future(self._close_deferred())

    def defer_close(self, handle: int) -> None:
        """A guest file handle to close once the guest is thawed (qemu-ga refuses a
        close while frozen), in the background: off every caller's path."""
        self._deferred.append(handle)

    async def _close_deferred(self) -> None:
        async with self._lock:
            if self._held or not self._deferred:
                return  # frozen again meanwhile: the next thaw closes them
            handles, self._deferred = self._deferred, []
            # A qemu-ga gone away took its handles with it; one already closed is fine.
            with contextlib.suppress(GuestAgentUnavailable):
                async with self._session(None) as client:
                    for handle in handles:
                        with contextlib.suppress(GuestAgentError):
                            await client.execute("guest-file-close", {"handle": handle})
        self._arm()

    def _arm(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = None
        if (
            self._idle_close is not None
            and self._client is not None
            and not self._held
            and not self._lock.locked()
        ):
            self._idle = asyncio.get_running_loop().call_later(self._idle_close, self._expire)

    def _expire(self) -> None:
        self._idle = None
        if not self._held and not self._lock.locked():
            self._closing = asyncio.ensure_future(self.close())

    @contextlib.asynccontextmanager
    async def session(self, sync_timeout: float | None = None) -> AsyncIterator[GuestAgentClient]:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        try:
            async with self._lock, self._session(sync_timeout) as client:
                yield client
        finally:
            if self._idle_close is not None and self._idle_close <= 0 and not self._held:
                await self.close()  # a short-lived user: nothing to keep open
            else:
                self._arm()

    @contextlib.asynccontextmanager
    async def _session(self, sync_timeout: float | None) -> AsyncIterator[GuestAgentClient]:
        client = self._client
        if client is None or not client.connected or client.in_flight:
            if client is not None:
                await client.close()
            self._client = None
            client = GuestAgentClient(self._path, sync_timeout or self._sync_timeout)
            await client.__aenter__()
            self.connects += 1
            self._client = client
        try:
            yield client
        except GuestAgentError:
            raise  # qemu-ga answered: the channel is in step
        except BaseException:
            await self._drop()
            raise
        if client.in_flight or not client.connected:
            await self._drop()

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def close(self) -> None:
        """Close the connection (the VM stopped, or the agent closes)."""
        if self._closing_handles is not None and not self._closing_handles.done():
            self._closing_handles.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._closing_handles
        async with self._lock:
            await self._drop()
