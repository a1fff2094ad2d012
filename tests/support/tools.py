"""Tests that need a Debian tool skip without it on a developer's machine, but fail in CI.

CI (``CI`` set, as .ci/run runs) installs every package of .ci/apt-packages.txt:
a missing tool there is a broken install step, and a skip would hide it.
"""

from __future__ import annotations

import os
import shutil

import pytest


def missing(tool: str, package: str) -> str | None:
    """Why the tool is unusable (None when it is on PATH); fails at once in CI."""
    if shutil.which(tool) is not None:
        return None
    why = f"{tool} not installed (apt-get install {package}; listed in .ci/apt-packages.txt)"
    if os.environ.get("CI"):
        pytest.fail(f"in CI: {why}", pytrace=False)
    return why


def require(tool: str, package: str) -> None:
    """Skip the calling test or fixture without the tool (fail in CI)."""
    why = missing(tool, package)
    if why is not None:
        pytest.skip(why)
