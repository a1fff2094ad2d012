"""A QMP session to one QEMU process, with job helpers.

QEMU's QMP unix socket serves one client at a time (a second one would wait in
the listen backlog without a greeting), so the agent keeps one persistent
``QMPClient`` per VM and shares it between tasks: the client multiplexes
concurrent commands by id. A broken connection is dropped and re-made on the next
command, which is also how the agent re-attaches after a restart.

Jobs (block-commit, snapshot-save, ...) are followed by their
``JOB_STATUS_CHANGE`` events, with ``query-jobs`` as the truth: the listener is
registered before the status is read, so no change is missed between the two,
and a job that a previous agent process started (whose events we missed) is
found by the same read. A status change is seen when QEMU reports it, not at the
next poll (the commit of an unquiesce waited up to 2 x 50 ms for polls).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from qemu.qmp import (
    ConnectError,
    EventListener,
    ExecInterruptedError,
    ExecuteError,
    QMPClient,
    QMPError,
)

from .errors import QmpCommandError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
#: Re-read a job's status at least this often even without an event (a lost
#: connection, an event QEMU did not send): a safety net, not the way we learn.
JOB_RECHECK_INTERVAL = 1.0


def _event_job(message: Any) -> Any:
    data = message.get("data") if hasattr(message, "get") else None
    return data.get("id") if isinstance(data, dict) else None


def error_class(exc: BaseException) -> str:
    """QEMU's class of the error that rejected a command (``DeviceNotFound``,
    ``GenericError``, ...), or "" for anything else (a lost connection)."""
    cause = exc.__cause__
    return str(cause.error_class) if isinstance(cause, ExecuteError) else ""


class QmpSession:
    def __init__(self, socket_path: str, name: str) -> None:
        self._path = socket_path
        self._name = name
        self._client: QMPClient | None = None
        self._lock = asyncio.Lock()

    async def _ensure(self) -> QMPClient:
        async with self._lock:
            if self._client is not None and self._client.runstate.name == "RUNNING":
                return self._client
            await self._drop_locked()
            client = QMPClient(self._name)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await client.connect(self._path)
            except (ConnectError, TimeoutError, OSError) as exc:
                raise QmpCommandError(f"cannot connect to QMP at {self._path}: {exc}") from exc
            self._client = client
            return client

    async def _drop_locked(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.disconnect()
            except (QMPError, EOFError, OSError) as exc:  # a dead peer's EOF re-raised here
                log.debug("QMP disconnect from %s: %s", self._path, exc)

    async def close(self) -> None:
        async with self._lock:
            await self._drop_locked()

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        client = await self._ensure()
        try:
            return await client.execute(command, arguments)
        except ExecuteError as exc:
            raise QmpCommandError(f"{command}: {exc.error_class}: {exc}") from exc
        except (ExecInterruptedError, EOFError, OSError) as exc:
            await self.close()
            raise QmpCommandError(f"{command}: QMP connection lost: {exc}") from exc

    async def job_status(self, job_id: str) -> dict[str, Any] | None:
        jobs = await self.execute("query-jobs")
        for job in jobs:
            if job.get("id") == job_id:
                return dict(job)
        return None

    async def wait_job(self, job_id: str, statuses: set[str], timeout: float) -> dict[str, Any]:
        """Wait until the job reaches one of ``statuses`` (or concludes): woken by its
        JOB_STATUS_CHANGE events, decided by ``query-jobs``."""
        client = await self._ensure()
        listener = EventListener(
            "JOB_STATUS_CHANGE",
            event_filter=lambda m: _event_job(m) == job_id,
        )
        async with asyncio.timeout(timeout):
            with client.listen(listener):
                # query-jobs decides at the start (events before the listener was
                # registered are not seen) and at least every JOB_RECHECK_INTERVAL;
                # between those, each event's own status decides, so a job passing
                # created → running → ready costs no query per step (issue 16). A
                # concluded job is read again: only query-jobs carries its error.
                job = await self._job_or_raise(job_id)
                from_event = False  # ``job`` is an event's status, not query-jobs' record
                while True:
                    if from_event and job["status"] in ("concluded", "null"):
                        job, from_event = await self._job_or_raise(job_id), False
                    if job["status"] in statuses or job["status"] in ("concluded", "null"):
                        return job
                    try:
                        async with asyncio.timeout(JOB_RECHECK_INTERVAL):
                            message = await listener.get()
                    except TimeoutError:
                        job, from_event = await self._job_or_raise(job_id), False
                        continue
                    data = message.get("data") if hasattr(message, "get") else None
                    status = data.get("status") if isinstance(data, dict) else None
                    if isinstance(status, str):
                        job, from_event = {"id": job_id, "status": status}, True
                    else:
                        job, from_event = await self._job_or_raise(job_id), False

    async def _job_or_raise(self, job_id: str) -> dict[str, Any]:
        job = await self.job_status(job_id)
        if job is None:
            raise QmpCommandError(f"job {job_id} disappeared")
        return job

    async def send_fd(self, fd: int, name: str) -> None:
        """Pass a file descriptor to QEMU (SCM_RIGHTS) under ``name`` (``getfd``): how
        a migration reads or writes a file the agent opened."""
        client = await self._ensure()
        try:
            client.send_fd_scm(fd)
        except (QMPError, OSError) as exc:
            raise QmpCommandError(f"getfd {name}: cannot pass the file: {exc}") from exc
        await self.execute("getfd", {"fdname": name})

    @contextlib.asynccontextmanager
    async def listening(self, *names: str) -> AsyncIterator[EventListener]:
        """Events of these names, from now until the block ends (register before the
        command that causes them, so that none is missed)."""
        client = await self._ensure()
        listener = EventListener(names)
        with client.listen(listener):
            yield listener

    async def finish_job(self, job_id: str, timeout: float) -> None:
        """Wait for a job created with auto-dismiss off to conclude; raise on its error."""
        job = await self.wait_job(job_id, {"concluded"}, timeout)
        if job["status"] == "concluded":
            await self.execute("job-dismiss", {"id": job_id})
        if job.get("error"):
            raise QmpCommandError(f"job {job_id} failed: {job['error']}")
