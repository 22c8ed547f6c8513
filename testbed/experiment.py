"""The workload runner: emulated users fetching models through the SDK from a running testbed.

``trimcache experiment run CONFIG --out DIR`` (testbed/experiment_cli.py) and
:func:`run_workload` own this. A seeded workload (:func:`build_workload`) is a list of
requests (user, area, model): users live in the controller topology's areas
(``GET /v1/topology``; areas drawn uniformly, as the placement objective averages over areas),
and each area draws models from

- ``zipf``: :func:`controller.demand.zipf_prior`, the very per-area Zipf ranking the controller
  plans for when it has no demand yet (restricted to the config's ``models``), so a measured hit
  ratio compares with the hit ratio the placement problem predicts for the same demand
  (:func:`predicted_hit_ratio`); or
- ``trace``: a JSON-lines file replayed in order, ``{"area_id", "model_id"[, "user"]}`` per line.

Every request is one real SDK fetch (:class:`client.Client`, ``area_id`` set, ``load=False``)
into its user's device cache: ``fresh`` (an empty cache per request: every byte moves),
``cold`` (one cache per user, empty at the start) or ``warm`` (one cache per user, holding the
user's area's most popular model before the run; that warm-up is not recorded). Requests start
at ``rate_per_s`` (seeded Poisson arrivals; none: back to back) on ``concurrency`` threads,
bounded by ``requests`` and ``max_seconds``.

A :class:`Record` per request: model, area, bytes per source (``edge-N``, ``origin``,
``local``), download seconds, the model's deadline (the controller topology's), ``hit`` (no byte
from the origin, none that an on-demand edge had to pull through for it (its
``X-TrimCache-Pulled-Bytes``: ``pulled_bytes``), no error, and done within the deadline), and
``verified``: the SDK checks every block's sha256 while downloading, and the runner then
compares every rebuilt file with the zoo's original (sha256), so ``verified`` means
byte-identical files. Each record names the controller's placement version in force when it
started (polled in the background: the controller may re-plan mid-run as the users' demand
reports arrive); the predicted hit ratio is the request-weighted mean over those placements, and
``predicted_sampled_hit_ratio`` the share of the drawn requests themselves that the placement
problem counts as hits (``sampled_gap``: measured minus that, free of sampling noise). Results:
``records.jsonl`` and ``records.csv`` in the output dir, plus ``summary.json`` (see
:func:`summarize`) with the edges' and the origin's served-bytes counters over the run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import httpx

from controller.demand import zipf_prior
from core.errors import TrimCacheError
from core.fsutil import atomic_write_json, atomic_write_text

CacheMode = Literal["fresh", "cold", "warm"]
CACHE_MODES = ("fresh", "cold", "warm")


class ExperimentError(TrimCacheError):
    """A bad experiment config, or a testbed the experiment cannot use."""

    code = "experiment_error"
    exit_code = 2


@dataclass(frozen=True, slots=True)
class ExperimentConfig:
    """What one workload run does (the CONFIG file is this as JSON; unknown keys are errors)."""

    seed: int = 0
    requests: int = 50
    max_seconds: float = 600.0
    rate_per_s: float | None = None
    concurrency: int = 2
    users_per_area: int = 4
    device_cache: CacheMode = "fresh"
    popularity: str = "zipf"  # "zipf" | "trace"
    trace_file: str | None = None
    models: tuple[str, ...] = ()  # empty: the controller's whole catalogue
    verify_files: bool = True

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ExperimentError(f"requests must be >= 1, got {self.requests}")
        if not self.max_seconds > 0:
            raise ExperimentError(f"max_seconds must be > 0, got {self.max_seconds}")
        if self.rate_per_s is not None and not self.rate_per_s > 0:
            raise ExperimentError(f"rate_per_s must be > 0 or null, got {self.rate_per_s}")
        if self.concurrency < 1 or self.users_per_area < 1:
            raise ExperimentError("concurrency and users_per_area must be >= 1")
        if self.device_cache not in CACHE_MODES:
            raise ExperimentError(
                f"device_cache must be one of {', '.join(CACHE_MODES)}, got {self.device_cache!r}"
            )
        if self.popularity not in ("zipf", "trace"):
            raise ExperimentError(f"popularity must be zipf or trace, got {self.popularity!r}")
        if self.popularity == "trace" and not self.trace_file:
            raise ExperimentError("popularity 'trace' needs trace_file")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExperimentConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ExperimentError(f"unknown config keys: {', '.join(unknown)}")
        values = dict(data)
        if "models" in values:
            values["models"] = tuple(str(m) for m in values["models"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ExperimentError(f"bad config: {exc}") from exc

    @classmethod
    def load(cls, path: Path) -> ExperimentConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ExperimentError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ExperimentError(f"config {path} must be a JSON object")
        config = cls.from_json(data)
        if config.trace_file and not Path(config.trace_file).is_absolute():
            config = cls.from_json(
                {**asdict(config), "trace_file": str(path.parent / config.trace_file)}
            )
        return config

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["models"] = list(self.models)
        return out


@dataclass(frozen=True, slots=True)
class Request:
    index: int
    user: str
    area_id: str
    model_id: str
    at_s: float  # planned start, seconds after the run starts (0 with no rate)


@dataclass(slots=True)
class Record:
    """One measured request (a row of records.jsonl / records.csv)."""

    index: int
    user: str
    area_id: str
    model_id: str
    deadline_s: float
    started_s: float = 0.0
    download_s: float = 0.0
    bytes_by_source: dict[str, int] = field(default_factory=dict)
    edge_bytes: int = 0
    origin_bytes: int = 0
    local_bytes: int = 0
    # Bytes on-demand edges fetched upstream (origin or peers) to answer this request: a miss.
    pulled_bytes: int = 0
    hit: bool = False
    verified: bool = False
    error: str | None = None
    placement_version: int | None = None  # the controller's placement when the request started
    predicted_hit: bool | None = None  # whether that placement's problem counts it as a hit

    def csv_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["bytes_by_source"] = json.dumps(self.bytes_by_source, sort_keys=True)
        return row


@dataclass(frozen=True, slots=True)
class Testbed:
    """What the runner needs of a running testbed (from its testbed.json)."""

    controller_url: str
    origin_url: str
    edges: dict[str, str]  # node id -> URL
    zoo_dir: Path
    auth_token: str
    # "lru" / "lfu": the edges cache on demand (testbed up --cache-policy); None: planned.
    cache_policy: str | None = None

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Testbed:
        try:
            return cls(
                controller_url=str(state["controller_url"]),
                origin_url=str(state["origin_url"]),
                edges={str(e["node_id"]): str(e["url"]) for e in state["edges"]},
                zoo_dir=Path(state["zoo_dir"]),
                auth_token=str(state.get("auth_token") or ""),
                cache_policy=next(
                    (str(e["cache_policy"]) for e in state["edges"] if e.get("cache_policy")),
                    None,
                ),
            )
        except (KeyError, TypeError) as exc:
            raise ExperimentError(f"testbed state lacks {exc}") from exc

    def label(self, source: str) -> str:
        """A source URL as a name: the edge's node id, ``origin`` or ``local``."""
        for node_id, url in self.edges.items():
            if source.rstrip("/") == url.rstrip("/"):
                return node_id
        if source.rstrip("/") == self.origin_url.rstrip("/"):
            return "origin"
        return source

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.auth_token}"} if self.auth_token else {}


