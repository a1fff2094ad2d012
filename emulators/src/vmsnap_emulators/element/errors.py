"""Element API errors: ``{"error": {"code": 500, "name": "x...", "message": ...}}``.

Names follow the real API (``xVolumeIDDoesNotExist``, ``xUnknownAPIMethod``...). The real
array answers nearly every API error with code 500; the name is what clients match on.
"""

from __future__ import annotations

from typing import Any


class ElementError(Exception):
    """An error the API reports to the caller (never an internal failure)."""

    def __init__(self, name: str, message: str, code: int = 500) -> None:
        super().__init__(message)
        self.name = name
        self.message = message
        self.code = code

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "name": self.name, "message": self.message}


def volume_not_found(volume_id: int) -> ElementError:
    return ElementError("xVolumeIDDoesNotExist", f"VolumeID {volume_id} does not exist.")


def snapshot_not_found(snapshot_id: int) -> ElementError:
    return ElementError("xSnapshotIDDoesNotExist", f"SnapshotID {snapshot_id} does not exist.")


def group_snapshot_not_found(group_id: int) -> ElementError:
    # Unverified against a live array; the naming follows the other *IDDoesNotExist errors.
    return ElementError(
        "xGroupSnapshotIDDoesNotExist", f"GroupSnapshotID {group_id} does not exist."
    )


def account_not_found(account_id: int) -> ElementError:
    return ElementError("xAccountIDDoesNotExist", f"AccountID {account_id} does not exist.")


def invalid(message: str) -> ElementError:
    return ElementError("xInvalidParameter", message)


def snapshot_limit(volume_id: int, limit: int) -> ElementError:
    return ElementError(
        "xMaxSnapshotsPerVolumeExceeded",
        f"Maximum snapshots per volume is {limit} (volumeID {volume_id}).",
    )
