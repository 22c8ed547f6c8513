"""The process testbed: Redis, the origin, the controller and N edge nodes as local processes.

``up()`` starts every service as a detached subprocess (its own session and process group, so it
outlives the launcher and ``down()`` can stop it with all its children), waits until each one is
healthy and the testbed is *ready* (the controller indexed every repo the origin lists, and every
edge node applied the first placement that covers them), and records everything in
``STATE_DIR/testbed.json``. ``down()`` stops every recorded process group (SIGTERM, then SIGKILL
after a grace period) and leaves no process behind. ``status()`` probes each service.

The zoo comes from the machine's shared zoo cache (:func:`testbed.zoo.ensure_zoo`, built once per
input hash) unless ``zoo_dir`` names one. The controller listens on ``controller_port`` (8080, so
the SDK's default URL works) when that port is free, else on a random one; ``up`` also records
the state dir as the machine's last testbed (testbed/paths.py), which ``trimcache models`` and
``trimcache testbed status`` use when given no flag.

On disk::

    STATE_DIR/testbed.json        the contract of docs/api.md ("Testbed"), written atomically
    STATE_DIR/logs/<service>.log  stdout + stderr of each service (zoo.log for the zoo build)
    STATE_DIR/redis/              Redis's working dir (AOF persistence on)
    STATE_DIR/edges/<node_id>/    each edge node's data dir
    STATE_DIR/hf/                 HF_HOME of the services (the controller's download cache)

What runs is the service table of testbed/services.py (command, env, health URL, depends-on),
the one docker-compose.yml mirrors. Services start in its dependency waves, like compose's
``depends_on``: Redis and the origin, then the controller, then the edge nodes (which register
with the controller). Each command runs as ``python -m testbed.cli ...`` (no console script
needed on PATH), or as ``LaunchOptions.runner`` says (the container smoke test runs each in the
service image).

Invariants:

- A pid is only ever signalled when it still is the process we started: each record carries the
  process's create time (psutil), so a recycled pid is never killed.
- ``testbed.json`` records each process as soon as it is spawned (``"status": "starting"``), so
  ``down`` can stop a half-started testbed whose launcher died; ``up`` rewrites it with every URL
  and ``"status": "running"`` once all services are healthy. A failed ``up`` stops what it had
  started and removes the file before raising.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import psutil

from core.errors import TrimCacheError
from core.failover import Endpoints
from core.fsutil import atomic_write_json
from core.ports import free_port
from core.waiting import wait_until
from testbed import paths
from testbed.services import (
    Deployment,
    Kind,
    LinkProfile,
    ServiceSpec,
    find_redis_server,
    local_argv,
    service_table,
    waves,
)
from testbed.topology import SiteLayout, grid_topology, node_id_for
from testbed.world import layout_of, prepare_world, world_env

__all__ = ["LinkProfile", "LaunchOptions", "Service", "TestbedError", "down", "status", "up"]

SCHEMA = "trimcache.testbed/v1"
STATE_FILE = "testbed.json"
LOOPBACK = "127.0.0.1"
# The SDK's and CLI's default controller URL is http://127.0.0.1:8080.
DEFAULT_CONTROLLER_PORT = 8080
Profile = Literal["test", "full"]
T = TypeVar("T")
# Env prefixes of the services' settings: never leaked from the caller into a service.
SERVICE_ENV_PREFIXES = ("EDGE_", "CONTROLLER_", "ORIGIN_")


class TestbedError(TrimCacheError):
    """The testbed could not be started, or its state dir is unusable."""

    __test__ = False  # not a pytest test class despite the name
    code = "testbed_error"
    exit_code = 1


# The "full" profile is the papers' setting: the cloud behind a slower, longer backhaul than the
# radio link to a near edge node. The "test" profile turns shaping off so tests run fast.
DEFAULT_LINKS: dict[str, tuple[LinkProfile, LinkProfile]] = {
    "full": (LinkProfile(100.0, 30.0), LinkProfile(400.0, 5.0)),
    "test": (LinkProfile(None, 0.0), LinkProfile(None, 0.0)),
}


@dataclass(frozen=True, slots=True)
class LaunchOptions:
    """What ``up()`` starts. ``None`` link values fall back to the profile's defaults."""

    state_dir: Path
    edges: int = 3
    zoo_dir: Path | None = None
    capacity_bytes: int = 512 * 1024 * 1024
    profile: Profile = "full"
    backhaul: LinkProfile | None = None
    radio: LinkProfile | None = None
    auth_token: str | None = None
    seed: int = 0
    timeout_s: float = 120.0
    solver: str | None = None
    # "hit-ratio" / "delay" (CONTROLLER_OBJECTIVE; None: the controller's default). With
    # "delay", ``solver`` names a delay solver (CONTROLLER_DELAY_SOLVER).
    objective: str | None = None
    # The trained agents of the ``marl`` delay solver (CONTROLLER_MARL_CHECKPOINT).
    marl_checkpoint: Path | None = None
    # "lru" / "lfu": every edge caches on demand (EDGE_CACHE_POLICY) instead of holding a
    # planned placement; None: planned placement.
    cache_policy: str | None = None
    # Decentralised mode: every edge runs this trained ``marl`` agent (EDGE_AGENT_CHECKPOINT,
    # edge_node.agent) every ``agent_interval_s`` instead of holding a planned placement.
    agent_checkpoint: Path | None = None
    agent_interval_s: float = 2.0
    # Preferred controller port, used when free (else a random one); 0: always random (tests).
    controller_port: int = DEFAULT_CONTROLLER_PORT
    # Controller replicas on the one Redis (the first on controller_port, the others on random
    # ports); every edge gets every controller URL.
    controllers: int = 1
    # Bound on indexing + the first placement being applied (the full zoo over a 100 Mbit/s
    # backhaul moves ~1 GB).
    ready_timeout_s: float = 900.0
    # The controller's manifest cache (None: the machine's shared one, testbed/paths.py).
    manifest_cache_dir: Path | None = None
    # How a service's table command becomes an argv (None: a local process, services.local_argv).
    runner: Callable[[ServiceSpec], list[str]] | None = None
    # The world (testbed/world.py): None: byte-rate links (backhaul/radio above); "default": the
    # grid with the delay model's radio, in clusters of ``cluster_size``; else a world file.
    # With a world its backhaul and radio apply and the edges emulate the shared downlink.
    world: str | None = None
    cluster_size: int = 1
    # EDGE_BROADCAST_WINDOW_S of every edge (with a world; 0: no broadcast).
    broadcast_window_s: float = 0.0

    def links(self) -> tuple[LinkProfile, LinkProfile]:
        backhaul, radio = DEFAULT_LINKS[self.profile]
        return (self.backhaul or backhaul, self.radio or radio)


