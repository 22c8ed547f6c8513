"""``python -m edge_node``: ``Settings()`` from ``EDGE_*`` env -> ``create_app`` -> uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from core.asgi import KEEP_ALIVE_S
from edge_node.app import create_app
from edge_node.settings import Settings


def serve(settings: Settings) -> None:
    """Run the node in the foreground until interrupted (configures logging)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=KEEP_ALIVE_S,
    )


def main() -> None:
    serve(Settings())


if __name__ == "__main__":
    main()
