"""CDR serialisation of ROS messages whose large sequences of small messages are numpy arrays.

A mesh marker carries one ``geometry_msgs/Point`` and one ``std_msgs/ColorRGBA`` per triangle corner.
rclpy (and rosbags) convert such sequences element by element, one Python object per element, which
costs microseconds per corner and holds the GIL meanwhile. In CDR a sequence of a message whose fields
all have one primitive type is a count followed by the elements' values back to back, so a numpy array
with one row per element is already its serialised form. :func:`to_cdr` writes any message by walking
its rosidl type description and takes such sequences from ``packed`` arrays; the bytes go to
``Publisher.publish(bytes)`` (rclpy publishes serialised messages as they are).

The layout is the one rmw_fastrtps and rmw_cyclonedds write (XCDR1, little endian, encapsulation
``00 01 00 00``): each primitive aligned to its size, counted from the end of the 4-byte header;
strings as a uint32 length including the NUL, then the bytes and the NUL; a sequence's elements
aligned only when there are any; an empty message as one placeholder byte; padding written as zeros.
Tests compare the bytes (padding aside) and the messages read back with ``rclpy.serialization``.
"""
from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np
from rosidl_parser.definition import (
    AbstractGenericString,
    AbstractNestedType,
    AbstractSequence,
    AbstractWString,
    BasicType,
    NamespacedType,
)

ENCAPSULATION = b"\x00\x01\x00\x00"  # CDR, little endian
_BASIC = {  # rosidl typename -> (struct format, numpy dtype); the size is the alignment
    "boolean": ("?", np.bool_), "octet": ("B", np.uint8), "uint8": ("B", np.uint8), "char": ("B", np.uint8),
    "int8": ("b", np.int8), "int16": ("h", np.int16), "uint16": ("H", np.uint16), "int32": ("i", np.int32),
    "uint32": ("I", np.uint32), "int64": ("q", np.int64), "uint64": ("Q", np.uint64), "float": ("f", np.float32),
    "double": ("d", np.float64),
}


def to_cdr(msg, packed: Mapping[int, Mapping[str, np.ndarray]] | None = None) -> bytes:
    """The serialised message (encapsulation header included). ``packed``: ``id(message) -> {field: array}``
    for sequence fields of that (sub)message whose elements are messages with fields of one primitive type:
    the array has one row per element, its columns the element's fields in order, in that type; the field's
    own value is then ignored."""
    writer = _Writer(packed or {})
    writer.message(msg)
    return bytes(writer.buffer)


class _Writer:
    def __init__(self, packed: Mapping[int, Mapping[str, np.ndarray]]):
        self.buffer = bytearray(ENCAPSULATION)
        self.packed = packed

    def align(self, size: int) -> None:
        self.buffer += b"\0" * (-(len(self.buffer) - len(ENCAPSULATION)) % size)

    def message(self, msg) -> None:
        if not msg.SLOT_TYPES:  # an empty message carries one placeholder byte (rosidl's dummy member)
            self.buffer += b"\0"
            return
        arrays = self.packed.get(id(msg), {})
        for name, kind in zip(msg.get_fields_and_field_types(), msg.SLOT_TYPES):
            if name in arrays:
                self.packed_sequence(kind, arrays[name], f"{type(msg).__name__}.{name}")
            else:
                self.value(kind, getattr(msg, name))

    def value(self, kind, value) -> None:
        if isinstance(kind, BasicType):
            fmt, _ = _BASIC[kind.typename]
            self.align(struct.calcsize(fmt))
            self.buffer += struct.pack("<" + fmt, _primitive(kind.typename, value))
        elif isinstance(kind, AbstractWString):
            raise NotImplementedError("wstring fields are not supported")
        elif isinstance(kind, AbstractGenericString):
            self.string(value)
        elif isinstance(kind, NamespacedType):
            self.message(value)
        elif isinstance(kind, AbstractNestedType):
            if isinstance(kind, AbstractSequence):
                self.align(4)
                self.buffer += struct.pack("<I", len(value))
            elif len(value) != kind.size:
                raise ValueError(f"array of {len(value)} elements for a fixed size of {kind.size}")
            self.elements(kind.value_type, value)
        else:
            raise NotImplementedError(f"field type {kind!r} is not supported")

    def elements(self, kind, values) -> None:
        if not isinstance(kind, BasicType):
            for item in values:
                self.value(kind, item)
            return
        if len(values):
            dtype = np.dtype(_BASIC[kind.typename][1]).newbyteorder("<")
            self.align(dtype.itemsize)
            self.buffer += _primitive_array(values, dtype).tobytes()

    def string(self, text: str) -> None:
        data = text.encode("utf-8")
        self.align(4)
        self.buffer += struct.pack("<I", len(data) + 1) + data + b"\0"

    def packed_sequence(self, kind, array: np.ndarray, where: str) -> None:
        """A sequence of plain messages from an array, one row per element (see :func:`to_cdr`)."""
        if not isinstance(kind, AbstractSequence) or not isinstance(kind.value_type, NamespacedType):
            raise TypeError(f"{where}: only sequences of messages can be packed")
        typename, columns = _plain_field_type(kind.value_type)
        fmt, dtype = _BASIC[typename]
        array = np.asarray(array)
        if array.ndim != 2 or array.shape[1] != columns or array.dtype != np.dtype(dtype):
            raise TypeError(f"{where}: packed as a 2-D {np.dtype(dtype).name} array of {columns} columns (one row "
                            f"per element), got {array.dtype.name} of shape {array.shape}")
        self.align(4)
        self.buffer += struct.pack("<I", len(array))
        if len(array):
            self.align(np.dtype(dtype).itemsize)
            self.buffer += np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


_PLAIN: dict[tuple, tuple[str, int]] = {}


def _plain_field_type(kind: NamespacedType) -> tuple[str, int]:
    """(the one primitive typename of all fields of a message type, its number of fields); TypeError when it
    has fields of other kinds."""
    key = tuple(kind.namespaces) + (kind.name,)
    if key not in _PLAIN:
        import importlib

        module = importlib.import_module(".".join(kind.namespaces))
        element = getattr(module, kind.name)
        kinds = {t.typename if isinstance(t, BasicType) else None for t in element.SLOT_TYPES}
        if len(kinds) != 1 or None in kinds:
            raise TypeError(f"{'/'.join(key)} has fields of several or non-primitive types: it cannot be packed")
        _PLAIN[key] = kinds.pop(), len(element.SLOT_TYPES)
    return _PLAIN[key]


def _primitive(typename: str, value):
    if typename in ("char", "octet") and isinstance(value, (bytes, str)):
        return ord(value)
    return value


def _primitive_array(values, dtype: np.dtype) -> np.ndarray:
    """Values of a primitive array field (array.array, numpy, list, bytes, or a list of one-byte bytes)."""
    if isinstance(values, (bytes, bytearray)):
        return np.frombuffer(values, dtype)
    if isinstance(values, list) and values and isinstance(values[0], bytes):
        return np.frombuffer(b"".join(values), dtype)
    return np.asarray(values).astype(dtype, copy=False)
