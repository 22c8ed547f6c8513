"""Build safetensors files byte by byte, independently of ``core`` (json + struct only).

Tests use these to hand-craft what no library writes (F4, F6, F8_E8M0, unsorted offsets,
extra header padding, broken headers) and to compute expected block ids and dedup numbers
without going through the code under test.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import deserialize

#: Bits per element, written out here again so the tests do not trust core's table.
BITS = {
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


def nbytes(dtype: str, shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    bits = n * BITS[dtype]
    assert bits % 8 == 0, (dtype, shape)
    return bits // 8


@dataclass
class T:
    """One tensor to write: ``data`` defaults to deterministic bytes of the right size."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> bytes:
        if self.data is not None:
            return self.data
        n = nbytes(self.dtype, self.shape)
        seed = f"{self.name}:{self.seed}".encode()
        out = b""
        counter = 0
        while len(out) < n:
            out += hashlib.sha256(seed + counter.to_bytes(8, "little")).digest()
            counter += 1
        return out[:n]


def craft(
    tensors: Sequence[T],
    *,
    data_order: Sequence[str] | None = None,
    json_order: Sequence[str] | None = None,
    metadata: Mapping[str, str] | None = None,
    pad_to: int = 8,
    extra_spaces: int = 0,
) -> bytes:
    """Bytes of a safetensors file.

    ``data_order`` is the order the tensors' bytes appear in the buffer (default: as given);
    ``json_order`` the order of keys in the header JSON (default: as given). The header is
    padded with spaces to a multiple of ``pad_to`` and then ``extra_spaces`` more.
    """
    by_name = {t.name: t for t in tensors}
    offsets: dict[str, tuple[int, int]] = {}
    cursor = 0
    for name in data_order or [t.name for t in tensors]:
        n = len(by_name[name].payload())
        offsets[name] = (cursor, cursor + n)
        cursor += n
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    for name in json_order or [t.name for t in tensors]:
        t = by_name[name]
        header[name] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": list(offsets[name]),
            **t.extra,
        }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((-len(raw)) % pad_to) + b" " * extra_spaces
    data = b"".join(by_name[name].payload() for name in data_order or [t.name for t in tensors])
    return struct.pack("<Q", len(raw)) + raw + data


def raw_file(header: Mapping[str, Any] | bytes, data: bytes) -> bytes:
    """A file from a literal header (dict or bytes, unvalidated) and a data buffer."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@dataclass(frozen=True)
class Range:
    name: str
    begin: int
    end: int


def tensor_ranges(path: Path) -> tuple[int, list[Range]]:
    """(header prefix length, absolute tensor byte ranges sorted by offset), via json+struct."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header.pop("__metadata__", None)
    ranges = sorted(
        (
            Range(k, 8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1])
            for k, v in header.items()
        ),
        key=lambda r: (r.begin, r.end),
    )
    return 8 + n, ranges


def rust_parse(blob: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The reference (Rust) safetensors parser: raises on any file it rejects."""
    parsed: list[tuple[str, dict[str, Any]]] = deserialize(blob)  # type: ignore[no-untyped-call]
    return parsed


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_digests(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root``."""
    return {
        p.relative_to(root).as_posix(): sha256_hex(p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write_files(root: Path, files: Mapping[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def independent_dedup(model_dirs: Iterable[Path]) -> dict[str, int]:
    """total / unique / file-dedup bytes computed without core (the dedup test's oracle)."""
    total = 0
    files: dict[str, int] = {}
    blocks: dict[str, int] = {}
    headers: dict[str, int] = {}
    for root in model_dirs:
        for p in sorted(root.rglob("*")):
            if not p.is_file():
                continue
            blob = p.read_bytes()
            total += len(blob)
            files[sha256_hex(blob)] = len(blob)
            if p.name.endswith(".safetensors"):
                hlen, ranges = tensor_ranges(p)
                headers[sha256_hex(blob[:hlen])] = hlen
                for r in ranges:
                    blocks[sha256_hex(blob[r.begin : r.end])] = r.end - r.begin
            else:
                blocks[sha256_hex(blob)] = len(blob)
    return {
        "total_bytes": total,
        "file_dedup_bytes": sum(files.values()),
        "unique_bytes": sum(blocks.values()) + sum(headers.values()),
    }
