"""``python -m controller``: Settings from ``CONTROLLER_*`` env -> create_app -> uvicorn."""

from __future__ import annotations

import logging
import os

from controller.app import SERVER, create_app, freeze_startup_objects
from controller.settings import Settings
from core import serving


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("TRIMCACHE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
    settings = Settings()
    app = create_app(settings)
    freeze_startup_objects()
    serving.run(app, host=settings.host, port=settings.port, **SERVER)


if __name__ == "__main__":
    main()
