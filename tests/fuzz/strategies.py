"""Hypothesis strategies for any protobuf request: generated and mutated.

A request is built from its message descriptor, field by field, with values
that are well-formed on the wire but wrong for the contract as often as right:
ids at and past their bounds, page tokens past the catalog's integers, paths
past NAME_MAX, control characters, addresses the host must not reach, enum
numbers no one defined, edge integers and floats. A *mutated* request is a
generated one whose bytes were changed and that still parses as the message
(so it is well-formed too).
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import descriptor as d
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from hypothesis import strategies as st

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

#: Strings that mean something to vmsnap, right and wrong.
INTERESTING = (
    "",
    "vm1",
    "vm-fuzz",
    "s1",
    "vda",
    "a://pool/1",
    "file:///var/lib/vms/1.img",
    "ontap://svm0/vol/path",
    "element://cluster/42",
    "io.vmsnap.test.a",
    "sim-1",
    "p1",
    "p0",
    "p8000000000000000",
    "p7fffffffffffffff",
    "p" + "f" * 64,
    "p-1",
    "x" * 128,
    "x" * 129,
    "x" * 256,
    "/tmp/" + "y" * 300,
    "/etc/passwd",
    "../../etc/shadow",
    "unix:///tmp/fuzz.sock",
    "unix:relative.sock",
    "unix-abstract:fuzz",
    "127.0.0.1:1",
    "localhost:65535",
    "10.0.0.1:50051",
    "example.com:443",
    "dns:///example.com:443",
    "[::1]:1",
    "\x00",
    "a\nb",
    "\u202e\u0000",
    "é" * 300,
    "CAPABILITY_REVERT",
    "QUIESCE_METHOD_OVERLAY",
    "*",
    "x" * 1025,
    "abc\u00e9" * 1250,
)


def _text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(INTERESTING),
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True),
        st.text(max_size=40),
    )


def _int(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [v for v in (0, 1, -1, 2, 100, 1000, 1001, 4096, low, high) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def _scalar(field: d.FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == d.FieldDescriptor.TYPE_STRING:
        return _text()
    if t == d.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (d.FieldDescriptor.TYPE_DOUBLE, d.FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if t == d.FieldDescriptor.TYPE_FLOAT else 64)
    if t == d.FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), _int(-5, 1000))
    if t in (d.FieldDescriptor.TYPE_UINT32, d.FieldDescriptor.TYPE_FIXED32):
        return _int(0, 2**32 - 1)
    if t in (d.FieldDescriptor.TYPE_UINT64, d.FieldDescriptor.TYPE_FIXED64):
        return _int(0, 2**64 - 1)
    if t in (
        d.FieldDescriptor.TYPE_INT64,
        d.FieldDescriptor.TYPE_SINT64,
        d.FieldDescriptor.TYPE_SFIXED64,
    ):
        return _int(*INT64)
    return _int(*INT32)


def _is_map(field: d.FieldDescriptor) -> bool:
    return (
        field.type == d.FieldDescriptor.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
    )


def _is_repeated(field: d.FieldDescriptor) -> bool:
    return bool(field.is_repeated)


@functools.cache
def messages(descriptor: d.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``: any subset of fields set, nested up to 3 deep."""
    cls = message_factory.GetMessageClass(descriptor)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if _is_map(field):
            entry = field.message_type
            key = _scalar(entry.fields_by_name["key"])
            value_field = entry.fields_by_name["value"]
            if value_field.type == d.FieldDescriptor.TYPE_MESSAGE:
                continue  # no such map in the contracts
            fields[field.name] = st.dictionaries(key, _scalar(value_field), max_size=4)
        elif field.type == d.FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3:
                continue
            inner = messages(field.message_type, depth + 1)
            fields[field.name] = st.lists(inner, max_size=3) if _is_repeated(field) else inner
        elif _is_repeated(field):
            fields[field.name] = st.lists(_scalar(field), max_size=4)
        else:
            fields[field.name] = _scalar(field)

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            field = descriptor.fields_by_name[name]
            target = getattr(message, name)
            if _is_map(field):
                target.update(value)
            elif field.type == d.FieldDescriptor.TYPE_MESSAGE and _is_repeated(field):
                for item in value:
                    target.add().CopyFrom(item)
            elif field.type == d.FieldDescriptor.TYPE_MESSAGE:
                target.CopyFrom(value)
            elif _is_repeated(field):
                target.extend(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=fields).map(build)


def _mutate(message: Message, edits: list[tuple[int, int, int]]) -> Message:
    data = bytearray(message.SerializeToString())
    for kind, where, value in edits:
        at = where % (len(data) + 1)
        if kind == 0 and data:
            data[at % len(data)] ^= 1 << (value % 8)
        elif kind == 1:
            data[at:at] = bytes([value])
        elif kind == 2 and data:
            del data[at % len(data)]
    mutated = type(message)()
    try:
        mutated.ParseFromString(bytes(data))
    except DecodeError:
        return message  # not well-formed: the original stands
    return mutated


@functools.cache
def requests(descriptor: d.Descriptor) -> st.SearchStrategy[Message]:
    """Generated requests, and generated ones with mutated bytes that still parse
    (one strategy per message type: building them is most of the cost)."""
    generated = messages(descriptor)
    edits = st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 2**16), st.integers(0, 255)),
        min_size=1,
        max_size=6,
    )
    return st.one_of(generated, st.builds(_mutate, generated, edits))


__all__ = ["INTERESTING", "messages", "requests"]
