"""Parse and validate safetensors headers without torch.

A safetensors file is ``u64 little-endian N`` + ``N`` bytes of JSON header (possibly padded with
spaces) + a data buffer. The header maps tensor names to ``dtype``, ``shape`` and
``data_offsets = [begin, end]`` relative to the buffer, plus an optional ``__metadata__`` of
string pairs. :func:`read_header` checks everything a reassembler relies on:

- the header length fits in the file and the header is a UTF-8 JSON object;
- every dtype is one safetensors knows, and ``end - begin`` equals the shape's byte size
  (sub-byte dtypes such as ``F4`` count bits and must end on a byte boundary);
- the tensors, sorted by offset, tile the data buffer exactly: no overlap, no gap, nothing past
  the end of the file and nothing after the last tensor.

Tensors may be listed in any order in the JSON; :class:`SafetensorsHeader` keeps them sorted by
offset, which is also the order their bytes appear in the file. Each problem raises
:class:`~core.errors.SafetensorsFormatError` naming the file and the problem.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

from core.errors import SafetensorsFormatError

#: Bits per element of every dtype safetensors 0.8 accepts.
DTYPE_BITS: MappingProxyType[str, int] = MappingProxyType(
    {
        "BOOL": 8,
        "F4": 4,
        "F6_E2M3": 6,
        "F6_E3M2": 6,
        "U8": 8,
        "I8": 8,
        "F8_E5M2": 8,
        "F8_E4M3": 8,
        "F8_E8M0": 8,
        "F8_E4M3FNUZ": 8,
        "F8_E5M2FNUZ": 8,
        "I16": 16,
        "U16": 16,
        "F16": 16,
        "BF16": 16,
        "I32": 32,
        "U32": 32,
        "F32": 32,
        "C64": 64,
        "F64": 64,
        "I64": 64,
        "U64": 64,
    }
)

#: The safetensors reference implementation caps the header at 100 MB.
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor: ``begin``/``end`` are absolute byte offsets in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    """A validated header: the raw prefix bytes and the tensors sorted by offset."""

    header_bytes: bytes  # the 8-byte length + the JSON header exactly as stored
    tensors: tuple[TensorInfo, ...]
    metadata: MappingProxyType[str, str]
    file_size: int

    @property
    def data_offset(self) -> int:
        return len(self.header_bytes)


def tensor_nbytes(dtype: str, shape: tuple[int, ...], *, where: object = "<tensor>") -> int:
    """Byte size of a tensor of ``dtype`` and ``shape``.

    >>> tensor_nbytes("BF16", (3, 4)), tensor_nbytes("F4", (2, 3))
    (24, 3)
    """
    bits = DTYPE_BITS.get(dtype)
    if bits is None:
        raise SafetensorsFormatError(where, f"unknown dtype {dtype!r}")
    total_bits = math.prod(shape) * bits
    if total_bits % 8:
        raise SafetensorsFormatError(
            where,
            f"{dtype} tensor of shape {list(shape)} does not end on a byte boundary",
        )
    return total_bits // 8


def read_header(path: str | Path) -> SafetensorsHeader:
    """Read and validate the header of the safetensors file at ``path``.

    Args:
        path: a ``.safetensors`` file.

    Returns:
        The validated header; tensors sorted by offset with absolute file offsets.

    Raises:
        SafetensorsFormatError: the file is truncated or its header is invalid.

    >>> import tempfile, os, json, struct
    >>> h = json.dumps({"w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}).encode()
    >>> p = os.path.join(tempfile.mkdtemp(), "x.safetensors")
    >>> _ = open(p, "wb").write(struct.pack("<Q", len(h)) + h + b"ab")
    >>> [(t.name, t.begin, t.end) for t in read_header(p).tensors]
    [('w', 68, 70)]
    """
    path = Path(path)
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        file_size = fh.tell()
        fh.seek(0)
        return parse_header(fh, file_size=file_size, where=path)


def parse_header(fh: BinaryIO, *, file_size: int, where: object) -> SafetensorsHeader:
    """Validate the header read from ``fh`` (positioned at 0) of a file of ``file_size`` bytes."""
    prefix = fh.read(8)
    if len(prefix) < 8:
        raise SafetensorsFormatError(
            where,
            f"truncated: {file_size} bytes, too short for the 8-byte header length",
        )
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > file_size - 8:
        raise SafetensorsFormatError(
            where,
            f"header length {header_len} runs past the end of the file ({file_size} bytes)",
        )
    if header_len > MAX_HEADER_BYTES:
        raise SafetensorsFormatError(where, f"header length {header_len} exceeds 100 MB")
    raw = fh.read(header_len)
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsFormatError(where, f"header is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise SafetensorsFormatError(where, "header is not a JSON object")
    data_offset = 8 + header_len
    metadata = _parse_metadata(obj.pop("__metadata__", None), where)
    tensors = sorted(
        (_parse_tensor(name, spec, data_offset, where) for name, spec in obj.items()),
        key=lambda t: (t.begin, t.end, t.name),
    )
    cursor = data_offset
    for tensor in tensors:
        if tensor.begin < cursor:
            raise SafetensorsFormatError(
                where, f"tensor {tensor.name!r} overlaps the previous tensor"
            )
        if tensor.begin > cursor:
            raise SafetensorsFormatError(
                where,
                f"gap of {tensor.begin - cursor} bytes before tensor {tensor.name!r}",
            )
        if tensor.end > file_size:
            raise SafetensorsFormatError(
                where,
                f"tensor {tensor.name!r} runs past the end of the file "
                f"(ends at {tensor.end}, file has {file_size} bytes)",
            )
        cursor = tensor.end
    if cursor != file_size:
        raise SafetensorsFormatError(
            where, f"{file_size - cursor} bytes after the last tensor are not covered"
        )
    return SafetensorsHeader(
        header_bytes=prefix + raw,
        tensors=tuple(tensors),
        metadata=metadata,
        file_size=file_size,
    )


def _parse_metadata(value: object, where: object) -> MappingProxyType[str, str]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise SafetensorsFormatError(where, "__metadata__ must map strings to strings")
    return MappingProxyType(dict(value))


def _parse_tensor(name: str, spec: object, data_offset: int, where: object) -> TensorInfo:
    if not isinstance(spec, dict):
        raise SafetensorsFormatError(where, f"tensor {name!r}: entry is not an object")
    dtype = spec.get("dtype")
    shape = spec.get("shape")
    offsets = spec.get("data_offsets")
    if not isinstance(dtype, str):
        raise SafetensorsFormatError(where, f"tensor {name!r}: missing dtype")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise SafetensorsFormatError(where, f"tensor {name!r}: invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise SafetensorsFormatError(where, f"tensor {name!r}: invalid data_offsets {offsets!r}")
    if dtype not in DTYPE_BITS:
        raise SafetensorsFormatError(where, f"tensor {name!r}: unknown dtype {dtype!r}")
    expected = tensor_nbytes(dtype, tuple(shape), where=f"{where}: tensor {name!r}")
    begin, end = offsets
    if end - begin != expected:
        raise SafetensorsFormatError(
            where,
            f"tensor {name!r}: shape {shape} of {dtype} needs {expected} bytes "
            f"but data_offsets span {end - begin}",
        )
    return TensorInfo(name, dtype, tuple(shape), data_offset + begin, data_offset + end)
