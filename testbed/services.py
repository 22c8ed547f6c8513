"""The testbed's services as one declarative table.

:func:`service_table` says, for Redis, the origin, the controller and every edge node: the
command (program first: ``trimcache`` or ``redis-server``), the settings env vars, the URL it
listens on and is probed at, and what it depends on. Everything that differs between deployments
is a parameter (:class:`Deployment`): bind address, ports, paths, token, links. Three consumers
read the same table, so they cannot drift:

- ``trimcache testbed up`` (testbed/launcher.py) runs each command as a local process
  (:func:`local_argv`), in dependency waves (:func:`waves`);
- ``scripts/container_smoke.sh`` (testbed/container_stack.py) runs the same commands inside the
  service image with ``buildah run``;
- ``docker-compose.yml`` writes the table out for :func:`compose_deployment`;
  tests/testbed/test_compose.py asserts every command, env var, health URL and dependency equal.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from testbed.topology import SiteLayout, node_id_for

Kind = Literal["redis", "origin", "controller", "edge"]
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """Rate and one-way latency of an emulated link (None: no rate limit)."""

    rate_mbps: float | None
    latency_ms: float

    def to_json(self) -> dict[str, Any]:
        return {"rate_mbps": self.rate_mbps, "latency_ms": self.latency_ms}


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One row of the table. ``url`` is where the service listens as its peers and the host
    reach it (``redis://`` or ``http://``); ``health_url`` answers PING / ``GET`` 200 when healthy;
    ``writes`` are the directories the process writes (a container runner hands them over)."""

    name: str
    kind: Kind
    command: tuple[str, ...]
    env: Mapping[str, str]
    url: str
    health_url: str
    depends_on: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Deployment:
    """What differs between ``testbed up`` and compose. Paths are strings: in compose they are
    paths inside the containers."""

    auth_token: str
    zoo_dir: str
    redis_dir: str
    edge_data_dirs: Sequence[str]
    hf_home: str
    manifest_cache_dir: str
    topology: SiteLayout
    backhaul: LinkProfile
    radio: LinkProfile
    capacity_bytes: int
    redis_port: int = 6379
    origin_port: int = 8000
    controller_port: int = 8080
    # Ports of further controller replicas on the same Redis ("controller-2", ...; every edge
    # is given every controller's URL and fails over between them).
    replica_ports: Sequence[int] = ()
    edge_ports: Sequence[int] = (8101, 8102, 8103)
    bind_host: str = LOOPBACK
    solver: str | None = None
    objective: str | None = None
    marl_checkpoint: str | None = None
    topology_file: str | None = None
    heartbeat_interval_s: float = 2.0
    # Edge nodes start together but register seconds apart on a loaded machine; with the
    # controller's default 1.5 s the first plan could go to one node alone, which then pulls the
    # whole zoo over the backhaul before the plan that covers every node (seen: +80 s on `up`).
    settle_s: float = 5.0
    extra_edge_env: Mapping[str, str] = field(default_factory=dict)


def _link_args(link: LinkProfile) -> list[str]:
    args: list[str] = []
    if link.rate_mbps is not None:
        args += ["--rate-mbps", f"{link.rate_mbps:g}"]
    if link.latency_ms:
        args += ["--latency-ms", f"{link.latency_ms:g}"]
    return args