@dataclass(slots=True)
class Service:
    """One started process: how to probe it and how to find it again."""

    name: str
    kind: Kind
    url: str
    pid: int
    create_time: float | None
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "url": self.url,
            "pid": self.pid,
            "create_time": self.create_time,
            "log": str(self.log),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Service:
        return cls(
            name=str(data["name"]),
            kind=data["kind"],
            url=str(data["url"]),
            pid=int(data["pid"]),
            create_time=None if data.get("create_time") is None else float(data["create_time"]),
            log=Path(data["log"]),
        )


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """What ``status()`` found for one service."""

    name: str
    kind: str
    url: str
    pid: int
    running: bool
    healthy: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "url": self.url,
            "pid": self.pid,
            "running": self.running,
            "healthy": self.healthy,
            "detail": self.detail,
        }


# --------------------------------------------------------------------------- processes


def _create_time(pid: int) -> float | None:
    """When ``pid`` started (psutil's create time), None when there is no such process."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our own exited child (a zombie still answers kill(pid, 0))."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _running(process: psutil.Process) -> bool:
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # exists, but we may not look at it


#: How far two readings of one process's start time may differ. psutil derives it from the boot
#: time in /proc/stat, whole seconds of wall clock minus uptime: when the clock is stepped (NTP on
#: a machine that just booted) a later reading moves by a second. A reused pid starts later.
START_TIME_SLACK_S = 2.0


def process_alive(pid: int, create_time: float | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, when given, started at ``create_time``
    (within :data:`START_TIME_SLACK_S`)."""
    _reap(pid)
    try:
        process = psutil.Process(pid)
        same = create_time is None or abs(process.create_time() - create_time) <= START_TIME_SLACK_S
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True
    return same and _running(process)


def _group_members(pgid: int) -> list[psutil.Process]:
    """The live (non-zombie) processes of process group ``pgid``."""
    members: list[psutil.Process] = []
    for process in psutil.process_iter():
        with contextlib.suppress(OSError):
            if os.getpgid(process.pid) == pgid and _running(process):
                members.append(process)
    return members


def _group_alive(pgid: int) -> bool:
    _reap(pgid)
    return bool(_group_members(pgid))


