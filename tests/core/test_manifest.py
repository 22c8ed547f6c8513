"""Manifests: canonical JSON round trip, and every malformed manifest is a ManifestError."""

from __future__ import annotations

import base64
import json
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.digest import sha256_bytes
from core.errors import InvalidBlockIdError, ManifestError
from core.manifest import SCHEMA, BlockRef, FileEntry, ModelManifest

BID = sha256_bytes(b"x" * 4)
HEADER = b"\x02\x00\x00\x00\x00\x00\x00\x00{}"


def sample() -> ModelManifest:
    cfg = sha256_bytes(b"{}")
    return ModelManifest(
        "demo",
        "org/demo",
        "main",
        (
            FileEntry("config.json", 2, cfg, "file", (BlockRef(cfg, 0, 2),)),
            FileEntry(
                "model.safetensors",
                len(HEADER) + 8,
                sha256_bytes(b"whatever"),
                "safetensors",
                (BlockRef(BID, len(HEADER), 4, "a"), BlockRef(BID, len(HEADER) + 4, 4, "b")),
                HEADER,
            ),
        ),
    )


def test_round_trip_and_canonical_form() -> None:
    m = sample()
    text = m.to_json()
    assert ModelManifest.from_json(text) == m
    assert ModelManifest.from_json(text.encode()) == m
    data = json.loads(text)
    assert data["schema"] == SCHEMA
    assert text == json.dumps(data, sort_keys=True, separators=(",", ":"))
    # Same content written with other key order and whitespace parses to the same manifest id.
    pretty = json.dumps(data, indent=4)
    assert ModelManifest.from_json(pretty).manifest_id == m.manifest_id
    assert m.manifest_id == sha256_bytes(text.encode())
    assert m.total_bytes == 2 + len(HEADER) + 8
    assert m.unique_bytes == 2 + 4  # the tied tensor counts once
    assert m.block_sizes() == {sha256_bytes(b"{}"): 2, BID: 4}


names = st.text(string.ascii_letters + string.digits + "._-/", min_size=1, max_size=20)


@st.composite
def manifests(draw: Any) -> ModelManifest:
    n_files = draw(st.integers(1, 4))
    paths = sorted(
        set(
            draw(
                st.lists(
                    st.from_regex(
                        r"[a-z0-9_]{1,8}(/[a-z0-9_]{1,8}){0,2}\.(json|safetensors|txt)",
                        fullmatch=True,
                    ),
                    min_size=n_files,
                    max_size=n_files,
                )
            )
        )
    )
    # A path cannot be both a file and a directory; drop prefixes.
    paths = [p for p in paths if not any(q.startswith(p + "/") for q in paths)]
    files = []
    for path in paths:
        payloads = draw(st.lists(st.binary(max_size=16), min_size=1, max_size=5))
        if path.endswith(".safetensors"):
            header = draw(st.binary(min_size=8, max_size=40))
            off, refs = len(header), []
            for i, p in enumerate(payloads):
                refs.append(
                    BlockRef(
                        sha256_bytes(p),
                        off,
                        len(p),
                        draw(st.none() | st.text(max_size=6)) if i else f"t{i}",
                    )
                )
                off += len(p)
            files.append(
                FileEntry(
                    path,
                    off,
                    sha256_bytes(header + b"".join(payloads)),
                    "safetensors",
                    tuple(refs),
                    header,
                )
            )
        else:
            data = payloads[0]
            bid = sha256_bytes(data)
            files.append(FileEntry(path, len(data), bid, "file", (BlockRef(bid, 0, len(data)),)))
    return ModelManifest(
        draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)),
        draw(st.from_regex(r"[a-z0-9]{1,8}/[a-z0-9]{1,8}", fullmatch=True)),
        draw(st.from_regex(r"[a-z0-9]{1,40}", fullmatch=True)),
        tuple(files),
    )


@settings(max_examples=60, deadline=None)
@given(manifests())
def test_property_round_trip_is_canonical(m: ModelManifest) -> None:
    text = m.to_json()
    back = ModelManifest.from_json(text)
    assert back == m
    assert back.to_json() == text
    assert back.manifest_id == m.manifest_id
    shuffled = json.dumps(json.loads(text), indent=1, sort_keys=False)
    assert ModelManifest.from_json(shuffled).manifest_id == m.manifest_id


# -- malformed manifests -------------------------------------------------------------------


def mutated(fn: Any) -> str:
    data = json.loads(sample().to_json())
    fn(data)
    return json.dumps(data)


def _set(path: list[Any], value: Any) -> Any:
    def fn(data: Any) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return fn


