"""Real service processes for the controller's system tests: controller and edge nodes.

Each runs as ``python -m <package>`` configured through its env vars, on a port picked just
before start; output goes to a log file under the test's tmp dir (shown when it fails to start).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import httpx

from tests.helpers import REPO_ROOT, free_port, wait_until


class ServiceProcess:
    def __init__(
        self,
        name: str,
        module: str,
        env: dict[str, str],
        log_dir: Path,
        port: int,
        args: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.module = module
        self.args = args
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, *, timeout_s: float = 60.0) -> ServiceProcess:
        self.launch()
        return self.wait_healthy(timeout_s=timeout_s)

    def launch(self) -> ServiceProcess:
        self._log = self.log_path.open("ab")
        full_env = {**os.environ, **self.env, "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_healthy(self, *, timeout_s: float = 60.0) -> ServiceProcess:
        try:
            wait_until(self._healthy, timeout_s=timeout_s, interval_s=0.1)
        except TimeoutError as exc:
            self.kill()
            raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}") from exc
        return self

    def _healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
        return httpx.get(f"{self.url}/healthz", timeout=2.0).status_code == 200

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crash, not a shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.kill()

    def log_tail(self, nbytes: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-nbytes:].decode(errors="replace")
        except OSError:
            return ""


def controller_process(
    log_dir: Path, *, port: int | None = None, name: str = "controller", **settings: Any
) -> ServiceProcess:
    port = port or free_port()
    env = {f"CONTROLLER_{k.upper()}": str(v) for k, v in settings.items()}
    env.update(CONTROLLER_HOST="127.0.0.1", TRIMCACHE_LOG_LEVEL="INFO")
    # Through the console script's code path: `trimcache controller serve --port P`.
    args = ("controller", "serve", "--port", str(port))
    return ServiceProcess(name, "testbed.cli", env, log_dir, port, args)


def origin_process(log_dir: Path, zoo_dir: Path) -> ServiceProcess:
    """The local Hub origin serving ``zoo_dir`` (``trimcache origin serve``), no link emulation."""
    port = free_port()
    args = ("origin", "serve", "--root", str(zoo_dir), "--port", str(port))
    return ServiceProcess("origin", "testbed.cli", {}, log_dir, port, args)


def edge_process(log_dir: Path, node_id: str, **settings: Any) -> ServiceProcess:
    port = free_port()
    # Peers are other test edges on loopback ports picked at start: allow loopback.
    env = {"EDGE_ALLOWED_HOSTS": "127.0.0.1"}
    env.update({f"EDGE_{k.upper()}": str(v) for k, v in settings.items()})
    env.update(EDGE_NODE_ID=node_id, EDGE_HOST="127.0.0.1", EDGE_PORT=str(port))
    return ServiceProcess(node_id, "edge_node", env, log_dir, port)
