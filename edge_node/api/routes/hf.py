"""The Hugging Face Hub download API (model info, tree, resolve) for every catalogued model.

Held models are answered from the node's manifests and blocks; others from the controller's
catalogue, their blocks pulled through (edge_node.pull). On an on-demand node a file download
also counts as a request for its model (edge_node.ondemand: cached on a miss).
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import Response

from core import hubapi
from core.asgi import BINARY_RESPONSES
from edge_node import ondemand
from edge_node.api.deps import AgentDep, NodeDep, OnDemandDep, PullDep
from edge_node.api.routes._body import pieces_response
from edge_node.hub import file_headers, find_file, model_info, tree
from edge_node.pull import PullThrough, ServedRepo
from edge_node.tainted import RANGE_IGNORED_HEADER

router = APIRouter(tags=["hub"])


def _reader(pull: PullThrough, repo: ServedRepo) -> Any:
    return partial(pull.read_file, repo)


@router.get("/api/models")
def list_repos(pull: PullDep) -> list[dict[str, Any]]:
    return [{"id": r, "modelId": r} for r in pull.repo_ids()]


@router.get("/api/models/{org}/{name}")
def get_model_info(org: str, name: str, pull: PullDep) -> dict[str, Any]:
    repo = pull.find_repo(f"{org}/{name}")
    return model_info(repo.manifest, _reader(pull, repo))


@router.get("/api/models/{org}/{name}/revision/{revision:path}")
def get_model_info_at(org: str, name: str, revision: str, pull: PullDep) -> dict[str, Any]:
    repo = pull.find_repo(f"{org}/{name}", revision)
    return model_info(repo.manifest, _reader(pull, repo))


@router.get("/api/models/{org}/{name}/tree/{revision}")
def get_tree_root(
    org: str, name: str, revision: str, pull: PullDep, recursive: bool = False
) -> list[dict[str, Any]]:
    repo = pull.find_repo(f"{org}/{name}", revision)
    return tree(repo.manifest, "", recursive=recursive, read=_reader(pull, repo))


@router.get("/api/models/{org}/{name}/tree/{revision}/{path:path}")
def get_tree_path(
    org: str, name: str, revision: str, path: str, pull: PullDep, recursive: bool = False
) -> list[dict[str, Any]]:
    repo = pull.find_repo(f"{org}/{name}", revision)
    return tree(repo.manifest, path, recursive=recursive, read=_reader(pull, repo))


@router.head(
    "/{org}/{name}/resolve/{revision}/{path:path}",
    response_class=Response,
    responses=BINARY_RESPONSES,
)
def resolve_head(org: str, name: str, revision: str, path: str, pull: PullDep) -> Response:
    repo = pull.find_repo(f"{org}/{name}", revision)
    entry = find_file(repo.manifest, path)
    headers = file_headers(repo.manifest, entry, _reader(pull, repo))
    headers["Content-Length"] = str(entry.size)
    return Response(headers=headers, media_type="application/octet-stream")


@router.get(
    "/{org}/{name}/resolve/{revision}/{path:path}",
    response_class=Response,
    responses=BINARY_RESPONSES,
)
def resolve_get(
    org: str,
    name: str,
    revision: str,
    path: str,
    node: NodeDep,
    pull: PullDep,
    cache: OnDemandDep,
    agent: AgentDep,
    range_header: Annotated[str | None, Header(alias="range")] = None,
) -> Response:
    repo = pull.find_repo(f"{org}/{name}", revision)
    entry = find_file(repo.manifest, path)
    if agent is not None and agent.enabled:  # the agent's observed demand (edge_node.agent)
        agent.demand.observe(repo.manifest.model_id)
    headers = file_headers(repo.manifest, entry, _reader(pull, repo))
    span = hubapi.parse_range(range_header, entry.size)
    if span is not None and node.tainted.head_tainted(entry, span[0]):
        # The client's head may hold bytes of a block caught changed mid-response: the whole
        # file instead (huggingface_hub then rewrites its partial file from the start).
        span = None
        headers[RANGE_IGNORED_HEADER] = "tainted"
    status, start, end = hubapi.range_headers(headers, span, entry.size)
    if cache is not None:  # on demand: count the request, cache the model on a miss
        pieces, cache_headers = ondemand.serve(
            cache,
            pull,
            repo,
            lambda: pull.file_windows(entry, start, end),
            lambda: node.file_pieces(entry, start, end),
        )
        headers.update(cache_headers)
        held = cache_headers[ondemand.CACHE_HEADER] != "miss"
    else:
        windows = pull.file_windows(entry, start, end)
        held = not pull.missing_bytes(windows)
        pieces = pull.serve(repo, windows)
    # Held blocks go by sendfile, each checked unchanged right after it; a failed check cuts
    # the response short and taints the block, so a resume over it gets the whole file
    # (edge_node.tainted). Pulled blocks are read and checked on the way out.
    return pieces_response(node, pieces, status_code=status, headers=headers, zero_copy=held)
