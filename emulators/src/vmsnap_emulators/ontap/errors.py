"""ONTAP REST errors: HTTP status + ``{"error": {"message", "code", "target"}}``.

ONTAP codes are strings of digits. Those marked *verified* appear in real ONTAP responses;
the others are plausible stand-ins (clients should match on HTTP status and, where it
matters, on the verified codes).
"""

from __future__ import annotations

from typing import Any

NOT_FOUND = "4"  # verified: "entry doesn't exist"
NOT_AUTHORIZED = "6"  # verified (HTTP 401)
UNEXPECTED_ARGUMENT = "262179"  # verified: 'Unexpected argument "x".'
INVALID_FIELD_VALUE = "262197"  # verified: 'The value "x" is invalid for field "fields"'
MISSING_FIELD = "262186"
INVALID_VALUE = "262185"
SVM_NOT_FOUND = "2621462"
DUPLICATE_VOLUME = "917835"
DUPLICATE_SNAPSHOT = "1638407"
FILE_EXISTS = "6684684"
FILE_NOT_FOUND = "6684685"
DIRECTORY_NOT_EMPTY = "6684691"
TOO_LARGE = "262200"
INTERNAL = "1"


class OntapError(Exception):
    def __init__(self, status: int, code: str, message: str, target: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.target = target

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.target is not None:
            err["target"] = self.target
        return {"error": err}


def not_found(what: str, target: str | None = None) -> OntapError:
    return OntapError(404, NOT_FOUND, f"entry doesn't exist ({what})", target)


def unexpected(name: str) -> OntapError:
    return OntapError(400, UNEXPECTED_ARGUMENT, f'Unexpected argument "{name}".', name)


def invalid(field: str, message: str) -> OntapError:
    return OntapError(400, INVALID_VALUE, message, field)


def missing(field: str) -> OntapError:
    return OntapError(400, MISSING_FIELD, f'Missing value for required field "{field}".', field)
