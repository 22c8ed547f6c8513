"""`trimcache models ls|add|rm`: the controller's model catalogue on the command line.

Which controller, first match wins:

1. ``--controller URL`` (token: ``$TRIMCACHE_AUTH_TOKEN``);
2. ``--dir STATE_DIR``: the testbed recorded there (its controller URL and token);
3. ``$TRIMCACHE_CONTROLLER_URL`` (token: ``$TRIMCACHE_AUTH_TOKEN``, else the last testbed's when
   it is the same controller);
4. the last testbed started on this machine (testbed/paths.py);
5. ``http://127.0.0.1:8080``.

``add REPO_ID`` indexes the repo through the controller (which downloads it once from its origin;
the model id defaults to the repo's name, as the controller's origin indexer names it);
``rm MODEL_ID...`` removes models, which the origin indexer then leaves out. Errors are one line
on stderr and exit 1 (bad input: 2), through the ``trimcache`` entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from core.errors import TrimCacheError
from core.failover import Endpoints, parse_urls

DEFAULT_CONTROLLER_URL = "http://127.0.0.1:8080"
MIB = 1024 * 1024


class ControllerCommandError(TrimCacheError):
    """The controller could not be found or reached, or refused the request (also the
    error of ``trimcache agents``, which finds the controller the same way)."""

    code = "controller_command_failed"
    exit_code = 1


#: The former name.
ModelsCommandError = ControllerCommandError


@dataclass(frozen=True, slots=True)
class Target:
    """The controller to talk to, how it was found, and its bearer token (if known)."""

    url: str
    source: str
    token: str | None


def controller_options() -> argparse.ArgumentParser:
    """The ``--controller`` / ``--dir`` options (a parent parser) :func:`resolve_target` reads."""
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("which controller")
    where.add_argument(
        "--controller", default=None, metavar="URL", help="controller URL (token: "
        "$TRIMCACHE_AUTH_TOKEN)",
    )  # fmt: skip
    where.add_argument(
        "--dir", type=Path, default=None, metavar="STATE_DIR", dest="state_dir",
        help="a testbed's state dir (default: $TRIMCACHE_CONTROLLER_URL, else the last testbed)",
    )  # fmt: skip
    return common


def add_parsers(subparsers: Any) -> None:
    common = controller_options()
    models = subparsers.add_parser("models", help="list, add or remove catalogue models")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    ls = sub.add_parser("ls", parents=[common], help="list the catalogue")
    ls.add_argument("--json", action="store_true", help="print the controller's JSON")
    ls.set_defaults(func=_ls)

    add = sub.add_parser(
        "add", parents=[common], help="index a repo of the origin into the catalogue"
    )
    add.add_argument("repo_id", metavar="REPO_ID", help="e.g. trimcache-zoo/bert-sst2")
    add.add_argument("--model-id", default=None, help="catalogue id (default: the repo's name)")
    add.add_argument("--revision", default="main", help="branch or commit (default main)")
    add.set_defaults(func=_add)

    rm = sub.add_parser("rm", parents=[common], help="remove models from the catalogue")
    rm.add_argument("model_ids", nargs="+", metavar="MODEL_ID")
    rm.set_defaults(func=_rm)


def resolve_target(controller: str | None, state_dir: Path | None) -> Target:
    """The controller named by the flags, the environment or the last testbed (see above)."""
    from testbed import paths
    from testbed.launcher import TestbedError, load_state

    env_token = os.environ.get("TRIMCACHE_AUTH_TOKEN") or None
    if controller:
        return Target(",".join(parse_urls(controller)), "--controller", env_token)

    def testbed(directory: Path, why: str) -> dict[str, Any] | None:
        try:
            state = load_state(directory)
        except TestbedError as exc:
            raise ControllerCommandError(f"{why} {directory}: {exc}") from exc
        return state if state is not None and state.get("controller_url") else None

    if state_dir is not None:
        state = testbed(state_dir, "--dir")
        if state is None:
            raise ControllerCommandError(
                f"no running testbed in {state_dir} (start one: trimcache testbed up --dir "
                f"{state_dir})"
            )
        return Target(_urls(state), f"testbed {state_dir}", state["auth_token"])
    last_dir = paths.last_testbed()
    last = testbed(last_dir, "last testbed") if last_dir is not None else None
    env_url = os.environ.get("TRIMCACHE_CONTROLLER_URL")
    if env_url:
        url = ",".join(parse_urls(env_url))
        same = last is not None and url in (
            last["controller_url"],
            ",".join(last.get("controller_urls") or ()),
        )
        token = env_token or (str(last["auth_token"]) if same and last else None)
        return Target(url, "TRIMCACHE_CONTROLLER_URL", token)
    if last is not None and last_dir is not None:
        return Target(_urls(last), f"testbed {last_dir}", last["auth_token"])
    return Target(DEFAULT_CONTROLLER_URL, "the default URL", env_token)


def _urls(state: dict[str, Any]) -> str:
    """A testbed's controllers, comma-separated (every replica: ``testbed up --controllers``)."""
    return ",".join(state.get("controller_urls") or [str(state["controller_url"])])


