"""The checks: each has an id, a category and one line saying what the host relies on.

Category modules under ``checks/`` register theirs with :func:`check`; the
category is the id's first part (``take.retry_same_result`` → ``take``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmsnap_sdk._types import Capability

if TYPE_CHECKING:
    from vmsnap_sdk.conformance._session import Session

CheckFunction = Callable[["Session"], Awaitable[None]]

#: Categories in the order the suite runs them.
CATEGORIES = (
    "identity",
    "health",
    "capabilities",
    "can_handle",
    "take",
    "revert",
    "delete",
    "clone",
    "list",
    "blocks",
    "unmanaged",
    "concurrency",
    "deadlines",
    "robustness",
    "errors",
)


@dataclass(frozen=True)
class Check:
    """One conformance check."""

    id: str
    description: str
    run: CheckFunction
    #: Skipped, naming the capability, when the driver does not advertise these.
    requires: tuple[Capability, ...] = ()

    @property
    def category(self) -> str:
        return self.id.split(".", 1)[0]


_REGISTERED: dict[str, Check] = {}


def check(
    check_id: str, description: str, *, requires: tuple[Capability, ...] = ()
) -> Callable[[CheckFunction], CheckFunction]:
    """Register the decorated coroutine function as a check."""
    category = check_id.split(".", 1)[0]
    if category not in CATEGORIES:
        raise ValueError(f"check {check_id}: unknown category {category!r}")

    def register(function: CheckFunction) -> CheckFunction:
        if check_id in _REGISTERED:
            raise ValueError(f"check {check_id} is registered twice")
        _REGISTERED[check_id] = Check(check_id, description, function, requires)
        return function

    return register


def all_checks() -> list[Check]:
    """Every check, grouped by category in running order."""
    import vmsnap_sdk.conformance.checks  # noqa: F401 - registers the checks

    order = {name: i for i, name in enumerate(CATEGORIES)}
    return sorted(_REGISTERED.values(), key=lambda c: order[c.category])


def select(checks: list[Check], only: tuple[str, ...]) -> list[Check]:
    """The checks of the given categories or ids (all when ``only`` is empty)."""
    if not only:
        return checks
    unknown = [o for o in only if o not in CATEGORIES and all(c.id != o for c in checks)]
    if unknown:
        raise ValueError(f"unknown category or check: {', '.join(unknown)}")
    return [c for c in checks if c.category in only or c.id in only]
