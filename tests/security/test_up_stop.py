"""``vmsnap up --auth --tls`` stops as fast as a plain stack: every process on SIGTERM.

Before, stopping the stack while a client followed operations (``vmsnap events
--follow``: a WatchOperations stream, which runs until the client cancels it)
took the whole grace period: the host's graceful stop waited for that stream to
end, the stack gave up after 10 s ("host ignored SIGTERM; killing it") and
SIGKILLed it. A WaitOperation (or a CreateVMSnapshot with ``wait``) held the host
the same way. Now the host ends such calls as it begins to stop: a stream ends
UNAVAILABLE (watch again, with ``since``), a wait answers the operation as it
stands. docs/design.md, "Stopping: calls that wait end at once".
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vmsnap_host.client import HostClient, Operation
from vmsnap_sdk import VM, Volume
from vmsnap_sdk.errors import Unavailable
from vmsnap_stack import Layout, Security, Stack, client_tls, token_path


async def test_an_auth_tls_stack_stops_on_sigterm_while_a_client_follows_operations() -> None:
    """Fails on main: "host ignored SIGTERM; killing it" after the 10 s grace."""
    home = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    layout = Layout(home)
    events: list[str] = []
    stack = Stack(
        layout, durable=False, security=Security(auth=True, tls=True), on_event=events.append
    )
    try:
        await stack.start()
        host = HostClient.connect(
            stack.host_address,
            client_tls(layout, "host"),
            token_file=token_path(layout, "admin"),
        )
        async with host:
            vm = VM(
                id="vm-w",
                name="vm-w",
                memory_mib=64,
                volumes=(Volume("vda", "file:///var/lib/vmsnap/w.img"),),
            )
            await host.define_vm(vm, project="demo-a")
            before = datetime.now(UTC) - timedelta(seconds=5)
            seen: list[Operation] = []

            async def follow() -> None:
                async for op in host.watch_operations("vm-w", since=before):
                    seen.append(op)

            watcher = asyncio.create_task(follow())
            taken = await host.create_vm_snapshot("vm-w", "s1", wait=30)
            assert taken.done and taken.error is None, taken
            while not any(op.id == taken.id and op.done for op in seen):
                assert not watcher.done(), watcher
                await asyncio.sleep(0.05)  # the stream is live: it sent that take's end

            await stack.stop()

            assert not [m for m in events if "ignored SIGTERM" in m], events
            assert events[-1] == "every process exited on SIGTERM", events
            # The follower was told the host is stopping (and can watch again).
            with pytest.raises(Unavailable, match="stopping"):
                await watcher
    finally:
        await stack.stop()
        shutil.rmtree(home, ignore_errors=True)