BAD = {
    "not-json": ("{", "not valid JSON"),
    "not-object": ("[1]", "not a JSON object"),
    "no-schema": (mutated(lambda d: d.pop("schema")), "unsupported manifest schema None"),
    "future-schema": (mutated(_set(["schema"], "trimcache.manifest/v9")), "unsupported"),
    "missing-files": (mutated(lambda d: d.pop("files")), "files"),
    "files-not-list": (mutated(_set(["files"], 7)), "malformed"),
    "file-not-object": (mutated(_set(["files"], ["config.json"])), "malformed"),
    "files-is-dict": (mutated(_set(["files"], {"a": 1})), "malformed"),
    "block-row-short": (mutated(_set(["files", 0, "blocks", 0], [BID])), "malformed"),
    "block-row-not-list": (mutated(_set(["files", 0, "blocks", 0], 5)), "malformed"),
    "size-not-int": (mutated(_set(["files", 0, "size"], "big")), "malformed"),
    "bad-base64": (mutated(_set(["files", 1, "header"], "!!!")), "malformed"),
    "unsafe-path": (mutated(_set(["files", 0, "path"], "../x")), "invalid file path '../x'"),
    "absolute-path": (mutated(_set(["files", 0, "path"], "/etc/passwd")), "invalid file path"),
    "dot-path": (mutated(_set(["files", 0, "path"], "a/./b")), "invalid file path"),
    "backslash-path": (mutated(_set(["files", 0, "path"], "..\\x")), "invalid file path"),
    "overlapping-blocks": (
        mutated(_set(["files", 1, "blocks", 1, 1], len(HEADER) + 2)),
        "expected 14 (blocks must tile the file)",
    ),
    "gap-between-blocks": (
        mutated(_set(["files", 1, "blocks", 1, 1], len(HEADER) + 5)),
        "blocks must tile the file",
    ),
    "size-mismatch": (mutated(_set(["files", 1, "size"], 99)), "file size is 99"),
    "negative-length": (mutated(_set(["files", 1, "blocks", 1, 2], -4)), "negative"),
    "block-id-traversal": (
        mutated(_set(["files", 1, "blocks", 0, 0], "../../etc/passwd")),
        "invalid block id '../../etc/passwd'",
    ),
    "block-id-upper": (
        mutated(_set(["files", 1, "blocks", 0, 0], BID.upper())),
        "invalid block id",
    ),
    "block-id-63": (mutated(_set(["files", 1, "blocks", 0, 0], BID[:63])), "invalid block id"),
    "bad-sha256": (mutated(_set(["files", 1, "sha256"], "abc")), "not 64 lowercase hex"),
    "plain-file-id": (mutated(_set(["files", 0, "sha256"], BID)), "block id must be its sha256"),
    "unknown-kind": (mutated(_set(["files", 1, "kind"], "pickle")), "unknown file kind"),
    "unsorted-files": (mutated(lambda d: d["files"].reverse()), "unique and sorted"),
    "bad-model-id": (mutated(_set(["model_id"], "../m")), "invalid model id"),
    "bad-repo-id": (mutated(_set(["repo_id"], "a/b/c")), "invalid repo id"),
    "bad-revision": (mutated(_set(["revision"], "a/b")), "invalid revision"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_manifest(case: str) -> None:
    text, problem = BAD[case]
    with pytest.raises(ManifestError) as info:
        ModelManifest.from_json(text)
    assert problem in str(info.value)


@pytest.mark.parametrize("bad", ["../../etc/passwd", BID.upper(), BID[:63], BID + "0", 7, None])
def test_block_ref_rejects_bad_ids(bad: Any) -> None:
    with pytest.raises(InvalidBlockIdError, match="expected 64 lowercase hex"):
        BlockRef(bad, 0, 1)


def test_header_is_base64_in_json() -> None:
    data = json.loads(sample().to_json())
    assert base64.b64decode(data["files"][1]["header"]) == HEADER
    assert "header" not in data["files"][0]


def test_tensor_name_must_be_a_string() -> None:
    text = mutated(_set(["files", 1, "blocks", 0], [BID, len(HEADER), 4, 12]))
    with pytest.raises(ManifestError, match="is not a string"):
        ModelManifest.from_json(text)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=70),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=300, deadline=None)
@given(st.data(), json_values)
def test_property_any_corruption_is_a_manifest_error(data: Any, value: Any) -> None:
    doc = json.loads(sample().to_json())
    path = data.draw(st.sampled_from(_paths(doc)[1:]))
    node = doc
    for key in path[:-1]:
        node = node[key]
    if data.draw(st.booleans()) and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = value
    try:
        back = ModelManifest.from_json(json.dumps(doc))
    except ManifestError:
        return
    assert ModelManifest.from_json(back.to_json()) == back  # whatever is accepted is coherent
