"""Secrets come from files only, and never print themselves.

A password on a command line shows in ``ps``; in the environment, in
``/proc/PID/environ`` and crash reports. A file (mode 0600, or a systemd
credential) shows nowhere. :class:`Secret` hides its value from ``repr`` and
``str``, so logging a configuration object cannot leak it.
"""

from __future__ import annotations

from pathlib import Path

#: The longest secret file read (a password or a token is far shorter).
MAX_SECRET_BYTES = 65536


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: pass it to the vendor client, nowhere else."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def read_secret_file(path: str | Path, what: str = "password") -> Secret:
    """The secret in ``path`` (one trailing newline dropped).

    Raises :class:`~vmsnap_sdk.toolkit.config.ConfigError` naming the file and
    what is wrong with it, never its content.
    """
    from vmsnap_sdk.toolkit.config import ConfigError

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigError(f"{what} file {path} is longer than {MAX_SECRET_BYTES} bytes")
    try:
        value = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} file {path} is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"{what} file {path} is empty")
    return Secret(value)
