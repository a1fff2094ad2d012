"""The checks, one module per category; importing this package registers them all."""

from vmsnap_sdk.conformance.checks import (
    can_handle,
    capabilities,
    clone,
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
)

__all__ = [
    "can_handle",
    "capabilities",
    "clone",
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
]