# --------------------------------------------------------------------------- workload


def controller_view(testbed: Testbed) -> dict[str, Any]:
    """The controller's catalogue (model ids, repo ids) and topology (areas, deadlines)."""
    with httpx.Client(base_url=testbed.controller_url, timeout=30) as http:
        models = http.get("/v1/models").raise_for_status().json()["models"]
        topology = http.get("/v1/topology").raise_for_status().json()
    return {"models": models, "topology": topology}


def deadline_of(topology: Mapping[str, Any], model_id: str) -> float:
    """The model's deadline in the controller topology (as controller/topology.py reads it)."""
    deadlines = topology.get("deadlines_s") or {}
    return float(deadlines.get(model_id, deadlines.get("default", 10.0)))


def popularity(
    area_ids: Sequence[str], model_ids: Sequence[str], catalogue: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Area -> model -> request probability: the controller's Zipf prior over the whole
    ``catalogue`` (:func:`controller.demand.zipf_prior`), restricted to ``model_ids`` and
    renormalised (so a subset keeps the controller's per-area ranking)."""
    out: dict[str, dict[str, float]] = {}
    for area in area_ids:
        prior = zipf_prior(area, list(catalogue))
        total = sum(prior[m] for m in model_ids)
        out[area] = {m: prior[m] / total for m in model_ids}
    return out


def build_workload(
    config: ExperimentConfig,
    *,
    area_ids: Sequence[str],
    model_ids: Sequence[str],
    catalogue: Sequence[str] | None = None,
) -> list[Request]:
    """The seeded request list: the same config, areas and models give the same list.

    Areas are drawn uniformly (the placement objective averages over areas); models from
    :func:`popularity` (``catalogue`` defaults to ``model_ids``).
    """
    if not area_ids:
        raise ExperimentError("the controller topology has no areas")
    if not model_ids:
        raise ExperimentError("no models to request")
    rng = random.Random(config.seed)
    rate = config.rate_per_s

    def gap() -> float:
        return rng.expovariate(rate) if rate else 0.0

    if config.popularity == "trace":
        return _trace_workload(config, area_ids, model_ids, gap)
    areas = sorted(area_ids)
    rows = popularity(areas, model_ids, catalogue or model_ids)
    out: list[Request] = []
    at = 0.0
    for index in range(config.requests):
        area = rng.choice(areas)
        row = rows[area]
        model = rng.choices(list(row), [row[m] for m in row])[0]
        user = f"{area}/u{rng.randrange(config.users_per_area)}"
        out.append(Request(index, user, area, model, round(at, 6)))
        at += gap()
    return out


def empirical(workload: Sequence[Request]) -> dict[str, dict[str, float]]:
    """Area -> model -> share of that area's requests (a trace's demand)."""
    counts: dict[str, dict[str, int]] = {}
    for r in workload:
        row = counts.setdefault(r.area_id, {})
        row[r.model_id] = row.get(r.model_id, 0) + 1
    return {a: {m: n / sum(row.values()) for m, n in row.items()} for a, row in counts.items()}


def predicted_hits(
    testbed: Testbed, placement: Mapping[str, Any], view: Mapping[str, Any]
) -> set[tuple[str, str]]:
    """The (area, model) pairs the placement problem counts as hits for this placement: the
    model is held whole by a node that reaches the area within the model's deadline
    (``controller.topology.reachable_sets``, the planner's own reachability)."""
    from controller.topology import Topology, reachable_sets

    doc = {k: v for k, v in view["topology"].items() if k not in ("version", "source")}
    topology = Topology.from_json(doc)
    nodes = httpx.get(f"{testbed.controller_url}/v1/nodes", timeout=30).raise_for_status().json()
    positions = {
        str(n["node_id"]): tuple(topology.positions.get(n["node_id"], n["position"]))
        for n in nodes["nodes"]
    }
    sizes = {str(m["model_id"]): int(m["total_bytes"]) for m in view["models"]}
    reach = reachable_sets(topology, positions, sizes)
    held = {n: set(s.get("models", ())) for n, s in (placement.get("servers") or {}).items()}
    return {
        (area, model)
        for area, by_node in reach.items()
        for node, models in by_node.items()
        for model in models
        if model in held.get(node, ())
    }


def predicted_hit_ratio(
    hits: set[tuple[str, str]], rows: Mapping[str, Mapping[str, float]]
) -> float:
    """The hit ratio the placement problem predicts for the demand ``rows``.

    As ``controller.placement.evaluate``: the mean over areas of the probability that a
    requested model is a hit (``hits``, from :func:`predicted_hits`). With the whole catalogue
    requested this is the placement record's ``hit_ratio``.
    """
    if not rows:
        return 0.0
    total = sum(p for area, row in rows.items() for m, p in row.items() if (area, m) in hits)
    return total / len(rows)


def _trace_workload(
    config: ExperimentConfig,
    areas: Sequence[str],
    model_ids: Sequence[str],
    gap: Callable[[], float],
) -> list[Request]:
    assert config.trace_file is not None
    try:
        lines = Path(config.trace_file).read_text().splitlines()
    except OSError as exc:
        raise ExperimentError(f"cannot read trace {config.trace_file}: {exc}") from exc
    out: list[Request] = []
    at = 0.0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            area, model = str(item["area_id"]), str(item["model_id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ExperimentError(f"{config.trace_file}:{number}: bad trace line ({exc})") from exc
        if area not in areas:
            raise ExperimentError(f"{config.trace_file}:{number}: unknown area {area!r}")
        if model not in model_ids:
            raise ExperimentError(f"{config.trace_file}:{number}: unknown model {model!r}")
        user = str(item.get("user") or f"{area}/u0")
        out.append(Request(len(out), user, area, model, round(at, 6)))
        at += gap()
        if len(out) >= config.requests:
            break
    if not out:
        raise ExperimentError(f"trace {config.trace_file} has no requests")
    return out


# --------------------------------------------------------------------------- counters


def served_counters(testbed: Testbed) -> dict[str, int]:
    """Bytes served so far by each edge node and the origin (their ``GET /v1/stats``)."""
    out: dict[str, int] = {}
    with httpx.Client(timeout=30) as http:
        for node_id, url in testbed.edges.items():
            out[node_id] = int(
                http.get(f"{url}/v1/stats").raise_for_status().json()["bytes_served"]
            )
        origin = http.get(f"{testbed.origin_url}/v1/stats").raise_for_status().json()
        out["origin"] = int(origin["bytes_served"])
    return out


def edge_storage(testbed: Testbed) -> dict[str, dict[str, Any]]:
    """Per edge node: models held, physical and logical bytes (``GET /v1/stats``)."""
    out: dict[str, dict[str, Any]] = {}
    with httpx.Client(timeout=30) as http:
        for node_id, url in testbed.edges.items():
            stats = http.get(f"{url}/v1/stats").raise_for_status().json()
            models = stats.get("models", [])
            out[node_id] = {
                "models": sorted(models) if isinstance(models, list) else models,
                "physical_bytes": int(stats.get("physical_bytes", 0)),
                "logical_bytes": int(stats.get("logical_bytes", 0)),
            }
    return out


# --------------------------------------------------------------------------- running


class _FileDigests:
    """sha256 of the zoo's original files, computed once per file."""

    def __init__(self, zoo_dir: Path) -> None:
        self.root = zoo_dir / "repos"
        self._cache: dict[Path, str] = {}
        self._lock = threading.Lock()

    def digest(self, path: Path) -> str:
        with self._lock:
            known = self._cache.get(path)
        if known is None:
            known = _sha256(path)
            with self._lock:
                self._cache[path] = known
        return known

    def identical(self, repo_id: str, fetched_dir: Path) -> bool:
        """Whether every file of the repo is in ``fetched_dir`` with the same bytes."""
        repo = self.root / repo_id
        originals = sorted(p for p in repo.rglob("*") if p.is_file())
        if not originals:
            return False
        for original in originals:
            copy = fetched_dir / original.relative_to(repo)
            if not copy.is_file() or _sha256(copy) != self.digest(original):
                return False
        return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class RunResult:
    records: list[Record]
    summary: dict[str, Any]


def run_workload(
    testbed: Testbed,
    config: ExperimentConfig,
    *,
    work_dir: Path | None = None,
    on_record: Callable[[Record], object] | None = None,
) -> RunResult:
    """Run the config's workload against ``testbed``; return the records and their summary.

    Internal logic: read the catalogue and topology, build the seeded workload, snapshot the
    served-bytes counters and the placement version, run the requests (each on a thread of the
    pool, a user's requests one at a time), snapshot again; the summary holds both deltas.
    """
    from client import Client

    view = controller_view(testbed)
    repos = {str(m["model_id"]): str(m["repo_id"]) for m in view["models"]}
    model_ids = sorted(config.models or repos)
    unknown = sorted(set(model_ids) - set(repos))
    if unknown:
        raise ExperimentError(f"models not in the controller's catalogue: {', '.join(unknown)}")
    topology = view["topology"]
    area_ids = sorted(str(a) for a in (topology.get("areas") or {}))
    workload = build_workload(
        config, area_ids=area_ids, model_ids=model_ids, catalogue=sorted(repos)
    )
    rows = (
        popularity(area_ids, model_ids, sorted(repos))
        if config.popularity == "zipf"
        else empirical(workload)
    )
    digests = _FileDigests(testbed.zoo_dir)
    root = Path(tempfile.mkdtemp(prefix="trimcache-exp-", dir=work_dir))
    user_locks: dict[str, threading.Lock] = {r.user: threading.Lock() for r in workload}

    def cache_of(request: Request) -> Path:
        if config.device_cache == "fresh":
            return root / f"req-{request.index}"
        return root / request.user.replace("/", "-")

    if config.device_cache == "warm":
        for user in sorted(user_locks):
            area = user.split("/", 1)[0]
            row = rows[area]
            top = max(row, key=lambda m: row[m])
            home = root / user.replace("/", "-")
            with Client(controller_url=testbed.controller_url, cache_dir=home, area_id=area) as c:
                c.fetch(top, load=False)

    watch = _PlacementWatch(testbed)
    placement_before = watch.latest
    before = served_counters(testbed)
    started = time.monotonic()
    stop_at = started + config.max_seconds

    def one(request: Request) -> Record | None:
        delay = started + request.at_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.monotonic() > stop_at:
            return None
        record = Record(
            index=request.index,
            user=request.user,
            area_id=request.area_id,
            model_id=request.model_id,
            deadline_s=deadline_of(topology, request.model_id),
        )
        cache_dir = cache_of(request)
        with user_locks[request.user]:
            record.started_s = round(time.monotonic() - started, 4)
            record.placement_version = watch.version
            try:
                with Client(controller_url=testbed.controller_url, cache_dir=cache_dir,
                            area_id=request.area_id) as client:  # fmt: skip
                    fetched = client.fetch(request.model_id, load=False)
                report = fetched.report
                record.download_s = float(report["seconds"])
                record.bytes_by_source = {
                    testbed.label(src): int(n) for src, n in report["bytes_by_source"].items() if n
                }
                record.pulled_bytes = sum(
                    int(n) for n in report.get("bytes_pulled_by_edges", {}).values()
                )
                if config.verify_files:
                    record.verified = digests.identical(repos[request.model_id], Path(fetched.path))
                else:
                    record.verified = True  # the SDK's per-block sha256 checks alone
            except TrimCacheError as exc:
                record.error = f"{type(exc).__name__}: {exc}"
            finally:
                if config.device_cache == "fresh":
                    shutil.rmtree(cache_dir, ignore_errors=True)
        record.local_bytes = record.bytes_by_source.get("local", 0)
        record.origin_bytes = record.bytes_by_source.get("origin", 0)
        record.edge_bytes = sum(n for s, n in record.bytes_by_source.items() if s in testbed.edges)
        record.hit = (
            record.error is None
            and record.origin_bytes == 0
            and record.pulled_bytes == 0
            and record.download_s <= record.deadline_s
        )
        if on_record is not None:
            on_record(record)
        return record

    try:
        with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
            done = [r for r in pool.map(one, workload) if r is not None]
    finally:
        watch.stop()
        shutil.rmtree(root, ignore_errors=True)
    wall = time.monotonic() - started
    after = served_counters(testbed)
    placement_after = _placement(testbed)
    summary = summarize(done)
    # Each request counts against the placement in force when it started (the controller may
    # re-plan mid-run as demand reports arrive): predicted = request-weighted mean over them.
    hits_by_version = {
        v: predicted_hits(testbed, watch.seen[v], view)
        for v in {r.placement_version or 0 for r in done}
        if v in watch.seen
    }
    per_version = {v: predicted_hit_ratio(h, rows) for v, h in hits_by_version.items()}
    for r in done:
        r.predicted_hit = (r.area_id, r.model_id) in hits_by_version.get(
            r.placement_version or 0, ()
        )
    weights = [per_version.get(r.placement_version or 0, 0.0) for r in done]
    predicted = sum(weights) / len(weights) if weights else 0.0
    if testbed.cache_policy:  # no placement: the simulator's replay of these very requests
        from testbed.experiment_online import predicted_online

        verdicts = predicted_online(testbed, view, workload, testbed.cache_policy)
        for r in done:
            r.predicted_hit = verdicts[r.index]
        predicted = sum(bool(r.predicted_hit) for r in done) / len(done) if done else 0.0
        per_version = {}
    summary.update(
        wall_seconds=round(wall, 3),
        planned_requests=len(workload),
        served_delta={k: after[k] - before.get(k, 0) for k in after},
        placement_version_before=placement_before.get("version"),
        placement_version_after=placement_after.get("version"),
        plan_hit_ratio=(
            None if testbed.cache_policy else float(placement_before.get("hit_ratio") or 0.0)
        ),
        predicted_hit_ratio=round(predicted, 4),
        predicted_by_version={str(v): round(p, 4) for v, p in sorted(per_version.items())},
        solver=testbed.cache_policy or placement_before.get("solver"),
        cache_policy=testbed.cache_policy,
        storage=edge_storage(testbed),
        config=config.to_json(),
    )
    summary["gap"] = round(summary["hit_ratio"] - summary["predicted_hit_ratio"], 4)
    # The same prediction for exactly the requests drawn (no sampling noise): measured and
    # predicted disagree here only where the testbed and the placement problem disagree.
    sampled = sum(bool(r.predicted_hit) for r in done) / len(done) if done else 0.0
    summary["predicted_sampled_hit_ratio"] = round(sampled, 4)
    summary["sampled_gap"] = round(summary["hit_ratio"] - sampled, 4)
    return RunResult(done, summary)


class _PlacementWatch:
    """The controller's current placement, polled in the background during a run."""

    def __init__(self, testbed: Testbed, *, interval_s: float = 0.5) -> None:
        self.testbed = testbed
        self.latest = _placement(testbed)
        self.seen: dict[int, dict[str, Any]] = {int(self.latest.get("version") or 0): self.latest}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(interval_s,), daemon=True)
        self._thread.start()

    @property
    def version(self) -> int:
        return int(self.latest.get("version") or 0)

    def _poll(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                placement = _placement(self.testbed)
            except (httpx.HTTPError, ValueError):
                continue
            self.seen.setdefault(int(placement.get("version") or 0), placement)
            self.latest = placement

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _placement(testbed: Testbed) -> dict[str, Any]:
    response = httpx.get(f"{testbed.controller_url}/v1/placement", timeout=30)
    placement: dict[str, Any] = response.raise_for_status().json()
    return placement


def summarize(records: Sequence[Record]) -> dict[str, Any]:
    """Hit ratio, download-time mean/p95 and byte totals of some records."""
    times = sorted(r.download_s for r in records if r.error is None)
    n = len(records)
    return {
        "requests": n,
        "errors": sum(r.error is not None for r in records),
        "hits": sum(r.hit for r in records),
        "hit_ratio": round(sum(r.hit for r in records) / n, 4) if n else 0.0,
        "verified": sum(r.verified for r in records),
        "mean_download_s": round(sum(times) / len(times), 4) if times else 0.0,
        "p95_download_s": round(percentile(times, 0.95), 4) if times else 0.0,
        "edge_bytes": sum(r.edge_bytes for r in records),
        "origin_bytes": sum(r.origin_bytes for r in records),
        "local_bytes": sum(r.local_bytes for r in records),
        "pulled_bytes": sum(r.pulled_bytes for r in records),
    }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of already sorted values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return float(sorted_values[rank - 1])


# --------------------------------------------------------------------------- output


def write_records(
    records: Sequence[Record], out: Path, *, extra: Mapping[str, Any] | None = None
) -> None:
    """``records.jsonl`` and ``records.csv`` in ``out`` (each written whole, then renamed)."""
    out.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    rows = [{**extra, **asdict(r)} for r in records]
    atomic_write_text(
        out / "records.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    )
    names = [*extra, *(f.name for f in fields(Record))]
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=names)
    writer.writeheader()
    for r in records:
        writer.writerow({**extra, **r.csv_row()})
    atomic_write_text(out / "records.csv", handle.getvalue())


def write_json(path: Path, data: Any) -> None:
    atomic_write_json(path, data, default=str)
