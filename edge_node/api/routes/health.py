"""``GET /healthz``: the data dir must be writable."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from edge_node.api.deps import NodeDep

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=None)
def healthz(node: NodeDep) -> dict[str, Any] | JSONResponse:
    tmp_dir = node.settings.data_dir / "tmp"
    try:
        fd, name = tempfile.mkstemp(prefix=".tmp-health-", dir=tmp_dir)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return JSONResponse(
            {"status": "error", "node_id": node.node_id, "message": f"data dir: {exc}"},
            status_code=503,
        )
    return {"status": "ok", "node_id": node.node_id}
