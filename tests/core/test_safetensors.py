"""read_header against hand-crafted files and files written by the safetensors library."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file as np_save_file

from core.errors import SafetensorsFormatError
from core.safetensors import DTYPE_BITS, read_header, tensor_nbytes
from tests.core.craft import BITS, T, craft, raw_file, rust_parse


def write(tmp_path: Path, blob: bytes, name: str = "m.safetensors") -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def test_dtype_table_matches_safetensors_rust() -> None:
    # The Rust parser lists every dtype it accepts when it meets an unknown one.
    with pytest.raises(Exception, match="expected one of") as info:
        rust_parse(raw_file({"a": {"dtype": "NOPE", "shape": [], "data_offsets": [0, 0]}}, b""))
    listed = set(
        str(info.value)
        .split("expected one of")[1]
        .replace("`", "")
        .split(" at ")[0]
        .replace(" ", "")
        .split(",")
    )
    assert listed == set(DTYPE_BITS) == set(BITS)


@pytest.mark.parametrize("dtype", sorted(BITS))
def test_every_dtype_parses_like_safetensors(tmp_path: Path, dtype: str) -> None:
    shape = (4, 6)  # 24 elements: a whole number of bytes for 4- and 6-bit types
    blob = craft([T("a", dtype, shape), T("b", dtype, (0,)), T("c", dtype, (4,))])
    header = read_header(write(tmp_path, blob))
    rust = dict(rust_parse(blob))
    assert [t.name for t in header.tensors] == ["a", "b", "c"]
    for t in header.tensors:
        assert t.dtype == dtype and list(t.shape) == rust[t.name]["shape"]
        assert blob[t.begin : t.end] == bytes(rust[t.name]["data"])
    assert header.tensors[0].nbytes == 24 * BITS[dtype] // 8
    assert header.file_size == len(blob)
    assert blob.startswith(header.header_bytes)


@pytest.mark.parametrize(
    ("dtype", "shape", "ok"),
    [
        ("F4", (2, 3), True),  # 6 elements * 4 bits = 3 bytes
        ("F4", (3,), False),  # 12 bits
        ("F6_E2M3", (4,), True),  # 24 bits
        ("F6_E3M2", (3,), False),  # 18 bits
        ("F4", (0, 3), True),
    ],
)
def test_sub_byte_dtypes_must_end_on_a_byte(tmp_path: Path, dtype, shape, ok) -> None:
    n = (int(np.prod(shape)) * BITS[dtype] + 7) // 8
    blob = raw_file({"a": {"dtype": dtype, "shape": list(shape), "data_offsets": [0, n]}}, bytes(n))
    path = write(tmp_path, blob)
    if ok:
        assert read_header(path).tensors[0].nbytes == n
        rust_parse(blob)
    else:
        with pytest.raises(SafetensorsFormatError, match="byte boundary") as info:
            read_header(path)
        assert str(path) in str(info.value)
        with pytest.raises(Exception, match="byte boundary"):
            rust_parse(blob)


def test_tensor_nbytes() -> None:
    assert tensor_nbytes("F4", (2, 3)) == 3
    assert tensor_nbytes("F6_E2M3", (8,)) == 6
    assert tensor_nbytes("C64", (2,)) == 16
    assert tensor_nbytes("BOOL", ()) == 1  # a scalar is one element
    assert tensor_nbytes("F32", (5, 0)) == 0


def test_library_file_with_metadata_and_padding(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    tensors: dict[str, np.ndarray[Any, Any]] = {
        "z": np.arange(3, dtype=np.float32),
        "a": np.ones((2, 2), dtype=np.int64),
        "empty": np.zeros((0, 4), dtype=np.float16),
    }
    np_save_file(tensors, str(path), metadata={"format": "np", "k2": "v2"})
    header = read_header(path)
    assert dict(header.metadata) == {"format": "np", "k2": "v2"}
    assert len(header.header_bytes) % 8 == 0  # safetensors pads the header to 8 bytes
    blob = path.read_bytes()
    for t in header.tensors:
        assert blob[t.begin : t.end] == tensors[t.name].tobytes()


def test_extra_space_padding_and_unsorted_offsets(tmp_path: Path) -> None:
    tensors = [T("alpha", "F32", (3,)), T("beta", "U8", (5,)), T("gamma", "I16", (2, 2))]
    blob = craft(
        tensors,
        data_order=["gamma", "alpha", "beta"],
        json_order=["beta", "alpha", "gamma"],
        extra_spaces=13,
    )
    header = read_header(write(tmp_path, blob))
    # Sorted by offset, i.e. the order the bytes sit in the file, not by name or JSON order.
    assert [t.name for t in header.tensors] == ["gamma", "alpha", "beta"]
    assert header.header_bytes.endswith(b" " * 13)
    for t in header.tensors:
        assert blob[t.begin : t.end] == next(x.payload() for x in tensors if x.name == t.name)


def test_empty_file_of_tensors(tmp_path: Path) -> None:
    blob = raw_file(b"{}", b"")
    assert read_header(write(tmp_path, blob)).tensors == ()


# -- bad input: each names the file and the problem ------------------------------------------

GOOD = craft([T("a", "F32", (2,)), T("b", "F32", (2,))])


def _header(**entries: object) -> dict[str, object]:
    return dict(entries)


BAD_CASES = {
    "truncated-length": (b"\x10\x00\x00", "truncated"),
    "empty": (b"", "truncated"),
    "header-past-eof": (struct.pack("<Q", 1 << 40) + b"{}", "runs past the end of the file"),
    "header-past-eof-by-one": (struct.pack("<Q", 3) + b"{}", "runs past the end of the file"),
    "not-json": (raw_file(b"{not json", b""), "not valid JSON"),
    "not-utf8": (raw_file(b"\xff\xfe{}", b""), "not valid JSON"),
    "not-object": (raw_file(b"[1, 2]", b""), "not a JSON object"),
    "overlap": (
        raw_file(
            {
                "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},
            },
            bytes(6),
        ),
        "overlaps",
    ),
    "gap": (
        raw_file(
            {
                "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                "b": {"dtype": "U8", "shape": [4], "data_offsets": [6, 10]},
            },
            bytes(10),
        ),
        "gap of 2 bytes before tensor 'b'",
    ),
    "gap-at-start": (
        raw_file({"a": {"dtype": "U8", "shape": [4], "data_offsets": [1, 5]}}, bytes(5)),
        "gap of 1 bytes",
    ),
    "past-data": (
        raw_file({"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}, bytes(4)),
        "runs past the end of the file",
    ),
    "trailing-bytes": (
        raw_file({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}, bytes(9)),
        "5 bytes after the last tensor",
    ),
    "unknown-dtype": (
        raw_file({"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, bytes(16)),
        "unknown dtype 'F128'",
    ),
    "shape-mismatch": (
        raw_file({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
        "needs 12 bytes but data_offsets span 8",
    ),
    "negative-shape": (
        raw_file({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b""),
        "invalid shape",
    ),
    "reversed-offsets": (
        raw_file({"a": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}}, bytes(4)),
        "invalid data_offsets",
    ),
    "missing-dtype": (
        raw_file({"a": {"shape": [1], "data_offsets": [0, 1]}}, bytes(1)),
        "missing dtype",
    ),
    "bad-metadata": (raw_file({"__metadata__": {"k": 1}}, b""), "__metadata__"),
    "entry-not-object": (raw_file({"a": [1]}, b""), "not an object"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_names_file_and_problem(tmp_path: Path, case: str) -> None:
    blob, problem = BAD_CASES[case]
    path = write(tmp_path, blob, f"{case}.safetensors")
    with pytest.raises(SafetensorsFormatError) as info:
        read_header(path)
    assert str(path) in str(info.value)
    assert problem in str(info.value)
    assert info.value.path == str(path)
    # The reference implementation rejects the same files (where it validates at all).
    if case not in {"bad-metadata", "not-utf8"}:
        with pytest.raises(Exception):  # noqa: B017 - safetensors raises its own error types
            rust_parse(blob)


def test_truncated_real_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD[:-3])
    with pytest.raises(SafetensorsFormatError, match="runs past the end of the file"):
        read_header(path)


def test_json_header_missing_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, struct.pack("<Q", 0))
    with pytest.raises(SafetensorsFormatError, match="not valid JSON"):
        read_header(path)


def test_good_control_case(tmp_path: Path) -> None:
    header = read_header(write(tmp_path, GOOD))
    assert json.loads(header.header_bytes[8:]) == json.loads(GOOD[8 : len(header.header_bytes)])


# -- property: read_header accepts exactly what the reference parser accepts ------------------

DTYPES_AND_BOGUS = [*sorted(BITS), "X8", "f32"]


@st.composite
def near_valid_files(draw: Any) -> bytes:
    """Small files that are valid or off by one in some way (offsets, sizes, dtypes, padding)."""
    header: dict[str, Any] = {}
    cursor = 0
    for k in range(draw(st.integers(0, 3))):
        dtype = draw(st.sampled_from(DTYPES_AND_BOGUS))
        shape = draw(st.lists(st.integers(0, 4), max_size=2))
        elements = int(np.prod(shape)) if shape else 1
        nbytes = (elements * BITS.get(dtype, 8) + 7) // 8
        begin = cursor + draw(st.sampled_from([0, 0, 0, 1, -1]))
        end = begin + nbytes + draw(st.sampled_from([0, 0, 0, 1, -1]))
        header[f"t{k}"] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
        cursor = max(cursor, end)
    if draw(st.booleans()):
        header["__metadata__"] = {"format": "pt"}
    keys = draw(st.permutations(list(header)))
    raw: bytes = json.dumps({k: header[k] for k in keys}).encode() + b" " * draw(st.integers(0, 9))
    trailing: int = draw(st.sampled_from([0, 0, 0, 1, -1]))
    data = bytes(max(0, cursor + trailing))
    return struct.pack("<Q", len(raw)) + raw + data


@settings(max_examples=300, deadline=None)
@given(near_valid_files())
def test_property_agrees_with_reference_parser(blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), blob)
        try:
            rust_parse(blob)
        except Exception:  # noqa: BLE001 - any rejection by the reference parser
            with pytest.raises(SafetensorsFormatError):
                read_header(path)
            return
        header = read_header(path)
        assert header.file_size == len(blob)
        assert {t.name for t in header.tensors} == {n for n, _ in rust_parse(blob)}