def _owns_group(service: Service) -> bool:
    """Whether ``service.pid`` still names the process group we started.

    True when the leader is our process, or when the leader is gone (or a zombie) but members of
    its group remain (a pid is not reused while a group with that id exists).
    """
    if process_alive(service.pid, service.create_time):
        return True
    try:
        leader = psutil.Process(service.pid)
    except psutil.NoSuchProcess:
        return _group_alive(service.pid)
    except psutil.Error:
        return False
    return not _running(leader) and _group_alive(service.pid)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_services(services: Iterable[Service], *, grace_s: float = 10.0) -> list[str]:
    """SIGTERM every service's process group, SIGKILL what is left after ``grace_s``.

    Returns the names of the services that were running.
    """
    targets = [service for service in services if _owns_group(service)]
    members = [member for service in targets for member in _group_members(service.pid)]
    for service in targets:
        _signal_group(service.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=grace_s)
    if alive:
        for service in targets:
            if _group_alive(service.pid):
                _signal_group(service.pid, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=10.0)
    for service in targets:
        if service.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=1)
        _reap(service.pid)
    left = [s.name for s in targets if _group_alive(s.pid)]
    if left:
        raise TestbedError(f"processes survived SIGKILL: {', '.join(left)}")
    return [service.name for service in targets]


def _free_port(taken: set[int]) -> int:
    """An unused loopback TCP port, never one already handed out in this launch."""
    while (port := free_port(LOOPBACK)) in taken:
        pass
    taken.add(port)
    return port


def _wait(
    predicate: Callable[[], T | None],
    *,
    timeout_s: float,
    on_timeout: Callable[[], Exception],
    check: Callable[[], None] = lambda: None,
    interval_s: float = 0.1,
) -> T:
    """:func:`core.waiting.wait_until` on ``predicate``, with ``check`` run first each time: a
    :class:`TestbedError` it raises (a service died) ends the wait at once; on timeout,
    ``on_timeout()`` is raised."""
    fatal: list[TestbedError] = []

    def step() -> T | None:
        try:
            check()
        except TestbedError as exc:
            fatal.append(exc)
            return None
        return predicate()

    try:
        value = wait_until(
            lambda: True if fatal else step(), timeout_s=timeout_s, interval_s=interval_s
        )
    except TimeoutError:
        raise on_timeout() from None
    if fatal:
        raise fatal[0]
    return value  # type: ignore[return-value]


