"""The checks, one module per category; importing this package registers them all."""

from vmsnap_sdk.conformance.checks import (
    blocks,
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
    unmanaged,
)

__all__ = [
    "blocks",
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
    "unmanaged",
]
