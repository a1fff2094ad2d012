"""The Element cluster as an asyncio object, over the vendor's synchronous SDK.

``solidfire-sdk-python`` blocks on HTTP, so every call runs in a worker thread
(``asyncio.to_thread``) under a semaphore that bounds how many are in flight:
a busy host must not open a hundred connections to the cluster's MVIP. The
client is created lazily (``ElementFactory.create`` itself calls the cluster)
and again after a failure to connect, so that a driver started before its
array comes up recovers by itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from solidfire.factory import ElementFactory

from vmsnap_driver_solidfire._config import Config
from vmsnap_driver_solidfire._errors import translate
from vmsnap_sdk.errors import DeadlineExceeded
from vmsnap_sdk.toolkit import BlockingCalls

log = logging.getLogger("vmsnap.driver.solidfire")

_T = TypeVar("_T")


def quiet_vendor_logging() -> None:
    """The SDK logs every request at INFO through a handler of its own: route it
    through ours (JSON on stderr) at WARNING instead. Its request lines hold no
    password (Basic auth travels in a header), but they are noise."""
    vendor = logging.getLogger("solidfire.Element")
    vendor.handlers[:] = []
    vendor.setLevel(logging.WARNING)
    vendor.propagate = True


class ElementArray:
    """One Element cluster. ``call(action, fn)`` runs ``fn(element)`` in a thread."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._client: Any = None
        self._connect_lock = threading.Lock()
        self._calls = BlockingCalls(config.max_array_calls)
        quiet_vendor_logging()

    def _connect(self) -> Any:
        with self._connect_lock:
            if self._client is None:
                cfg = self.config
                client = ElementFactory.create(
                    cfg.host,
                    cfg.user,
                    cfg.password.reveal(),
                    version=cfg.api_version,
                    verify_ssl=cfg.verify_tls,
                    port=cfg.port,
                    print_ascii_art=False,
                    timeout=int(cfg.call_timeout),
                )
                self._client = client
            return self._client

    async def call(
        self,
        action: str,
        fn: Callable[[Any], _T],
        *,
        abandoned: Callable[[asyncio.Future[Any]], None] | None = None,
    ) -> _T:
        """Run ``fn(element)`` in a worker thread; vendor errors come out translated.

        ``action`` says what the call is for ("take snapshot vm1-s1"): it opens
        the error message the host and the operator will read. ``abandoned``: see
        ``BlockingCalls.run``.
        """

        def run() -> _T:
            return fn(self._connect())

        try:
            return await self._calls.run(run, what=action, abandoned=abandoned)
        except DeadlineExceeded:
            raise
        except Exception as exc:  # noqa: BLE001 - translated, never leaked
            error = translate(
                exc, url=self.config.url, action=action, secret=self.config.password.reveal()
            )
            log.warning(
                "element call failed",
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
