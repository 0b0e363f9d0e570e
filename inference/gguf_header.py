"""A GGUF file's metadata and tensor types, read without its arrays' contents.

A worker needs a few scalars of a GGUF (architecture, context length, pooling
type), its vocabulary's size and its tensors' types. gguf-py's `GGUFReader`
parses every array element through numpy views first: 2.2 s for the packaged
SmolLM2's 49,152 tokens and 48,900 merges, paid three times per start. This
reads the same header (GGUF versions 2 and 3, either byte order) and skips over
arrays, keeping only their length: about 30 ms. `GGUFReader` stays the reader
for writing a converted copy.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf as gguflib

# Value type -> struct format of one scalar (strings and arrays are read apart).
_SCALARS = {
    gguflib.GGUFValueType.UINT8: "B",
    gguflib.GGUFValueType.INT8: "b",
    gguflib.GGUFValueType.UINT16: "H",
    gguflib.GGUFValueType.INT16: "h",
    gguflib.GGUFValueType.UINT32: "I",
    gguflib.GGUFValueType.INT32: "i",
    gguflib.GGUFValueType.FLOAT32: "f",
    gguflib.GGUFValueType.BOOL: "?",
    gguflib.GGUFValueType.UINT64: "Q",
    gguflib.GGUFValueType.INT64: "q",
    gguflib.GGUFValueType.FLOAT64: "d",
}


@dataclass(frozen=True)
class ArrayField:
    """An array's element type and length; its contents are skipped."""

    item_type: gguflib.GGUFValueType
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    tensor_type: gguflib.GGMLQuantizationType
    n_elements: int


@dataclass(frozen=True)
class GGUFHeader:
    fields: dict[str, Any]  # scalars and strings as values, arrays as ArrayField
    tensors: list[TensorInfo]

    @property
    def architecture(self) -> str:
        return str(self.fields[gguflib.Keys.General.ARCHITECTURE])


def read_gguf_header(path: Path) -> GGUFHeader:
    """The metadata and tensor list of the GGUF at `path`; ValueError if it is not a readable GGUF."""
    with path.open("rb") as file:
        try:
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # an empty file cannot be mapped
            raise ValueError(f"{path.name} is empty, not a GGUF file") from exc
    with data:
        try:
            return _Parser(data).header()
        except (struct.error, UnicodeDecodeError) as exc:
            raise ValueError(f"{path.name} is not a complete GGUF file: {exc}") from exc


class _Parser:
    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.offset = 0
        self.order = "<"

    def header(self) -> GGUFHeader:
        if self._unpack("I")[0] != gguflib.GGUF_MAGIC:
            raise ValueError("GGUF magic invalid")
        version = self._unpack("I")[0]
        if version & 0xFFFF == 0:  # written on a machine of the other byte order
            self.order = ">"
            version = struct.unpack(">I", struct.pack("<I", version))[0]
        if version not in gguflib.READER_SUPPORTED_VERSIONS:
            raise ValueError(f"GGUF version {version} is not supported")
        tensor_count, kv_count = self._unpack("QQ")
        fields = {}
        for _ in range(kv_count):
            key = self._string()
            fields[key] = self._value(gguflib.GGUFValueType(self._unpack("I")[0]))
        tensors = []
        for _ in range(tensor_count):
            name = self._string()
            (dims,) = self._unpack("I")
            n_elements = 1
            for size in self._unpack("Q" * dims):
                n_elements *= size
            tensor_type, _offset = self._unpack("IQ")
            tensors.append(TensorInfo(name, gguflib.GGMLQuantizationType(tensor_type), n_elements))
        return GGUFHeader(fields, tensors)

    def _unpack(self, fmt: str) -> tuple[Any, ...]:
        layout = struct.Struct(self.order + fmt)
        values = layout.unpack_from(self.data, self.offset)
        self.offset += layout.size
        return values

    def _string(self) -> str:
        (length,) = self._unpack("Q")
        end = self.offset + length
        if end > len(self.data):
            raise struct.error("a string runs past the end of the file")
        text = self.data[self.offset : end].decode()
        self.offset = end
        return text

    def _value(self, value_type: gguflib.GGUFValueType) -> Any:
        if value_type == gguflib.GGUFValueType.STRING:
            return self._string()
        if value_type == gguflib.GGUFValueType.ARRAY:
            item_type = gguflib.GGUFValueType(self._unpack("I")[0])
            (length,) = self._unpack("Q")
            self._skip(item_type, length)
            return ArrayField(item_type, length)
        return self._unpack(_SCALARS[value_type])[0]

    def _skip(self, item_type: gguflib.GGUFValueType, length: int) -> None:
        if item_type in _SCALARS:
            self.offset += struct.calcsize(_SCALARS[item_type]) * length
        elif item_type == gguflib.GGUFValueType.STRING:
            for _ in range(length):  # each string: its length, then its bytes
                (size,) = self._unpack("Q")
                self.offset += size
        else:  # arrays of arrays
            for _ in range(length):
                self._value(item_type)
        if self.offset > len(self.data):
            raise struct.error("an array runs past the end of the file")