def _port_is_free(port: int) -> bool:
    """Whether a server could bind ``LOOPBACK:port`` now (SO_REUSEADDR, as uvicorn does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _child_env(extra: Mapping[str, str], state_dir: Path) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(SERVICE_ENV_PREFIXES)
    }
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(state_dir / "hf"),
        }
    )
    env.update(extra)
    return env


def _spawn(
    spec: ServiceSpec, argv: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path
) -> Service:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        sink.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        sink.flush()
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # own session + process group: survives us, killpg-able
        )
    return Service(
        spec.name, spec.kind, spec.url, process.pid, _create_time(process.pid), log, process
    )


# --------------------------------------------------------------------------- health


def _redis_ping(url: str, *, timeout_s: float = 2.0) -> bool:
    host, _, port = url.removeprefix("redis://").split("/")[0].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


def probe(service: Service, *, timeout_s: float = 2.0) -> tuple[bool, str]:
    """One health probe: Redis PING, or GET /healthz answering 200."""
    try:
        if service.kind == "redis":
            ok = _redis_ping(service.url, timeout_s=timeout_s)
            return ok, "PONG" if ok else "no PONG"
        response = httpx.get(f"{service.url}/healthz", timeout=timeout_s)
    except (OSError, httpx.HTTPError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return False, f"/healthz answered {response.status_code}: {response.text[:200]}"
    return True, "ok"


def log_tail(path: Path, *, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _exited(service: Service) -> str | None:
    """Why ``service`` is no longer running (None: it runs)."""
    # Our own child: poll() reaps it and keeps its exit code (process_alive would reap it first
    # and lose the code).
    code = service.process.poll() if service.process is not None else None
    if code is None and process_alive(service.pid, service.create_time):
        return None
    return f"exit code {code}"


def _check_running(services: Sequence[Service], when: str) -> Callable[[], None]:
    def check() -> None:
        for service in services:
            why = _exited(service)
            if why is not None:
                raise TestbedError(
                    f"{service.name} exited {when} ({why}); "
                    f"last lines of {service.log}:\n{log_tail(service.log)}"
                )

    return check


def _wait_healthy(services: Sequence[Service], *, timeout_s: float) -> None:
    """Block until every service is healthy; raise naming the first one that is not."""
    pending = {service.name: service for service in services}
    last: dict[str, str] = {}

    def all_healthy() -> bool:
        for name, service in list(pending.items()):
            ok, last[name] = probe(service)
            if ok:
                del pending[name]
        return not pending

    def timed_out() -> Exception:
        name, service = next(iter(pending.items()))
        return TestbedError(
            f"{name} not healthy after {timeout_s:.0f}s at {service.url} "
            f"({last.get(name, '')}); last lines of {service.log}:\n{log_tail(service.log)}"
        )

    _wait(
        all_healthy,
        timeout_s=timeout_s,
        on_timeout=timed_out,
        check=lambda: _check_running(list(pending.values()), "during startup")(),
    )


def _wait_registered(
    controller_url: str, node_ids: Sequence[str], *, edges: Sequence[Service], timeout_s: float
) -> None:
    """Block until the controller lists every edge node (their first heartbeats arrived)."""
    missing = set(node_ids)

    def registered() -> bool:
        nonlocal missing
        try:
            response = httpx.get(f"{controller_url}/v1/nodes", timeout=5)
            if response.status_code == 200:
                listed = {str(node.get("node_id")) for node in response.json().get("nodes", [])}
                missing = set(node_ids) - listed
        except (httpx.HTTPError, ValueError, AttributeError):
            pass
        return not missing

    def timed_out() -> Exception:
        first = next(s for s in edges if s.name in missing) if missing else edges[0]
        return TestbedError(
            f"{first.name} did not register with the controller within {timeout_s:.0f}s; "
            f"last lines of {first.log}:\n{log_tail(first.log)}"
        )

    _wait(registered, timeout_s=timeout_s, on_timeout=timed_out, interval_s=0.2)


def origin_repos(origin_url: str) -> list[str]:
    """Every repo the origin lists, read as any Hub client would (``HfApi.list_models``)."""
    from huggingface_hub import HfApi

    return sorted(model.id for model in HfApi(endpoint=origin_url, token=False).list_models())


def wait_ready(
    controller_url: str,
    origin_url: str,
    node_ids: Sequence[str],
    *,
    timeout_s: float,
    say: Callable[[str], object],
    services: Sequence[Service] = (),
) -> dict[str, Any]:
    """Block until the catalogue holds every origin repo, the controller's origin indexer has
    planned after indexing them, and every node applied the current placement; return it
    (``GET /v1/placement``).

    Progress goes to ``say`` whenever it changes. Raises :class:`TestbedError` on timeout, naming
    what is missing (the indexer's last error, the pushes not applied), or when a service dies.
    """
    try:
        expected = set(origin_repos(origin_url))
    except Exception as exc:  # huggingface_hub's HTTP errors: the origin was healthy a moment ago
        raise TestbedError(f"cannot list the origin's repos at {origin_url}: {exc}") from exc
    say(f"waiting for the controller to index {len(expected)} repos from the origin")
    notes = {"last": "", "problem": "no answer from the controller yet"}

    def ready(http: httpx.Client) -> dict[str, Any] | None:
        try:
            models_doc = http.get("/v1/models").json()
            placement: dict[str, Any] = http.get("/v1/placement").json()
        except (httpx.HTTPError, ValueError) as exc:
            models_doc, placement = {}, {}
            notes["problem"] = f"controller: {exc}"
        index = models_doc.get("origin_index") or {}
        skipped = set(index.get("skipped") or ())
        have = {str(m.get("repo_id")) for m in models_doc.get("models", [])}
        wanted = expected - skipped
        missing = sorted(wanted - have)
        if missing:
            note = f"indexed {len(wanted) - len(missing)}/{len(wanted)} repos"
            notes["problem"] = f"not indexed: {', '.join(missing)}"
            if index.get("error"):
                notes["problem"] += f" (last error: {index['error']})"
        else:
            push = placement.get("push") or {}
            applied = [n for n in node_ids if (push.get(n) or {}).get("status") == "applied"]
            version = int(placement.get("version") or 0)
            # The indexer plans once it has every repo; the planner may keep the current
            # placement (stable placement), so "done" rather than "covers every model".
            if index:
                planned = index.get("state") == "done"
            else:
                planned = int((placement.get("problem") or {}).get("models", 0)) >= len(have)
            if version and planned and len(applied) == len(node_ids):
                say(
                    f"placement v{version} applied on {len(applied)} edge node(s) "
                    f"(expected hit ratio {float(placement.get('hit_ratio', 0.0)):.3f})"
                    if node_ids
                    else f"all {len(have)} repos indexed; the edges cache on demand (no placement)"
                )
                return placement
            note = (
                f"all {len(have)} repos indexed; placement v{version}: "
                f"{len(applied)}/{len(node_ids)} edge node(s) applied"
            )
            failed = {
                n: f"{p.get('status')}: {p.get('error', '')}".strip(": ")
                for n, p in push.items()
                if p.get("status") not in ("applied", "pending", "pushing")
            }
            notes["problem"] = note + (f" (push {failed})" if failed else "")
        if note != notes["last"]:
            say(note)
            notes["last"] = note
        return None

    with httpx.Client(base_url=controller_url, timeout=10) as http:
        return _wait(
            lambda: ready(http),
            timeout_s=timeout_s,
            on_timeout=lambda: TestbedError(
                f"testbed not ready after {timeout_s:.0f}s: {notes['problem']}"
            ),
            check=_check_running(services, "while the testbed was getting ready"),
            interval_s=0.25,
        )


# --------------------------------------------------------------------------- state file


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def load_state(state_dir: Path) -> dict[str, Any] | None:
    """The recorded testbed of ``state_dir``, or None when there is none."""
    path = state_path(state_dir)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise TestbedError(f"{path} is unreadable: {exc}") from exc
    if data.get("schema") != SCHEMA:
        raise TestbedError(f"{path} has schema {data.get('schema')!r}, expected {SCHEMA!r}")
    return data


def services_of(state: Mapping[str, Any]) -> list[Service]:
    return [Service.from_json(item) for item in state.get("services", [])]


# --------------------------------------------------------------------------- zoo


def resolve_zoo(
    zoo_dir: Path | None,
    *,
    log: Path,
    seed: int,
    profile: Profile,
    say: Callable[[str], object],
    timeout_s: float = 3600.0,
) -> Path:
    """The zoo to serve: ``zoo_dir`` (built into it if absent), else the shared cache's.

    A build streams its progress lines through ``say`` (prefixed ``zoo:``) and into ``log``.
    """
    from testbed.zoo import ensure_zoo, run_build

    def relay(message: str) -> None:
        say(f"zoo: {message}")

    try:
        if zoo_dir is None:
            found = ensure_zoo(profile, seed=seed, progress=relay, timeout_s=timeout_s)
            say(f"model zoo ({profile} profile): {found}")
            return found
        zoo_dir = Path(zoo_dir).resolve()
        if (zoo_dir / "zoo.json").is_file():
            say(f"model zoo: {zoo_dir}")
            return zoo_dir
        say(f"building the {profile} model zoo into {zoo_dir} (a few minutes)")
        log.parent.mkdir(parents=True, exist_ok=True)
        run_build(zoo_dir, profile=profile, seed=seed, log_path=log, say=relay,
                  timeout_s=timeout_s)  # fmt: skip
        return zoo_dir
    except RuntimeError as exc:
        raise TestbedError(str(exc)) from exc


# --------------------------------------------------------------------------- up / down / status


def _adopt_existing(state_dir: Path, say: Callable[[str], object]) -> dict[str, Any] | None:
    """A recorded testbed that fully runs (returned, ``already_running``); a partly running one
    is an error; a dead one is cleaned up (None)."""
    existing = load_state(state_dir)
    if existing is None:
        return None
    recorded = services_of(existing)
    running = [s for s in recorded if process_alive(s.pid, s.create_time)]
    complete = existing.get("status", "running") == "running"
    if (
        complete
        and running
        and len(running) == len(recorded)
        and all(probe(s)[0] for s in recorded)
    ):
        say(f"testbed already running in {state_dir}")
        existing["already_running"] = True
        return existing
    if running:
        names = ", ".join(s.name for s in running)
        raise TestbedError(
            f"a testbed is {'partly running' if complete else 'starting'} in {state_dir} "
            f"({names}); run `trimcache testbed down --dir {state_dir}` first"
        )
    say(f"cleaning a stale testbed.json in {state_dir} (no process of it is running)")
    stop_services(recorded, grace_s=1.0)  # leftover group members, if any
    state_path(state_dir).unlink(missing_ok=True)
    return None


def _deployment(
    options: LaunchOptions,
    state_dir: Path,
    zoo_dir: Path,
    auth_token: str,
    say: Callable[[str], object],
) -> Deployment:
    """This launch's parameters of the service table: random free loopback ports (the
    controller's preferred one when free), per-service dirs under ``state_dir``."""
    taken: set[int] = set()
    redis_port, origin_port = _free_port(taken), _free_port(taken)
    preferred = options.controller_port
    if preferred and preferred not in taken and _port_is_free(preferred):
        controller_port = preferred
        taken.add(preferred)
    else:
        if preferred:
            say(f"port {preferred} is taken: the controller gets a random port")
        controller_port = _free_port(taken)
    backhaul, radio = options.links()
    topology = grid_topology(options.edges)
    node_ids = [node_id_for(index) for index in range(options.edges)]
    for directory in (state_dir / "redis", *(state_dir / "edges" / n for n in node_ids)):
        directory.mkdir(parents=True, exist_ok=True)
    edge_ports = [_free_port(taken) for _ in node_ids]
    extra_env = {"EDGE_CACHE_POLICY": options.cache_policy} if options.cache_policy else {}
    if options.agent_checkpoint is not None:
        extra_env["EDGE_AGENT_CHECKPOINT"] = str(Path(options.agent_checkpoint).resolve())
        extra_env["EDGE_AGENT_INTERVAL_S"] = str(options.agent_interval_s)
    channel: dict[str, float] | None = None
    if options.world is not None:
        world_file = state_dir / "world.json"
        try:
            world = prepare_world(
                None if options.world == "default" else Path(options.world),
                edges=options.edges,
                cluster_size=options.cluster_size,
                edge_urls=[f"http://{LOOPBACK}:{port}" for port in edge_ports],
                path=world_file,
            )
        except ValueError as exc:
            raise TestbedError(str(exc)) from None
        topology, channel = layout_of(world), dict(world.doc["channel"])
        if world.edge_links.rate_bytes_per_s is not None:  # the controller's edge-to-edge link
            channel["backhaul_bps"] = world.edge_links.rate_bytes_per_s * 8
        rate = world.backhaul.rate_bytes_per_s
        backhaul = LinkProfile(None if rate is None else rate * 8 / 1e6, world.backhaul.latency_ms)
        radio = LinkProfile(None, world.radio_latency_ms)  # the edges emulate it from the world
        extra_env.update(
            world_env(
                world_file,
                broadcast_window_s=options.broadcast_window_s,
                medium_dir=state_dir / "medium",
            )
        )
        say(f"world {world_file}: clusters {', '.join(sorted(set(world.cluster_of.values())))}")
    topology_file = write_controller_topology(
        state_dir / "topology.json", topology, backhaul=backhaul, radio=radio, channel=channel
    )
    return Deployment(
        auth_token=auth_token,
        zoo_dir=str(zoo_dir),
        redis_dir=str(state_dir / "redis"),
        edge_data_dirs=[str(state_dir / "edges" / n) for n in node_ids],
        hf_home=str(state_dir / "hf"),
        # Shared by every testbed on this machine: a zoo indexed once is not downloaded again.
        manifest_cache_dir=str(options.manifest_cache_dir or paths.manifest_cache_dir()),
        topology=topology,
        backhaul=backhaul,
        radio=radio,
        capacity_bytes=options.capacity_bytes,
        redis_port=redis_port,
        origin_port=origin_port,
        controller_port=controller_port,
        replica_ports=[_free_port(taken) for _ in range(options.controllers - 1)],
        edge_ports=edge_ports,
        solver=options.solver,
        objective=options.objective,
        marl_checkpoint=str(options.marl_checkpoint) if options.marl_checkpoint else None,
        topology_file=str(topology_file),
        extra_edge_env=extra_env,
    )


def up(
    options: LaunchOptions, *, on_progress: Callable[[str], object] | None = None
) -> dict[str, Any]:
    """Start the testbed and return what ``testbed.json`` records.

    Internal logic:
    1. A recorded testbed whose processes all run and answer is returned as is; a partly running
       one is an error (``down`` first); a dead one is cleaned up.
    2. Build the zoo if absent; start the service table (testbed/services.py) wave by wave in
       dependency order (Redis + origin, the controller, the edge nodes), each wave healthy
       before the next; then wait for the edges to register and the first placement.
    3. Write ``testbed.json`` atomically. On any failure, stop what was started and raise.
    """
    say = on_progress or (lambda _message: None)
    state_dir = Path(options.state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    existing = _adopt_existing(state_dir, say)
    if existing is not None:
        return existing
    if options.edges < 1:
        raise TestbedError(f"--edges must be at least 1, got {options.edges}")
    if options.controllers < 1:
        raise TestbedError(f"--controllers must be at least 1, got {options.controllers}")
    if find_redis_server() is None:
        raise TestbedError("redis-server not found on PATH: run `make setup`")

    launch_started = time.monotonic()
    logs = state_dir / "logs"
    auth_token = options.auth_token or secrets.token_urlsafe(24)
    zoo_dir = resolve_zoo(
        options.zoo_dir, log=logs / "zoo.log", seed=options.seed, profile=options.profile, say=say
    )
    deployment = _deployment(options, state_dir, zoo_dir, auth_token, say)
    table = service_table(deployment)
    argv_of = options.runner or local_argv
    started: list[Service] = []

    def record(service: Service) -> Service:
        # Recorded at once, so `down` finds the process even if this launcher dies mid-start.
        started.append(service)
        atomic_write_json(
            state_path(state_dir),
            {
                "schema": SCHEMA,
                "status": "starting",
                "state_dir": str(state_dir),
                "pids": {s.name: s.pid for s in started},
                "services": [s.to_json() for s in started],
            },
        )
        return service

    try:
        for wave in waves(table):
            say(f"starting {', '.join(spec.name for spec in wave)}")
            batch = [
                record(
                    _spawn(
                        spec, argv_of(spec), env=_child_env(spec.env, state_dir),
                        log=logs / f"{spec.name}.log",
                        cwd=Path(spec.writes[0]) if spec.kind == "redis" else state_dir,
                    )
                )
                for spec in wave
            ]  # fmt: skip
            _wait_healthy(batch, timeout_s=options.timeout_s)
            say(", ".join(f"{s.name} {s.url}" for s in batch) + " healthy")
        edges = [s for s in started if s.kind == "edge"]
        by_name = {s.name: s for s in started}
        controller_url, origin_url = by_name["controller"].url, by_name["origin"].url
        _wait_registered(
            controller_url, [s.name for s in edges], edges=edges, timeout_s=options.timeout_s
        )
        say(f"{len(edges)} edge nodes are healthy and registered with the controller")
        # Ready: the catalogue holds every origin repo and every edge applied the placement
        # that covers them (on-demand edges take no placement: only the catalogue counts).
        own_policy = options.cache_policy or options.agent_checkpoint  # they take no plans
        planned = [] if own_policy else [s.name for s in edges]
        placement = wait_ready(
            controller_url, origin_url, planned,
            timeout_s=options.ready_timeout_s, say=say, services=started,
        )  # fmt: skip
        state = _state(options, deployment, started, placement, zoo_dir)
        state["up_seconds"] = round(time.monotonic() - launch_started, 1)
        atomic_write_json(state_path(state_dir), state)
        paths.remember_testbed(state_dir)
        say(f"ready in {state['up_seconds']:.1f} s")
    except BaseException:
        stop_services(started, grace_s=5.0)
        state_path(state_dir).unlink(missing_ok=True)
        raise
    return state


def _state(
    options: LaunchOptions,
    deployment: Deployment,
    started: Sequence[Service],
    placement: Mapping[str, Any],
    zoo_dir: Path,
) -> dict[str, Any]:
    """``testbed.json`` of a running testbed (docs/api.md, "Testbed")."""
    by_name = {service.name: service for service in started}
    edges = [service for service in started if service.kind == "edge"]
    topology = deployment.topology
    return {
        "schema": SCHEMA,
        "status": "running",
        "state_dir": str(Path(options.state_dir).resolve()),
        "controller_url": by_name["controller"].url,
        # Every replica (the first is controller_url): what the edges and clients fail over on.
        "controller_urls": [s.url for s in started if s.kind == "controller"],
        "origin_url": by_name["origin"].url,
        "edge_urls": [service.url for service in edges],
        "redis_url": by_name["redis"].url,
        "auth_token": deployment.auth_token,
        "zoo_dir": str(zoo_dir),
        "profile": options.profile,
        "pids": {service.name: service.pid for service in started},
        "logs": {service.name: str(service.log) for service in started},
        "services": [service.to_json() for service in started],
        "edges": [
            {
                "node_id": service.name,
                "url": service.url,
                "position": list(topology.edge(service.name).position),
                "data_dir": data_dir,
                "capacity_bytes": options.capacity_bytes,
                "cache_policy": options.cache_policy,
                "agent_checkpoint": (
                    str(options.agent_checkpoint) if options.agent_checkpoint else None
                ),
                "area_id": topology.area_near(service.name).area_id,
            }
            for service, data_dir in zip(edges, deployment.edge_data_dirs, strict=True)
        ],
        "topology": topology.to_json(),
        "links": {
            "backhaul": deployment.backhaul.to_json(),
            "radio": deployment.radio.to_json(),
        },
        "world_file": deployment.extra_edge_env.get("EDGE_WORLD_FILE"),
        "broadcast_window_s": options.broadcast_window_s if options.world else None,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "placement_version": placement.get("version"),
    }


def controller_topology(
    topology: SiteLayout,
    *,
    backhaul: LinkProfile,
    radio: LinkProfile,
    channel: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The testbed's geography and links as a controller topology document.

    Format: controller/topology.py (``trimcache.topology/v1``); the channel's latency and the
    backhaul rate mirror the emulated links, so the controller's expected latencies match them.
    """
    # With a world, its downlink channel: the controller reasons about the radio the edges run.
    channel = {**(channel or {}), "latency_ms": radio.latency_ms}
    if backhaul.rate_mbps is not None:
        channel.setdefault("backhaul_bps", backhaul.rate_mbps * 1e6)  # a world's edge links win
        channel["origin_bps"] = backhaul.rate_mbps * 1e6  # the delay model's cloud link
    return {
        "schema": "trimcache.topology/v1",
        "areas": {
            area.area_id: {"x_m": area.x_m, "y_m": area.y_m, "weight": 1.0}
            for area in topology.areas
        },
        "channel": channel,
        "positions": {site.node_id: [site.x_m, site.y_m] for site in topology.edges},
    }


def write_controller_topology(
    path: Path,
    topology: SiteLayout,
    *,
    backhaul: LinkProfile,
    radio: LinkProfile,
    channel: Mapping[str, float] | None = None,
) -> Path:
    """Write :func:`controller_topology` to ``path`` (for ``CONTROLLER_TOPOLOGY_FILE``)."""
    doc = controller_topology(topology, backhaul=backhaul, radio=radio, channel=channel)
    atomic_write_json(path, doc)
    return path


def down(state_dir: Path, *, grace_s: float = 10.0) -> list[str]:
    """Stop every process recorded in ``state_dir``; return the names of those that ran."""
    state = load_state(Path(state_dir))
    if state is None:
        return []
    stopped = stop_services(services_of(state), grace_s=grace_s)
    state_path(Path(state_dir)).unlink(missing_ok=True)
    paths.forget_testbed(Path(state_dir))
    return stopped


def status(state_dir: Path) -> list[ServiceStatus]:
    """Probe every recorded service (empty when no testbed is recorded)."""
    state = load_state(Path(state_dir))
    if state is None:
        return []
    result: list[ServiceStatus] = []
    for service in services_of(state):
        running = process_alive(service.pid, service.create_time)
        healthy, detail = probe(service) if running else (False, "process not running")
        result.append(
            ServiceStatus(
                service.name, service.kind, service.url, service.pid, running, healthy, detail
            )
        )
    return result


def overview(state: Mapping[str, Any], *, timeout_s: float = 5.0) -> dict[str, Any]:
    """What the running testbed holds, for ``trimcache testbed status``.

    ``models`` (the controller's catalogue), ``placement`` (version, solver, expected hit ratio,
    push status per node), ``edges`` (per node: models held, logical/physical bytes, savings,
    from ``GET /v1/stats``) and ``demand`` (the controller's counts of client fetch reports;
    ``hit_ratio`` = share of fetches that took no byte from the origin). A part whose service
    does not answer is ``{"unavailable": "<why>"}``.
    """

    def get(url: str) -> Any:
        try:
            response = httpx.get(url, timeout=timeout_s)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            return {"unavailable": f"{url}: {exc}"}

    urls = [str(u) for u in state.get("controller_urls") or [state.get("controller_url", "")]]

    def from_controller(path: str) -> Any:
        """From the first replica that answers (core.failover), like an edge or a client."""
        try:
            controllers = Endpoints(urls)
        except ValueError as exc:
            return {"unavailable": f"controller URLs {urls!r}: {exc}"}
        return controllers.call(
            lambda base: get(f"{base}{path}"),
            errors=(),
            retry_on=lambda doc: isinstance(doc, dict) and "unavailable" in doc,
        )

    status = from_controller("/v1/status")
    models = from_controller("/v1/models")
    out: dict[str, Any] = {
        "controller_url": urls[0],
        # Per replica: its id and whether it leads the planner loop (GET /v1/planner).
        "controllers": {url: get(f"{url}/v1/planner") for url in urls},
        "models": models.get("models", models) if isinstance(models, dict) else models,
        "placement": status.get("placement", status),
        "demand": status.get("demand", status),
        "edges": {},
    }
    for record in state.get("edges", []):
        out["edges"][str(record["node_id"])] = get(f"{record['url']}/v1/stats")
    return out
