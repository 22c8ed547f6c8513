"""TrimCache core: the parameter-block format shared by every other package.

Pure and service-free: safetensors header parsing, content-addressed block ids, model
manifests, a content-addressed block store, split/assemble with byte-identical reassembly, and
grouping of tensor blocks into parameter blocks. Imports no FastAPI, httpx, redis or torch.
"""

from core.blocks import (
    ParameterBlock,
    assemble,
    build_manifest,
    dedup_report,
    group_by_sharing,
    split_model,
)
from core.digest import BlockId, is_block_id, sha256_bytes, sha256_file
from core.errors import CoreError, TrimCacheError
from core.manifest import BlockRef, FileEntry, ModelManifest
from core.store import BlockStore

__all__ = [
    "BlockId",
    "BlockRef",
    "BlockStore",
    "CoreError",
    "FileEntry",
    "ModelManifest",
    "ParameterBlock",
    "TrimCacheError",
    "assemble",
    "build_manifest",
    "dedup_report",
    "group_by_sharing",
    "is_block_id",
    "sha256_bytes",
    "sha256_file",
    "split_model",
]
