"""The one redis-server launcher of the tests: a private server on a unix socket that a test can
stop and start again (same socket, same data dir). The session's shared Redis
(``redis_server`` in tests/conftest.py) is one too."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import TracebackType

import redis

from tests.helpers import wait_until


class RedisProcess:
    """``redis-server`` on a unix socket in ``root``; ``appendonly`` persists across restarts."""

    def __init__(self, root: Path, *, appendonly: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket = self.root / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run `make setup`")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--dir",
                str(self.root),
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "always",
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_until(self._ping, what="redis-server answers PING")

    def _ping(self) -> bool:
        client = redis.Redis.from_url(self.url)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def stop(self) -> None:
        """SIGKILL (a crash: only what ``appendonly`` persisted survives)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
        self.socket.unlink(missing_ok=True)

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
