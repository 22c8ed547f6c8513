"""Honest SDK and CLI output against the real services: an unreachable controller, a cached model
served while the controller is down, clean ``predict`` output, and ``cache ls`` disk truth.

"Unreachable" is a loopback port the test bound and closed itself (``tests.helpers.free_port``);
"down" is a real controller the test started on the stack's Redis and then stopped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest

from client import ClientError, ControllerUnavailableError, EdgeUnavailableError, fetch_model
from client.cli import _human
from tests.client.services import Stack
from tests.helpers import free_port, live_server, run_cli, run_python

HINTS = ("--controller", "TRIMCACHE_CONTROLLER_URL", "trimcache testbed status")


def closed_url() -> str:
    """A loopback URL nothing listens on: a port bound and closed again just now."""
    return f"http://127.0.0.1:{free_port()}"


def test_unreachable_controller_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = closed_url()
    with pytest.raises(ControllerUnavailableError) as info:
        fetch_model("bert-sst2", controller_url=url, cache_dir=tmp_path, load=False)
    err = info.value
    assert isinstance(err, ClientError) and isinstance(err, ConnectionError)
    assert not isinstance(err, EdgeUnavailableError)
    assert err.url == url and err.http_status is None
    message = str(err)
    assert "\n" not in message
    assert message.startswith(f"controller {url} is unreachable (ConnectError: ")
    assert all(hint in message for hint in HINTS)
    # The URL from the environment is the one named.
    monkeypatch.setenv("TRIMCACHE_CONTROLLER_URL", f"{url}/")
    with pytest.raises(ControllerUnavailableError, match=re.escape(f"controller {url} is ")):
        fetch_model("bert-sst2", cache_dir=tmp_path, load=False)


def test_unreachable_origin_names_its_url(tmp_path: Path) -> None:
    url = closed_url()
    with pytest.raises(EdgeUnavailableError) as info:
        fetch_model(
            "bert-sst2", origin_url=url, repo_id="trimcache-zoo/bert-sst2", cache_dir=tmp_path
        )
    assert str(info.value).startswith(f"{url} unreachable: ConnectError: ")
    assert info.value.url == url


@pytest.mark.parametrize(("command", "how"), [("fetch", "--controller"), ("predict", "env")])
def test_cli_prints_one_line_for_an_unreachable_controller(
    command: str, how: str, tmp_path: Path
) -> None:
    url = closed_url()
    env = {"TRIMCACHE_CACHE_DIR": str(tmp_path)}
    args = [command, "bert-sst2", *(["I loved it"] if command == "predict" else [])]
    if how == "env":
        env["TRIMCACHE_CONTROLLER_URL"] = url
    else:
        args += ["--controller", url]
    result = run_cli(*args, env=env, timeout_s=120)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"trimcache: error: controller {url} is unreachable (")
    assert all(hint in lines[0] for hint in HINTS)


def test_controller_without_its_redis_is_controller_unavailable(
    stack: Stack, tmp_path: Path
) -> None:
    from controller.app import create_app as create_controller
    from controller.settings import Settings

    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        origin_url=stack.origin,
        auto_plan=False,
        redis_timeout_s=0.5,
    )
    with live_server(create_controller(settings)) as url:
        with pytest.raises(ControllerUnavailableError) as info:
            fetch_model("bert-sst2", controller_url=url, cache_dir=tmp_path, load=False)
    err = info.value
    assert err.http_status == 503 and err.remote_code == "state_unavailable"
    assert str(err).startswith(f"controller {url} failed: ")
    assert "\n" not in str(err)


def _sdk_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("client") and r.levelno >= logging.WARNING
    ]


def test_cached_model_served_with_one_warning_while_the_controller_is_down(
    stack: Stack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from controller.app import create_app as create_controller
    from controller.settings import Settings

    settings = Settings(redis_url=stack.redis, origin_url=stack.origin, auto_plan=False)
    with live_server(create_controller(settings)) as controller:
        first = fetch_model("bert-sst2", controller_url=controller, cache_dir=tmp_path, load=False)
    assert first.report["offline"] is False
    sst2 = stack.manifest("bert-sst2")
    expected = (
        f"controller {controller} is unreachable: serving bert-sst2 from the device cache"
        f" (revision {sst2.revision[:12]}, may be out of date)"
    )

    # The SDK: one WARNING record on the client logger; the cached copy works.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model = fetch_model("bert-sst2", controller_url=controller, cache_dir=tmp_path)
    assert _sdk_warnings(caplog) == [expected]
    assert model.report["offline"] is True
    assert model.report["bytes_by_source"] == {"local": sst2.unique_bytes}
    assert model.predict(["I loved it"])[0]["label"] == "positive"
    with pytest.raises(ControllerUnavailableError):  # not cached: the error, no warning
        fetch_model("bert-spam", controller_url=controller, cache_dir=tmp_path, load=False)

    # The SDK in a program that configured no logging: that line alone on stderr (and no
    # transformers "Loading weights" bar).
    program = textwrap.dedent(
        f"""
        from client import fetch_model
        model = fetch_model("bert-sst2", controller_url={controller!r}, cache_dir={str(tmp_path)!r})
        print(model.report["offline"], model.predict(["I loved it"])[0]["label"])
        """  # noqa: E501
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIMCACHE_")}
    sdk = run_python(program, env=env, timeout_s=120)
    assert sdk.returncode == 0, sdk.stderr
    assert sdk.stdout == "True positive\n"
    assert sdk.stderr.splitlines() == [expected]

    # The CLI: the prediction on stdout, exactly one warning line on stderr.
    env = {"TRIMCACHE_CONTROLLER_URL": controller, "TRIMCACHE_CACHE_DIR": str(tmp_path)}
    result = run_cli("predict", "bert-sst2", "I loved it", env=env, timeout_s=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\t")[0] == "positive"
    assert result.stderr.splitlines() == [f"trimcache: warning: {expected}"]


def test_cached_adapter_and_its_base_served_while_the_controller_is_down(
    stack: Stack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from controller.app import create_app as create_controller
    from controller.settings import Settings

    settings = Settings(redis_url=stack.redis, origin_url=stack.origin, auto_plan=False)
    with live_server(create_controller(settings)) as controller:
        fetch_model("minilm-lora-topic", controller_url=controller, cache_dir=tmp_path, load=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model = fetch_model("minilm-lora-topic", controller_url=controller, cache_dir=tmp_path)
    # one line per model served from the cache: the adapter, then its base
    served = [m.split(": serving ")[1].split(" ")[0] for m in _sdk_warnings(caplog)]
    assert served == ["minilm-lora-topic", "minilm-base"]
    assert model.report["offline"] is True
    zoo = json.loads((stack.zoo / "zoo.json").read_text())
    labels = next(m["labels"] for m in zoo["models"] if m["model_id"] == "minilm-lora-topic")
    assert model.predict(["The striker scored twice in the final match"])[0]["label"] in labels


def test_predict_and_fetch_print_rounded_results_only(stack: Stack, tmp_path: Path) -> None:
    env = {"TRIMCACHE_CONTROLLER_URL": stack.controller, "TRIMCACHE_CACHE_DIR": str(tmp_path)}
    texts = ["I loved it", "I hated it, a terrible waste of time"]
    predicted = run_cli("predict", "bert-sst2", *texts, env=env, timeout_s=300)
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stderr == ""  # no "Loading weights" bars, no library warnings
    rows = [line.split("\t") for line in predicted.stdout.splitlines()]
    assert [(label, text) for label, _, text in rows] == list(
        zip(["positive", "negative"], texts, strict=True)
    )
    assert all(re.fullmatch(r"[01]\.\d{4}", score) for _, score, _ in rows)

    as_json = run_cli("predict", "bert-sst2", texts[0], "--json", env=env, timeout_s=300)
    assert as_json.returncode == 0 and as_json.stderr == ""
    score = json.loads(as_json.stdout)[0]["score"]
    assert score == round(score, 4)

    fetched = run_cli("fetch", "bert-spam", "--load", env=env, timeout_s=300)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stderr == ""
    assert "bert-spam" in fetched.stdout
    assert re.findall(r"\d\.\d{3,}", fetched.stdout) == []  # seconds, MB and shares rounded
    report = json.loads(run_cli("fetch", "bert-spam", "--json", env=env).stdout)
    floats = [report["seconds"], *report["phase_seconds"].values()]
    assert all(x == round(x, 3) for x in floats)


def _allocated(paths: Iterable[Path]) -> tuple[int, int]:
    """(allocated bytes counting each inode once, the naive sum over paths)."""
    seen: set[tuple[int, int]] = set()
    once = naive = 0
    for path in paths:
        st = path.lstat()
        naive += st.st_blocks * 512
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            once += st.st_blocks * 512
    return once, naive


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def test_cache_ls_counts_the_files_once(stack: Stack, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for model_id in ("bert-sst2", "bert-spam"):
        fetch_model(model_id, controller_url=stack.controller, cache_dir=cache, load=False)
    # A hard link to a model file: the same bytes on disk, to be counted once.
    os.link(cache / "models" / "bert-sst2" / "config.json", cache / "linked-config.json")
    env = {"TRIMCACHE_CACHE_DIR": str(cache)}
    listed = json.loads(run_cli("cache", "ls", "--json", env=env).stdout)

    total, naive = _allocated(_files(cache))
    assert naive > total  # the link really is there twice
    store_bytes, _ = _allocated(_files(cache / "store"))
    models_bytes, _ = _allocated(_files(cache / "models"))
    disk = listed["disk"]
    assert disk["total_bytes"] == total
    assert (disk["store_bytes"], disk["models_bytes"]) == (store_bytes, models_bytes)
    assert disk["other_bytes"] == total - store_bytes - models_bytes
    # The files are the only copy: the disk holds each model's files once, no block store.
    sizes = sum(stack.manifest(m).total_bytes for m in ("bert-sst2", "bert-spam"))
    assert sizes <= models_bytes <= 1.02 * sizes
    assert store_bytes < 0.01 * sizes  # manifests only

    rows = {row["model_id"]: row for row in listed["models"]}
    assert set(rows) == {"bert-sst2", "bert-spam"}
    for model_id, row in rows.items():
        files, _ = _allocated(_files(cache / "models" / model_id))
        assert (row["files_disk_bytes"], row["blocks_disk_bytes"]) == (files, 0)
        assert row["disk_bytes"] == files

    table = run_cli("cache", "ls", env=env)
    assert table.returncode == 0, table.stderr
    shown = " ".join(table.stdout.split())
    assert f"on disk: {_human(total)} = {_human(models_bytes)} of model files" in shown
