"""`trimcache blocks split|assemble|verify` and `trimcache dedup` on the command line."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from core.errors import ManifestError


def add_parsers(subparsers: Any) -> None:
    blocks = subparsers.add_parser("blocks", help="split models into blocks and rebuild them")
    sub = blocks.add_subparsers(dest="blocks_command", metavar="ACTION", required=True)

    split = sub.add_parser("split", help="store a model's blocks; print its manifest JSON")
    split.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    split.add_argument("--store", type=Path, required=True, metavar="STORE_DIR")
    split.add_argument("--model-id", help="short model id (default: the directory name)")
    split.add_argument("--repo-id", help="Hub repo id recorded in the manifest")
    split.add_argument("--revision", default="main")
    split.set_defaults(func=_split)

    assemble = sub.add_parser("assemble", help="rebuild a model's files from a store")
    assemble.add_argument("manifest", metavar="MANIFEST_JSON", help="manifest file, or - for stdin")
    assemble.add_argument("--store", type=Path, required=True, metavar="STORE_DIR")
    assemble.add_argument("--out", type=Path, required=True, metavar="OUT_DIR")
    assemble.set_defaults(func=_assemble)

    verify = sub.add_parser("verify", help="re-hash every block of a store; quarantine bad ones")
    verify.add_argument("--store", type=Path, required=True, metavar="STORE_DIR")
    verify.set_defaults(func=_verify)

    dedup = subparsers.add_parser("dedup", help="storage report: whole-file vs tensor-level dedup")
    dedup.add_argument("model_dirs", type=Path, nargs="+", metavar="MODEL_DIR")
    dedup.set_defaults(func=_dedup)


def _emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _split(args: argparse.Namespace) -> int:
    from core.blocks import split_model
    from core.store import BlockStore

    model_dir: Path = args.model_dir
    model_id = args.model_id or model_dir.resolve().name
    manifest = split_model(
        model_dir,
        BlockStore(args.store),
        model_id=model_id,
        repo_id=args.repo_id,
        revision=args.revision,
    )
    sys.stdout.write(manifest.to_json() + "\n")
    return 0


def _assemble(args: argparse.Namespace) -> int:
    from core.blocks import assemble
    from core.manifest import ModelManifest
    from core.store import BlockStore

    if args.manifest == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.manifest).read_text()
        except OSError as exc:
            raise ManifestError(f"{args.manifest}: cannot read manifest ({exc.strerror})") from exc
    manifest = ModelManifest.from_json(text)
    if not args.store.is_dir():
        raise ManifestError(f"{args.store}: store directory does not exist")
    paths = assemble(manifest, BlockStore(args.store), args.out)
    _emit({"model_id": manifest.model_id, "files": [str(p) for p in paths]})
    return 0


def _verify(args: argparse.Namespace) -> int:
    from core.store import BlockStore

    if not args.store.is_dir():
        raise ManifestError(f"{args.store}: store directory does not exist")
    store = BlockStore(args.store)
    bad = store.scrub()
    _emit({"blocks": len(store) + len(bad), "corrupt": bad})
    return 1 if bad else 0


def _dedup(args: argparse.Namespace) -> int:
    from core.blocks import build_manifest, dedup_report
    from core.manifest import check_model_id

    manifests = []
    seen: set[str] = set()
    for model_dir in args.model_dirs:
        # Ids only label the report: any directory name works ("my model (1)" -> "my-model-1").
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", model_dir.resolve().name).strip("._-")
        base = re.sub(r"\.{2,}", ".", base)[:120] or "model"
        model_id, n = base, 1
        while model_id in seen:  # two dirs with the same name stay two models
            n += 1
            model_id = f"{base}-{n}"
        seen.add(model_id)
        manifests.append(build_manifest(model_dir, model_id=check_model_id(model_id)))
    report = dedup_report(manifests)
    for entry, model_dir in zip(report["models"], args.model_dirs, strict=True):
        entry["path"] = str(model_dir)
    _emit(report)
    return 0