def request_json(target: Target, method: str, path: str, **kwargs: Any) -> Any:
    """``method path`` on the target controller; its JSON answer (ControllerCommandError on a
    4xx/5xx, with the controller's error code and message, or when none answers)."""
    headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
    try:  # to the first replica that answers (a comma-separated URL list: core.failover)
        response = Endpoints(parse_urls(target.url)).call(
            lambda base: httpx.request(
                method, f"{base}{path}", headers=headers, timeout=600.0, **kwargs
            ),
            errors=(httpx.TransportError,),
            retry_on=lambda r: r.status_code >= 500,
        )
    except httpx.HTTPError as exc:
        raise ControllerCommandError(
            f"cannot reach the controller at {target.url} (from {target.source}): {exc}; "
            "start a testbed (trimcache testbed up) or pass --controller URL / --dir STATE_DIR"
        ) from exc
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if response.status_code >= 400:
        error = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(error, dict):
            detail = f"{error.get('code')}: {error.get('message')}"
        else:
            detail = response.text[:200] or response.reason_phrase
        raise ControllerCommandError(
            f"controller {target.url} answered {response.status_code} ({detail})"
        )
    if doc is None:
        raise ControllerCommandError(f"controller {target.url} answered a non-JSON body on {path}")
    return doc


def _ls(args: argparse.Namespace) -> int:
    target = resolve_target(args.controller, args.state_dir)
    doc = request_json(target, "GET", "/v1/models")
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    models = doc.get("models", [])
    out = sys.stdout.write
    out(f"{'MODEL':<24}{'REPO':<38}{'REVISION':<14}{'SIZE':>11}{'BLOCKS':>8}\n")
    for m in models:
        out(
            f"{m['model_id']:<24}{m['repo_id']:<38}{str(m['revision'])[:12]:<14}"
            f"{m['total_bytes'] / MIB:>7.1f} MiB{m['blocks']:>8}\n"
        )
    index = doc.get("origin_index")
    note = f"{len(models)} model(s) at {target.url}"
    if index and index.get("state") not in (None, "done"):
        note += f"; indexing from the origin: {index['state']}"
        if index.get("error"):
            note += f" ({index['error']})"
    sys.stderr.write(note + "\n")
    return 0


def _add(args: argparse.Namespace) -> int:
    from controller.indexer import model_id_for

    target = resolve_target(args.controller, args.state_dir)
    model_id = args.model_id or model_id_for(args.repo_id)
    body = {"model_id": model_id, "repo_id": args.repo_id, "revision": args.revision}
    doc = request_json(target, "POST", "/v1/models", json=body)
    sys.stdout.write(
        f"{doc['model_id']}: {doc['repo_id']}@{str(doc['revision'])[:12]}, "
        f"{doc['total_bytes'] / MIB:.1f} MiB in {doc['blocks']} blocks\n"
    )
    return 0


def _rm(args: argparse.Namespace) -> int:
    target = resolve_target(args.controller, args.state_dir)
    for model_id in args.model_ids:
        request_json(target, "DELETE", f"/v1/models/{model_id}")
        sys.stdout.write(f"removed {model_id}\n")
    return 0
