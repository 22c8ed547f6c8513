"""The Hugging Face Hub download API (model info, tree, resolve) for the models held."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import Response

from edge_node.api.deps import NodeDep
from edge_node.api.routes._body import pieces_response
from edge_node.hub import file_headers, find_file, find_repo, model_info, parse_range, tree

router = APIRouter(tags=["hub"])


@router.get("/api/models")
def list_repos(node: NodeDep) -> list[dict[str, Any]]:
    repos = sorted({m.repo_id for m in node.complete_models()})
    return [{"id": r, "modelId": r} for r in repos]


@router.get("/api/models/{org}/{name}")
def get_model_info(org: str, name: str, node: NodeDep) -> dict[str, Any]:
    return model_info(node, find_repo(node, f"{org}/{name}"))


@router.get("/api/models/{org}/{name}/revision/{revision:path}")
def get_model_info_at(org: str, name: str, revision: str, node: NodeDep) -> dict[str, Any]:
    return model_info(node, find_repo(node, f"{org}/{name}", revision))


@router.get("/api/models/{org}/{name}/tree/{revision}")
def get_tree_root(
    org: str, name: str, revision: str, node: NodeDep, recursive: bool = False
) -> list[dict[str, Any]]:
    return tree(node, find_repo(node, f"{org}/{name}", revision), "", recursive=recursive)


@router.get("/api/models/{org}/{name}/tree/{revision}/{path:path}")
def get_tree_path(
    org: str, name: str, revision: str, path: str, node: NodeDep, recursive: bool = False
) -> list[dict[str, Any]]:
    return tree(node, find_repo(node, f"{org}/{name}", revision), path, recursive=recursive)


@router.head("/{org}/{name}/resolve/{revision}/{path:path}")
def resolve_head(org: str, name: str, revision: str, path: str, node: NodeDep) -> Response:
    manifest = find_repo(node, f"{org}/{name}", revision)
    entry = find_file(manifest, path)
    headers = file_headers(manifest, entry)
    headers["Content-Length"] = str(entry.size)
    return Response(headers=headers, media_type="application/octet-stream")


@router.get("/{org}/{name}/resolve/{revision}/{path:path}")
def resolve_get(
    org: str,
    name: str,
    revision: str,
    path: str,
    node: NodeDep,
    range_header: Annotated[str | None, Header(alias="range")] = None,
) -> Response:
    manifest = find_repo(node, f"{org}/{name}", revision)
    entry = find_file(manifest, path)
    headers = file_headers(manifest, entry)
    span = parse_range(range_header, entry.size)
    start, end = span or (0, entry.size)
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
    headers["Content-Length"] = str(end - start)
    node.ensure_file_servable(entry, start, end)
    pieces = node.file_pieces(entry, start, end)
    return pieces_response(node, pieces, status_code=status, headers=headers)