def service_table(d: Deployment) -> list[ServiceSpec]:
    """Every service of the testbed, in start order (names: edge_node/settings.py,
    controller/settings.py, ``trimcache origin serve --help``)."""
    redis_url = f"redis://{LOOPBACK}:{d.redis_port}/0"
    origin_url = f"http://{LOOPBACK}:{d.origin_port}"
    controller_ports = (d.controller_port, *d.replica_ports)
    controller_urls = [f"http://{LOOPBACK}:{port}" for port in controller_ports]
    redis = ServiceSpec(
        "redis", "redis",
        ("redis-server", "--bind", d.bind_host, "--port", str(d.redis_port), "--dir", d.redis_dir,
         "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
         "--protected-mode", "yes", "--daemonize", "no"),
        {}, redis_url, redis_url, writes=(d.redis_dir,),
    )  # fmt: skip
    origin = ServiceSpec(
        "origin", "origin",
        ("trimcache", "origin", "serve", "--root", d.zoo_dir, "--host", d.bind_host,
         "--port", str(d.origin_port), *_link_args(d.backhaul)),
        {"ORIGIN_AUTH_TOKEN": d.auth_token}, origin_url, f"{origin_url}/healthz",
    )  # fmt: skip
    controller_env = {
        "CONTROLLER_HOST": d.bind_host,
        "CONTROLLER_REDIS_URL": redis_url,
        "CONTROLLER_ORIGIN_URL": origin_url,
        "CONTROLLER_AUTH_TOKEN": d.auth_token,
        # The catalogue fills itself: every repo the origin lists is indexed at startup.
        "CONTROLLER_INDEX_FROM_ORIGIN": "true",
        "CONTROLLER_MANIFEST_CACHE_DIR": d.manifest_cache_dir,
        "CONTROLLER_SETTLE_S": f"{d.settle_s:g}",
        "HF_HOME": d.hf_home,
    }
    if d.objective:
        controller_env["CONTROLLER_OBJECTIVE"] = d.objective
    if d.solver:
        delay = d.objective == "delay"
        controller_env["CONTROLLER_DELAY_SOLVER" if delay else "CONTROLLER_SOLVER"] = d.solver
    if d.marl_checkpoint:
        controller_env["CONTROLLER_MARL_CHECKPOINT"] = d.marl_checkpoint
    if d.topology_file:
        controller_env["CONTROLLER_TOPOLOGY_FILE"] = d.topology_file
    table = [redis, origin]
    controller_names = [controller_name(i) for i in range(len(controller_ports))]
    for name, port, url in zip(controller_names, controller_ports, controller_urls, strict=True):
        env = {**controller_env, "CONTROLLER_PORT": str(port)}
        if d.replica_ports:  # several replicas: each names itself in leases and records
            env["CONTROLLER_REPLICA_ID"] = name
        table.append(
            ServiceSpec(
                name, "controller", ("trimcache", "controller", "serve"), env,
                url, f"{url}/healthz", depends_on=("redis", "origin"),
                writes=(d.hf_home, d.manifest_cache_dir),
            )
        )  # fmt: skip
    # The hosts a plan may name besides the origin and the controller: the peer edges.
    allowed_hosts = ",".join(f"{LOOPBACK}:{port}" for port in d.edge_ports)
    for index, (port, data_dir) in enumerate(zip(d.edge_ports, d.edge_data_dirs, strict=True)):
        node_id = node_id_for(index)
        url = f"http://{LOOPBACK}:{port}"
        x_m, y_m = d.topology.edge(node_id).position
        env = {
            "EDGE_NODE_ID": node_id,
            "EDGE_HOST": d.bind_host,
            "EDGE_PORT": str(port),
            "EDGE_PUBLIC_URL": url,
            "EDGE_DATA_DIR": data_dir,
            "EDGE_CAPACITY_BYTES": str(d.capacity_bytes),
            "EDGE_ORIGIN_URL": origin_url,
            "EDGE_CONTROLLER_URL": ",".join(controller_urls),
            "EDGE_ALLOWED_HOSTS": allowed_hosts,
            "EDGE_AUTH_TOKEN": d.auth_token,
            "EDGE_POSITION_X_M": f"{x_m:g}",
            "EDGE_POSITION_Y_M": f"{y_m:g}",
            "EDGE_HEARTBEAT_INTERVAL_S": f"{d.heartbeat_interval_s:g}",
            "EDGE_LINK_LATENCY_MS": f"{d.radio.latency_ms:g}",
            **d.extra_edge_env,
        }
        if d.radio.rate_mbps is not None:
            env["EDGE_LINK_RATE_BYTES_PER_S"] = f"{d.radio.rate_mbps * 1e6 / 8:.0f}"
        table.append(
            ServiceSpec(
                node_id, "edge", ("trimcache", "edge", "serve"), env, url, f"{url}/healthz",
                depends_on=("origin", *controller_names), writes=(data_dir,),
            )
        )  # fmt: skip
    return table


def controller_name(index: int) -> str:
    """The service name of controller replica ``index``: ``controller``, ``controller-2``, ..."""
    return "controller" if index == 0 else f"controller-{index + 1}"


def compose_deployment(auth_token: str, topology: SiteLayout) -> Deployment:
    """The table's parameters in docker-compose.yml (its variables at their defaults): every
    service in one network namespace on the ports compose publishes, the "full" links, the zoo
    volume at /zoo and each service's own volume at /data."""
    return Deployment(
        auth_token=auth_token,
        zoo_dir="/zoo",
        redis_dir="/data",
        edge_data_dirs=["/data"] * len(topology.edges),
        hf_home="/data/hf",
        manifest_cache_dir="/data/manifests",
        topology=topology,
        backhaul=LinkProfile(100.0, 30.0),
        radio=LinkProfile(400.0, 5.0),
        capacity_bytes=512 * 1024 * 1024,
        edge_ports=tuple(8101 + i for i in range(len(topology.edges))),
        bind_host="0.0.0.0",  # noqa: S104 - published through the `net` service
        solver="trimcaching-gen",
        heartbeat_interval_s=5.0,
    )


def waves(table: Sequence[ServiceSpec]) -> list[list[ServiceSpec]]:
    """The table in start stages: each service after every service it depends on."""
    done: set[str] = set()
    left = list(table)
    stages: list[list[ServiceSpec]] = []
    while left:
        ready = [spec for spec in left if set(spec.depends_on) <= done]
        if not ready:
            raise ValueError(f"dependency cycle among {[spec.name for spec in left]}")
        stages.append(ready)
        done |= {spec.name for spec in ready}
        left = [spec for spec in left if spec.name not in done]
    return stages


def find_redis_server() -> str | None:
    """``redis-server`` on PATH or beside this interpreter (``make setup`` puts it in .venv)."""
    return shutil.which("redis-server") or shutil.which(
        "redis-server", path=str(Path(sys.executable).parent)
    )


def local_argv(spec: ServiceSpec) -> list[str]:
    """How this machine runs ``spec.command``: ``trimcache`` as ``python -m testbed.cli`` of this
    interpreter (no console script needed on PATH), ``redis-server`` as found."""
    program, *args = spec.command
    if program == "trimcache":
        return [sys.executable, "-m", "testbed.cli", *args]
    if program == "redis-server":
        found = find_redis_server()
        if found is None:
            raise FileNotFoundError("redis-server not found on PATH: run `make setup`")
        return [found, *args]
    return list(spec.command)
