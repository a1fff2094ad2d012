"""ONTAP's asynchronous job model.

A mutating call validates what it can synchronously (errors come back at once, as on
ONTAP), then queues the change as a job and answers ``202 {"job": {uuid, _links}}``. One
worker thread runs jobs in order (``queued -> running -> success|failure``), each under the
state lock; the effect and the job's final state are committed in the same atomic write.
``/api/cluster/jobs/{uuid}`` reports them; the netapp-ontap SDK polls it when ``poll=True``.
``job_delay`` keeps each job queued and running a while, to let tests observe the states.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from .errors import OntapError
from .state import Job, OntapState, now_iso

LOG = logging.getLogger(__name__)

Work = Callable[[], str | None]


class JobRunner:
    def __init__(self, state: OntapState, delay: float = 0.0) -> None:
        self.state = state
        self.delay = delay
        self._queue: queue.Queue[tuple[Job, Work] | None] = queue.Queue()
        self._done: dict[str, threading.Event] = {}
        self._thread = threading.Thread(target=self._run, name="ontap-jobs", daemon=True)
        self._thread.start()

    def submit(self, description: str, work: Work) -> Job:
        """Queue ``work`` (returns a success message or None; raises OntapError to fail)."""
        with self.state.lock:
            job = Job(uuid=str(uuid.uuid4()), description=description, seq=self.state.next_seq())
            self.state.jobs[job.uuid] = job
            self._done[job.uuid] = threading.Event()
            self.state.commit()
        self._queue.put((job, work))
        return job

    def wait(self, job: Job, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``job`` to end; True if it did."""
        event = self._done.get(job.uuid)
        return event is None or event.wait(timeout)

    def link(self, job: Job) -> dict[str, Any]:
        return {
            "job": {"uuid": job.uuid, "_links": {"self": {"href": f"/api/cluster/jobs/{job.uuid}"}}}
        }

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, work = item
            if self.delay:
                time.sleep(self.delay)
            with self.state.lock:
                job.state = "running"
                job.start_time = now_iso()
            if self.delay:
                time.sleep(self.delay)
            with self.state.lock:
                try:
                    message = work() or "success"
                    self.state.finish_job(job, "success", message, 0)
                except OntapError as exc:
                    self.state.finish_job(job, "failure", exc.message, int(exc.code))
                except Exception:
                    LOG.exception("job %s failed", job.uuid)
                    self.state.finish_job(job, "failure", "Internal emulator error.", 1)
                try:
                    self.state.commit()
                finally:
                    self._done.pop(job.uuid, threading.Event()).set()
