"""The ONTAP cluster as an asyncio object, over the vendor's synchronous SDK.

``netapp-ontap`` blocks on HTTP (and on polling jobs), so every call runs in a
worker thread (``asyncio.to_thread``) under a semaphore that bounds how many are
in flight. The SDK binds a connection to the *thread* (``with connection:``);
each worker thread gets its own ``HostConnection`` (a ``requests.Session`` is
not meant to be shared between threads), made on first use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar, cast

from netapp_ontap.host_connection import HostConnection

from vmsnap_driver_netapp._config import Config
from vmsnap_driver_netapp._errors import translate
from vmsnap_sdk.errors import DeadlineExceeded
from vmsnap_sdk.toolkit import BlockingCalls, deadline_remaining

log = logging.getLogger("vmsnap.driver.netapp")

_T = TypeVar("_T")


class OntapArray:
    """One ONTAP cluster. ``call(action, fn)`` runs ``fn()`` in a thread, connected."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._local = threading.local()
        self._calls = BlockingCalls(config.max_array_calls)

    def _connection(self) -> HostConnection:
        conn: HostConnection | None = getattr(self._local, "connection", None)
        if conn is None:
            cfg = self.config
            conn = HostConnection(
                cfg.host,
                username=cfg.user,
                password=cfg.password.reveal(),
                # A CA bundle path works too: the SDK hands it to requests.
                verify=cast(bool, cfg.verify_tls),
                port=cfg.port,
                # Typed int, but only ever given to time.sleep().
                poll_interval=cast(int, cfg.job_poll_interval),
                poll_timeout=int(cfg.call_timeout),
                protocol_timeouts=(cfg.connect_timeout, cfg.call_timeout),
            )
            if isinstance(cfg.verify_tls, str):
                # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a
                # session's CA bundle; the configured CA file must win.
                conn.session.trust_env = False
            self._local.connection = conn
        return conn

    async def call(self, action: str, fn: Callable[[], _T]) -> _T:
        """Run ``fn()`` in a worker thread with this cluster as the SDK's connection.

        ``action`` says what the call is for ("take snapshot s1"): it opens the
        error message the host and the operator will read.
        """

        def run() -> _T:
            conn = self._connection()
            # A job is polled no longer than the caller waits (toolkit: deadline passed down).
            conn.poll_timeout = max(1, int(deadline_remaining(self.config.call_timeout)))
            with conn:
                return fn()

        try:
            return await self._calls.run(run, what=action)
        except DeadlineExceeded:
            raise
        except Exception as exc:  # noqa: BLE001 - translated, never leaked
            error = translate(
                exc, url=self.config.url, action=action, secret=self.config.password.reveal()
            )
            log.warning(
                "ontap call failed",
                extra={
                    "fields": {
                        "action": action,
                        "code": error.code.name,
                        "reason": error.reason,
                        "exc_type": type(exc).__name__,
                    }
                },
            )
            raise error from None
