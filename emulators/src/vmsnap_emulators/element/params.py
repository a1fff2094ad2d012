"""Typed access to JSON-RPC ``params`` with the errors the real API gives.

Missing required parameter -> ``xMissingParameter``; wrong JSON type ->
``xInvalidParameterType``; out-of-range value -> ``xInvalidParameter``. Parameters a method
does not know are reported back in ``unusedParameters``, as the real API does.
"""

from __future__ import annotations

from typing import Any

from .errors import ElementError

_MISSING = object()


class Params:
    def __init__(self, raw: Any) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ElementError("xInvalidParameterType", "params must be a JSON object.")
        self.raw: dict[str, Any] = raw
        self.used: set[str] = set()

    def _get(self, name: str, required: bool) -> Any:
        self.used.add(name)
        value = self.raw.get(name, _MISSING)
        if value is _MISSING or value is None:
            if required:
                raise ElementError("xMissingParameter", f"Missing required parameter '{name}'.")
            return _MISSING
        return value

    def _type_error(self, name: str, expected: str) -> ElementError:
        return ElementError(
            "xInvalidParameterType", f"Parameter '{name}' must be of type {expected}."
        )

    def int_opt(self, name: str, *, minimum: int | None = None) -> int | None:
        value = self._get(name, False)
        if value is _MISSING:
            return None
        return self._check_int(name, value, minimum)

    def int_req(self, name: str, *, minimum: int | None = None) -> int:
        return self._check_int(name, self._get(name, True), minimum)

    def _check_int(self, name: str, value: Any, minimum: int | None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._type_error(name, "integer")
        if minimum is not None and value < minimum:
            raise ElementError("xInvalidParameter", f"Parameter '{name}' must be >= {minimum}.")
        return value

    def str_opt(self, name: str, *, max_len: int = 255) -> str | None:
        value = self._get(name, False)
        if value is _MISSING:
            return None
        return self._check_str(name, value, max_len)

    def str_req(self, name: str, *, max_len: int = 255) -> str:
        return self._check_str(name, self._get(name, True), max_len)

    def _check_str(self, name: str, value: Any, max_len: int) -> str:
        if not isinstance(value, str):
            raise self._type_error(name, "string")
        if len(value) > max_len:
            raise ElementError(
                "xInvalidParameter", f"Parameter '{name}' is longer than {max_len} characters."
            )
        return value

    def bool_opt(self, name: str, default: bool) -> bool:
        value = self._get(name, False)
        if value is _MISSING:
            return default
        return self._check_bool(name, value)

    def bool_req(self, name: str) -> bool:
        return self._check_bool(name, self._get(name, True))

    def _check_bool(self, name: str, value: Any) -> bool:
        # The real API also accepts "true"/"false" strings (its own examples send them).
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise self._type_error(name, "boolean")
        return value

    def dict_opt(self, name: str) -> dict[str, Any] | None:
        value = self._get(name, False)
        if value is _MISSING:
            return None
        if not isinstance(value, dict):
            raise self._type_error(name, "object")
        return value

    def int_list_opt(self, name: str) -> list[int] | None:
        value = self._get(name, False)
        if value is _MISSING:
            return None
        return self._check_int_list(name, value)

    def int_list_req(self, name: str) -> list[int]:
        return self._check_int_list(name, self._get(name, True))

    def _check_int_list(self, name: str, value: Any) -> list[int]:
        if not isinstance(value, list) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in value
        ):
            raise self._type_error(name, "array of integers")
        return list(value)

    def dict_list_req(self, name: str) -> list[dict[str, Any]]:
        value = self._get(name, True)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self._type_error(name, "array of objects")
        return list(value)

    def ignore(self, *names: str) -> None:
        """Accept parameters that the emulator takes but has no behaviour for."""
        self.used.update(names)

    def unused(self) -> dict[str, Any]:
        return {k: v for k, v in self.raw.items() if k not in self.used}
