"""File contents over ONTAP REST: ``multipart/form-data`` in and out.

ONTAP reads a file with ``GET .../files/{path}?byte_offset=&length=`` and ``Accept:
multipart/form-data``, and writes with a multipart ``POST`` (create) or ``PATCH`` (at
``byte_offset``; ``-1`` appends). Like ONTAP, one call moves at most 1 MiB.
"""

from __future__ import annotations

import os
import secrets
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

from . import errors

MAX_DATA = 1 << 20


def is_multipart(content_type: str | None) -> bool:
    return (content_type or "").lower().startswith("multipart/form-data")


def parse_form(content_type: str, body: bytes) -> dict[str, bytes]:
    """The parts of a multipart/form-data body, by field name."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise errors.invalid("data", "The multipart/form-data body could not be parsed.")
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload
    return fields


def data_field(fields: dict[str, bytes]) -> bytes:
    """The file data: the SDK names the field ``data``, ONTAP's curl examples ``file``."""
    for name in ("data", "file"):
        if name in fields:
            if len(fields[name]) > MAX_DATA:
                raise errors.invalid("data", f"At most {MAX_DATA} bytes can be written per call.")
            return fields[name]
    raise errors.missing("data")


def encode_form(parts: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data response."""
    boundary = secrets.token_hex(16)
    chunks: list[bytes] = []
    for name, value in parts:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value
            + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def write_at(path: Path, offset: int, data: bytes, *, truncate: bool = False) -> int:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else 0)
    fd = os.open(path, flags, 0o644)
    try:
        if offset < 0:
            offset = os.fstat(fd).st_size
        return os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def read_range(path: Path, offset: int, length: int) -> bytes:
    if length > MAX_DATA:
        raise errors.invalid("length", f"At most {MAX_DATA} bytes can be read per call.")
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)
