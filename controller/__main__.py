"""``python -m controller``: Settings from ``CONTROLLER_*`` env -> create_app -> uvicorn."""

from __future__ import annotations

import logging
import os
import sys

from controller.app import SERVER, create_app, freeze_startup_objects
from controller.settings import Settings
from core import serving

#: The interpreter's thread switch interval in the controller process (see main()).
SWITCH_INTERVAL_S = 0.001


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("TRIMCACHE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
    settings = Settings()
    # A request thread that gave the GIL up for a socket read gets it back within this, not
    # CPython's 5 ms, while push workers hold it: a ~1 MB GET /v1/status reads its Redis
    # answer in many recv calls, each a wait behind them (README, the issue 18 rows).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    app = create_app(settings)
    freeze_startup_objects()
    serving.run(app, host=settings.host, port=settings.port, **SERVER)


if __name__ == "__main__":
    main()
