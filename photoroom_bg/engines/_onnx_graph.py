"""An exact, in-memory rewrite of U²-Net graphs that lets onnxruntime keep its fast layout.

The U²-Net exports upsample with ``Resize(mode="linear",
coordinate_transformation_mode="pytorch_half_pixel")``. onnxruntime's NCHWc layout optimiser
only handles ``half_pixel``, so around each of the 38 ``Resize`` nodes it converts tensors out
of and back into its blocked layout, which costs about a tenth of the inference time. The two
modes are the same formula, ``x_in = (x_out + 0.5) / scale - 0.5``, except when an output axis
has length 1, which no upsampling in a 320 px U²-Net produces. The file on disk is untouched
(its sha256 is checked before this runs); only the bytes handed to onnxruntime change.

ONNX files are protocol buffers; this module edits them at the wire level, so it needs no
``onnx`` package: it walks ``ModelProto.graph`` → ``GraphProto.node`` → ``NodeProto.attribute``
and re-encodes only the length prefixes of the messages it changes.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["use_half_pixel_resize"]

_LEN = 2
_MODEL_GRAPH, _GRAPH_NODE, _NODE_OP_TYPE, _NODE_ATTRIBUTE = 7, 1, 4, 5
_ATTR_NAME, _ATTR_S = 1, 4
_FROM, _TO = b"pytorch_half_pixel", b"half_pixel"

Field = tuple[int, int, int, int]  # field number, wire type, start of field, end of field


def use_half_pixel_resize(model: bytes) -> bytes:
    """Return ``model`` with every ``pytorch_half_pixel`` Resize switched to ``half_pixel``.

    Raises:
        ValueError: the bytes are not a well-formed protocol buffer.
    """
    return _rewrite(model, _MODEL_GRAPH, _rewrite_graph)


def _rewrite_graph(graph: bytes) -> bytes:
    return _rewrite(graph, _GRAPH_NODE, _rewrite_node)


def _rewrite_node(node: bytes) -> bytes:
    op_types = [_payload(node, field) for field in _fields(node) if field[0] == _NODE_OP_TYPE]
    if op_types != [b"Resize"]:
        return node
    return _rewrite(node, _NODE_ATTRIBUTE, _rewrite_attribute)


def _rewrite_attribute(attribute: bytes) -> bytes:
    fields = list(_fields(attribute))
    names = [_payload(attribute, f) for f in fields if f[0] == _ATTR_NAME]
    if names != [b"coordinate_transformation_mode"]:
        return attribute
    return _rewrite(attribute, _ATTR_S, lambda value: _TO if value == _FROM else value)


def _rewrite(message: bytes, number: int, change: Callable[[bytes], bytes]) -> bytes:
    """Re-encode ``message``, passing each length-delimited field ``number`` through ``change``."""
    parts: list[bytes] = []
    changed = False
    for field in _fields(message):
        field_number, wire_type, start, end = field
        if field_number != number or wire_type != _LEN:
            parts.append(message[start:end])
            continue
        old = _payload(message, field)
        new = change(old)
        if new == old:
            parts.append(message[start:end])
            continue
        changed = True
        parts.append(_varint((number << 3) | _LEN) + _varint(len(new)) + new)
    return b"".join(parts) if changed else message


def _fields(message: bytes) -> list[Field]:
    fields: list[Field] = []
    position = 0
    while position < len(message):
        start = position
        key, position = _read_varint(message, position)
        wire_type = key & 7
        if wire_type == 0:
            _, position = _read_varint(message, position)
        elif wire_type == 1:
            position += 8
        elif wire_type == _LEN:
            length, position = _read_varint(message, position)
            position += length
        elif wire_type == 5:
            position += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        if position > len(message):
            raise ValueError("truncated protobuf message")
        fields.append((key >> 3, wire_type, start, position))
    return fields


def _payload(message: bytes, field: Field) -> bytes:
    _, _, start, end = field
    _, position = _read_varint(message, start)
    _, position = _read_varint(message, position)
    return message[position:end]


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("malformed protobuf varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
