"""A counter kept only in the test guest's RAM, to prove a memory snapshot.

A shell loop started through qemu-ga increments a number in its own memory and
publishes it to ``/run`` (a tmpfs: RAM, no disk behind it) every 50 ms. Nothing of
it reaches a disk, so after a revert only a restored RAM image can show a value
from before: a rebooted guest has no file at all, a guest that kept running has a
larger value.

It is started by the test (not by the guest's init): the guest image stays as it
is, and its cache key with it (a rebuild downloads the kernel package).
"""

from __future__ import annotations

PATH = "/run/ram-counter"

#: Run in the guest with ``/bin/sh -c``; returns at once (the loop is detached
#: from qemu-ga's output pipes, or guest-exec would wait for it forever).
START = (
    f"( n=0; while true; do n=$((n + 1)); echo $n > {PATH}.tmp && mv {PATH}.tmp {PATH}; "
    "usleep 50000; done ) </dev/null >/dev/null 2>&1 &"
)

#: Prints the counter ("none" when no loop ever ran in this boot).
READ = f"cat {PATH} 2>/dev/null || echo none"


def parse(text: str) -> int | None:
    value = text.strip()
    return None if value in ("", "none") else int(value)
