"""The few pieces of the protobuf wire format that cxr's ONNX metadata needs.

An ONNX file is a serialised ``ModelProto``. cxr reads only its top-level fields (the graph's
presence and the ``metadata_props`` entries) and appends one entry (the integrity seal), so
this walker of top-level fields replaces the ``onnx`` package on the path that runs a model:
``import onnx`` costs about 0.6 s of cold start (measured: see
:mod:`cxr.modelformat.onnx_metadata`), and ``cxr predict model.onnx`` imports neither onnx nor
torch. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["GRAPH_FIELD", "METADATA_FIELD", "encode_entry", "entry", "fields"]

#: ``ModelProto.metadata_props`` (repeated StringStringEntryProto)
METADATA_FIELD = 14
#: ``ModelProto.graph`` (GraphProto)
GRAPH_FIELD = 7


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at ``raw[pos]``."""
    value, shift = 0, 0
    while True:
        if pos >= len(raw) or shift > 63:
            raise ValueError("truncated varint")
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def fields(raw: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, start of the field, start of its payload, end) of each
    field of the message ``raw``, in file order; a ValueError for bytes that are not one."""
    pos = 0
    while pos < len(raw):
        start = pos
        key, pos = _varint(raw, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, end = _varint(raw, pos)
        elif wire == 1:
            end = pos + 8
        elif wire == 2:
            n, pos = _varint(raw, pos)
            end = pos + n
        elif wire == 5:
            end = pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if number == 0 or end > len(raw):
            raise ValueError("truncated or invalid field")
        yield number, wire, start, pos, end
        pos = end


def entry(raw: bytes) -> tuple[str, str]:
    """A serialised StringStringEntryProto's (key, value) (UnicodeDecodeError if not UTF-8)."""
    out = {1: "", 2: ""}
    for number, wire, _, begin, end in fields(raw):
        if number in out and wire == 2:
            out[number] = raw[begin:end].decode("utf-8")
    return out[1], out[2]


def encode_entry(key: str, value: str) -> bytes:
    """One serialised ``ModelProto.metadata_props`` entry (appendable to a model's bytes:
    protobuf merges repeated fields)."""
    inner = b""
    for number, text in ((1, key), (2, value)):
        data = text.encode("utf-8")
        inner += bytes([number << 3 | 2]) + _encode_varint(len(data)) + data
    return bytes([METADATA_FIELD << 3 | 2]) + _encode_varint(len(inner)) + inner
