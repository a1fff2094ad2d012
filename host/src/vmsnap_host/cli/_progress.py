"""A Rich progress display (on stderr) while an operation runs."""

from __future__ import annotations

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from vmsnap_host.cli import _output as out
from vmsnap_host.client import HostClient, Operation


async def follow(
    host: HostClient, started: Operation, timeout: float, quiet: bool = False
) -> Operation:
    """Wait for the operation, showing its step and progress; the operation as it ended."""
    if started.done:
        return started
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=out.errors,
        transient=True,
        disable=quiet or not out.errors.is_terminal,
    ) as progress:
        task = progress.add_task(started.step or started.type.name.lower(), total=100)

        def update(op: Operation) -> None:
            progress.update(
                task, completed=op.progress_percent, description=op.step or op.type.name.lower()
            )

        # Pushed by the host as each step is journaled (WatchOperations).
        return await host.follow(started.id, timeout=timeout, on_progress=update)
