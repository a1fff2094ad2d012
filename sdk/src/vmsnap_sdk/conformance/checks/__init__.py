"""The checks, one module per category; importing this package registers them all."""

from vmsnap_sdk.conformance.checks import (
    can_handle,
    capabilities,
    concurrency,
    deadlines,
    delete,
    errors,
    health,
    identity,
    listing,
    revert,
    robustness,
    take,
    unmanaged,
)

__all__ = [
    "can_handle",
    "capabilities",
    "concurrency",
    "deadlines",
    "delete",
    "errors",
    "health",
    "identity",
    "listing",
    "revert",
    "robustness",
    "take",
    "unmanaged",
]
