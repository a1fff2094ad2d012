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
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
from types import TracebackType
from typing import Any

from .errors import GuestAgentError, GuestAgentUnavailable

# A live guest answers the sync in milliseconds even under TCG; seconds mean no agent.
DEFAULT_SYNC_TIMEOUT = 3.0
DEFAULT_COMMAND_TIMEOUT = 30.0


class GuestAgentClient:
    """One connection to qemu-ga; use as ``async with GuestAgentClient(path) as ga``."""

    def __init__(self, socket_path: str, sync_timeout: float = DEFAULT_SYNC_TIMEOUT) -> None:
        self._path = socket_path
        self._sync_timeout = sync_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

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
        if self._reader is None:
            raise GuestAgentUnavailable("not connected")
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._send(msg)
        try:
            async with asyncio.timeout(timeout):
                assert self._writer is not None
                await self._writer.drain()
                while True:
                    line = (await self._reader.readline()).lstrip(b"\xff")
                    if not line:
                        raise GuestAgentUnavailable(f"guest agent closed the channel on {command}")
                    if line.strip():
                        break
        except (TimeoutError, OSError) as exc:
            # A late reply would be read as the answer to the next command: this
            # connection is unusable now; a new one resyncs.
            await self.close()
            raise GuestAgentUnavailable(
                f"guest agent: no reply to {command} in {timeout}s"
            ) from exc
        reply = json.loads(line)
        if "error" in reply:
            err = reply["error"]
            raise GuestAgentError(f"{command}: {err.get('class')}: {err.get('desc')}")
        return reply.get("return")

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
