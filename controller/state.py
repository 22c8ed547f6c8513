"""All controller state, in Redis. The only module that imports ``redis``.

Key schema (every key starts with ``ctl:``; every JSON value carries ``schema_version``):

=============================  ======  =========================================================
key                            type    value
=============================  ======  =========================================================
``ctl:node:{node_id}``         string  JSON :class:`NodeRecord`; TTL = heartbeat expiry, renewed
                                       by every heartbeat (an expired key = a dead node)
``ctl:nodes``                  set     node ids ever registered; members whose node key has
                                       expired are pruned when read
``ctl:model:{model_id}``       string  JSON :class:`CatalogueEntry` (manifest included)
``ctl:models``                 set     model ids in the catalogue
``ctl:models:deleted``         set     model ids removed by ``DELETE`` (never re-adopted from
                                       edge nodes' reports; cleared by a new ``POST``)
``ctl:catalogue:version``      int     bumped on every add/remove
``ctl:catalogue:epoch``        string  random id set with the first entry: (epoch, version)
                                       names one catalogue content, even across a data loss
``ctl:demand``                 hash    ``{area_id}\\x1f{model_id}`` -> ``"{count} {at_s}"``, an
                                       exponentially decayed request count as of ``at_s``
``ctl:outcomes``               hash    counters: ``requests``, ``hit``, ``miss``, ``error``,
                                       ``bytes:{edge|origin|local}``
``ctl:topology``               string  JSON ``{"schema_version", "version", "topology"}``
``ctl:placement``              string  JSON placement record (see :meth:`RedisState.save_placement`)
``ctl:placement:version``      int     last placement version handed out (INCR)
``ctl:placement:status``       hash    the stored placement's changing parts: ``version`` (of
                                       the record they belong to), ``dispatch`` (JSON) and
                                       ``push:{node_id}`` (JSON push status); rewritten with
                                       the record, then one field per update
``ctl:plan:last``              string  JSON last planning attempt: ``at``, ``trigger``,
                                       ``outcome``, ``error``, ``signature`` (what it saw)
``ctl:lock:plan``              string  redis-py lock: one planner at a time across processes;
                                       its token fences the placement write
                                       (:meth:`RedisState.save_placement` with ``fence``)
``ctl:planner:leader``         string  ``"{replica_id} {term}"``: the controller replica whose
                                       background loop runs (:mod:`controller.leader`); TTL =
                                       the lease, renewed by its holder, gone when it dies
``ctl:planner:term``           int     bumped by every new leader (the ``term`` above)
``ctl:fetches``                list    JSON fetch reports (one per ``POST /v1/demand``), newest
                                       first, trimmed to the last ``keep`` (the dashboard's log)
``ctl:plans``                  hash    placement version -> JSON plan summary as the dashboard
                                       last saw it (trimmed to the newest ``keep`` versions)
``ctl:agents:taken``           set     ids of decentralised nodes the controller took over
                                       (``POST /v1/agents:takeover``) and has not released
``ctl:routing:stamp``          string  random token, rewritten by every write a route may
                                       depend on: a node joining, leaving or changing its url,
                                       position, holdings or policy; a catalogue add/remove; a
                                       topology; a placement (see :mod:`controller.route_cache`)
=============================  ======  =========================================================

Invariants:

- Read-modify-write goes through WATCH/MULTI (``client.transaction``) or a Lua script whose
  KEYS/ARGV are commented above it.
- ``redis.ConnectionError`` / ``redis.TimeoutError`` (``BusyLoadingError`` included) become
  :class:`~controller.errors.StateUnavailableError` here. The client's pool drops broken
  connections and reconnects on the next command, so the service recovers by itself when Redis
  comes back; no connection is cached outside the pool.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar, cast

import redis
import redis.asyncio
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from controller.errors import StateUnavailableError
from core.manifest import ModelManifest

SCHEMA_VERSION = 1
PREFIX = "ctl:"
NODES_KEY = f"{PREFIX}nodes"
MODELS_KEY = f"{PREFIX}models"
DELETED_MODELS_KEY = f"{PREFIX}models:deleted"
CATALOGUE_VERSION_KEY = f"{PREFIX}catalogue:version"
CATALOGUE_EPOCH_KEY = f"{PREFIX}catalogue:epoch"
DEMAND_KEY = f"{PREFIX}demand"
OUTCOMES_KEY = f"{PREFIX}outcomes"
TOPOLOGY_KEY = f"{PREFIX}topology"
PLACEMENT_KEY = f"{PREFIX}placement"
PLACEMENT_VERSION_KEY = f"{PREFIX}placement:version"
PLAN_LOCK_KEY = f"{PREFIX}lock:plan"
LEADER_KEY = f"{PREFIX}planner:leader"
LEADER_TERM_KEY = f"{PREFIX}planner:term"
PLAN_ATTEMPT_KEY = f"{PREFIX}plan:last"
FETCHES_KEY = f"{PREFIX}fetches"
PLANS_KEY = f"{PREFIX}plans"
ROUTING_STAMP_KEY = f"{PREFIX}routing:stamp"
PLACEMENT_STATUS_KEY = f"{PREFIX}placement:status"
AGENTS_TAKEN_KEY = f"{PREFIX}agents:taken"
#: Pub/sub channel: every new routing stamp is published here (controller.route_cache listens).
ROUTING_CHANNEL = f"{PREFIX}routing:changed"
#: NodeRecord fields a route reads (a heartbeat changing none of them keeps routes cached).
ROUTED_FIELDS = ("url", "position", "models", "dropping", "cache_policy")
_SEP = "\x1f"

T = TypeVar("T")


def node_key(node_id: str) -> str:
    return f"{PREFIX}node:{node_id}"


def model_key(model_id: str) -> str:
    return f"{PREFIX}model:{model_id}"


def demand_field(area_id: str, model_id: str) -> str:
    return f"{area_id}{_SEP}{model_id}"


_FIELD_NAMES: dict[type, frozenset[str]] = {}


def _known(cls: type, doc: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``doc`` that ``cls`` has (values written by a newer schema are skipped)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in fields(cls))
    return {k: v for k, v in doc.items() if k in names}


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A registered edge node as of its last heartbeat (or plan response)."""

    node_id: str
    url: str
    capacity_bytes: int
    position: tuple[float, float] = (0.0, 0.0)
    physical_bytes: int = 0
    models: tuple[str, ...] = ()
    blocks_digest: str | None = None
    registered_at: float = 0.0
    last_seen: float = 0.0
    # Models a pushed plan drops: not routed until a report shows them gone.
    dropping: tuple[str, ...] = ()
    # The last placement version the node reports having applied (None: not reported).
    plan_version: int | None = None
    # "lru" / "lfu": the node caches on demand (no plans pushed; routes send it the misses of
    # the clients it is nearest to); None: it holds the planned placement.
    cache_policy: str | None = None

    @property
    def serving_models(self) -> tuple[str, ...]:
        """Complete models the node confirmed and is not about to drop."""
        return tuple(m for m in self.models if m not in self.dropping)

    def to_json(self) -> str:
        doc = asdict(self)
        doc["position"] = list(self.position)
        doc["models"] = list(self.models)
        doc["dropping"] = list(self.dropping)
        doc["schema_version"] = SCHEMA_VERSION
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NodeRecord:
        return cls.from_doc(json.loads(text))

    @classmethod
    def many_from_json(cls, texts: Sequence[str]) -> list[NodeRecord]:
        """Records of many stored texts, parsed as one JSON array (one parser call)."""
        if not texts:
            return []
        return [cls.from_doc(doc) for doc in json.loads("[" + ",".join(texts) + "]")]

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> NodeRecord:
        doc.pop("schema_version", None)
        doc["position"] = tuple(float(v) for v in doc.get("position", (0.0, 0.0)))
        doc["models"] = tuple(doc.get("models", ()))
        doc["dropping"] = tuple(doc.get("dropping", ()))
        return cls(**_known(cls, doc))


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """A model in the catalogue: its repo, the resolved commit and its parsed manifest.

    The manifest is parsed once, where the entry is read from Redis (:meth:`from_json`); the
    stored and served JSON is the manifest's own ``to_dict()`` form.
    """

    model_id: str
    repo_id: str
    revision: str
    requested_revision: str
    total_bytes: int
    blocks: int
    manifest: ModelManifest
    indexed_at: float = 0.0
    # Set when the entry was rebuilt from an edge node's manifest (state lost), not indexed.
    adopted_from: str | None = None
    # A LoRA adapter: the repo of the base model it needs (controller.adapters).
    base_repo_id: str | None = None

    @classmethod
    def of(
        cls,
        manifest: ModelManifest,
        *,
        model_id: str | None = None,
        requested_revision: str | None = None,
        indexed_at: float = 0.0,
        adopted_from: str | None = None,
        base_repo_id: str | None = None,
    ) -> CatalogueEntry:
        """The entry of ``manifest`` (sizes and block count derived from it)."""
        return cls(
            model_id=model_id or manifest.model_id,
            repo_id=manifest.repo_id,
            revision=manifest.revision,
            requested_revision=requested_revision or manifest.revision,
            total_bytes=manifest.total_bytes,
            blocks=len(manifest.block_sizes()),
            manifest=manifest,
            indexed_at=indexed_at,
            adopted_from=adopted_from,
            base_repo_id=base_repo_id,
        )

    def to_json(self) -> str:
        doc: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        doc["manifest"] = self.manifest.to_dict()
        doc["schema_version"] = SCHEMA_VERSION
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CatalogueEntry:
        """Parse a stored entry.

        Raises:
            ManifestError: the stored manifest is malformed.
        """
        doc = _known(cls, json.loads(text))
        doc["manifest"] = ModelManifest.from_dict(doc["manifest"])
        return cls(**doc)

    def summary(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "total_bytes": self.total_bytes,
            "blocks": self.blocks,
            "base_repo_id": self.base_repo_id,
        }


# Decay one (area, model) demand counter to ``now`` and add to it, atomically.
# KEYS[1] = ctl:demand hash
# ARGV[1] = field "{area_id}\x1f{model_id}"; ARGV[2] = now (s); ARGV[3] = half-life (s);
# ARGV[4] = increment
_DEMAND_LUA = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local now = tonumber(ARGV[2])
local value = 0
if cur then
  local sp = string.find(cur, ' ')
  local old = tonumber(string.sub(cur, 1, sp - 1))
  local at = tonumber(string.sub(cur, sp + 1))
  local age = now - at
  if age < 0 then age = 0 end
  value = old * math.pow(2, -age / tonumber(ARGV[3]))
end
value = value + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.12g %.6f', value, now))
return tostring(value)
"""


# Remove the ids whose node key has expired from ctl:nodes, in one round trip.
# KEYS[1] = ctl:nodes; KEYS[2..n+1] = ctl:node:{id} of the candidates; ARGV[1..n] = their ids.
# Returns how many were removed (a heartbeat racing in keeps its id: its key exists again).
_PRUNE_LUA = """
local removed = 0
for i, node_id in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    removed = removed + redis.call('SREM', KEYS[1], node_id)
  end
end
return removed
"""


# Take or renew the leader lease in one round trip.
# KEYS[1] = ctl:planner:leader; KEYS[2] = ctl:planner:term
# ARGV[1] = replica id; ARGV[2] = lease (ms); ARGV[3] = the token this replica holds ("" if none)
# Returns the token held now by this replica (renewed, or new with the next term), or false.
_LEASE_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur then
  if cur == ARGV[3] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return cur
  end
  return false
end
local token = ARGV[1] .. ' ' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
"""


# Delete a key only while it still holds the caller's token (a lease given up).
# KEYS[1] = the key; ARGV[1] = the token
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# Store the placement only while the plan lock still holds the planner's token (fencing: a
# planner whose lock expired, paused or partitioned, cannot overwrite its successor's plan).
# KEYS[1] = ctl:lock:plan; KEYS[2] = ctl:placement; KEYS[3] = ctl:routing:stamp;
# KEYS[4] = ctl:placement:status
# ARGV[1] = the lock token; ARGV[2] = the placement JSON; ARGV[3] = a new routing stamp;
# ARGV[4] = the channel announcing it; ARGV[5..] = the status hash's field, value pairs
_FENCED_PLACEMENT_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[4])
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
end
redis.call('SET', KEYS[3], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
"""


# Store one heartbeat, in one round trip.
# KEYS[1] = ctl:node:{id}; KEYS[2] = ctl:nodes; KEYS[3] = ctl:routing:stamp
# ARGV[1] = node id; ARGV[2] = the record's JSON object without "registered_at" and "dropping";
# ARGV[3] = registered_at for a new node (a float's repr); ARGV[4] = TTL (ms); ARGV[5] = a new
# routing stamp, written (and published on ARGV[6]) when the node is new or a field a route
# reads (ROUTED_FIELDS) changed.
# The old record's registered_at and dropping are carried over (dropping only while the report
# still names one of its models). The body is stored as given plus those two fields (no Lua
# number re-encoding: a kept registered_at is written with 17 significant digits, exact).
# Returns 1 when the node was not live before.
_HEARTBEAT_LUA = """
local function same(a, b)
  if a == nil then a = cjson.null end
  if b == nil then b = cjson.null end
  if type(a) ~= 'table' or type(b) ~= 'table' then return a == b end
  if #a ~= #b then return false end
  for i = 1, #a do
    if a[i] ~= b[i] then return false end
  end
  return true
end
local old = redis.call('GET', KEYS[1])
local new = cjson.decode(ARGV[2])
local registered = ARGV[3]
local dropping = '[]'
local changed = true
if old then
  local prev = cjson.decode(old)
  if type(prev.registered_at) == 'number' then
    registered = string.format('%.17g', prev.registered_at)
  end
  local was = prev.dropping
  local kept = false
  if type(was) == 'table' and #was > 0 then
    local reported = {}
    for _, m in ipairs(new.models) do reported[m] = true end
    for _, m in ipairs(was) do
      if reported[m] then kept = true end
    end
    if kept then dropping = cjson.encode(was) end
  end
  local dropping_same = kept or type(was) ~= 'table' or #was == 0
  changed = not (dropping_same and same(prev.url, new.url)
    and same(prev.position, new.position) and same(prev.models, new.models)
    and same(prev.cache_policy, new.cache_policy))
end
local body = string.sub(ARGV[2], 1, -2) .. ', "dropping": ' .. dropping
  .. ', "registered_at": ' .. registered .. '}'
redis.call('SET', KEYS[1], body, 'PX', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
if changed then
  redis.call('SET', KEYS[3], ARGV[5])
  redis.call('PUBLISH', ARGV[6], ARGV[5])
end
if old then return 0 end
return 1
"""


# set_status(key, version, field, value): set one field of ctl:placement:status if it still
# belongs to the given placement version; 1 when written.
_STATUS_FN = """
local function set_status(key, version, field, value)
  if redis.call('HGET', key, 'version') ~= version then return 0 end
  redis.call('HSET', key, field, value)
  return 1
end
"""
# KEYS[1] = ctl:placement:status; ARGV[1] = version; ARGV[2] = field; ARGV[3] = JSON value.
_STATUS_LUA = _STATUS_FN + "return set_status(KEYS[1], ARGV[1], ARGV[2], ARGV[3])"

# set_arrays(key, models, dropping, stamp_key, stamp, channel): a live node record with its
# "models" and/or "dropping" arrays replaced by the given JSON texts ("" = keep), its TTL kept;
# the routing stamp rewritten (and published) when the text changed. The rest of the stored
# text is kept byte for byte (no Lua re-encoding of numbers: cjson would round them). Finds the
# top-level key (records are flat objects, so a quote before and after the name can only be a
# key's) and the end of its array (scanning strings and escapes). 0 when the node is not live.
_NODE_ARRAYS_FN = """
local function with_array(text, name, value)
  local at, stop = string.find(text, '"' .. name .. '":', 1, true)
  if not at then return string.sub(text, 1, -2) .. ', "' .. name .. '": ' .. value .. '}' end
  local i = stop + 1
  while string.sub(text, i, i) == ' ' do i = i + 1 end
  local j, depth, in_str = i, 0, false
  while j <= #text do
    local c = string.byte(text, j)
    if in_str then
      if c == 92 then j = j + 1 elseif c == 34 then in_str = false end
    elseif c == 34 then in_str = true
    elseif c == 91 then depth = depth + 1
    elseif c == 93 then
      depth = depth - 1
      if depth == 0 then break end
    end
    j = j + 1
  end
  return string.sub(text, 1, i - 1) .. value .. string.sub(text, j + 1)
end
local function set_arrays(key, models, dropping, stamp_key, stamp, channel)
  local old = redis.call('GET', key)
  if not old then return 0 end
  local new = old
  if models ~= '' then new = with_array(new, 'models', models) end
  if dropping ~= '' then new = with_array(new, 'dropping', dropping) end
  if new ~= old then
    redis.call('SET', key, new, 'KEEPTTL')
    redis.call('SET', stamp_key, stamp)
    redis.call('PUBLISH', channel, stamp)
  end
  return 1
end
"""
# KEYS[1] = ctl:node:{id}; KEYS[2] = ctl:routing:stamp
# ARGV[1] = models (JSON array, "" = keep); ARGV[2] = dropping (same); ARGV[3] = a new
# routing stamp; ARGV[4] = the channel announcing it. Returns 1 when the node is live.
_NODE_ARRAYS_LUA = _NODE_ARRAYS_FN + (
    "return set_arrays(KEYS[1], ARGV[1], ARGV[2], KEYS[2], ARGV[3], ARGV[4])"
)

# One step of a push (planner): the node's arrays as _NODE_ARRAYS_LUA and its push status as
# _STATUS_LUA, in one round trip.
# KEYS[1] = ctl:node:{id}; KEYS[2] = ctl:routing:stamp; KEYS[3] = ctl:placement:status
# ARGV[1..4] as _NODE_ARRAYS_LUA; ARGV[5] = version; ARGV[6] = field; ARGV[7] = JSON value.
# Returns 1 when the status was written.
_PUSH_STEP_LUA = (
    _NODE_ARRAYS_FN
    + _STATUS_FN
    + """
if ARGV[1] ~= '' or ARGV[2] ~= '' then
  set_arrays(KEYS[1], ARGV[1], ARGV[2], KEYS[2], ARGV[3], ARGV[4])
end
return set_status(KEYS[3], ARGV[5], ARGV[6], ARGV[7])
"""
)


def _new_stamp() -> str:
    return uuid.uuid4().hex


def _arrays_args(models: Sequence[str] | None, dropping: Sequence[str] | None) -> list[str]:
    """ARGV[1..2] of :data:`_NODE_ARRAYS_LUA`: each list as JSON, or "" to keep it."""
    return ["" if v is None else json.dumps(list(v)) for v in (models, dropping)]


def _push_step(
    version: int,
    node_id: str,
    status: Mapping[str, Any],
    models: Sequence[str] | None,
    dropping: Sequence[str] | None,
) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of one push step (the push-step script: the node's lists, then its push
    status, fenced by ``version``)."""
    keys = [node_key(node_id), ROUTING_STAMP_KEY, PLACEMENT_STATUS_KEY]
    args = [*_arrays_args(models, dropping), _new_stamp(), ROUTING_CHANNEL]
    args += [str(version), f"push:{node_id}", json.dumps(dict(status), sort_keys=True)]
    return keys, args


def _restamp(pipe: Any) -> None:
    """Queue a new ``ctl:routing:stamp`` and its announcement on ``ctl:routing:changed``."""
    stamp = _new_stamp()
    pipe.set(ROUTING_STAMP_KEY, stamp)
    pipe.publish(ROUTING_CHANNEL, stamp)


def decayed(count: float, at_s: float, now_s: float, half_life_s: float) -> float:
    """``count`` recorded at ``at_s``, decayed with half-life ``half_life_s`` to ``now_s``."""
    return count * math.pow(2.0, -max(0.0, now_s - at_s) / half_life_s)


@contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StateUnavailableError(f"Redis is unavailable: {exc}") from exc


def _topology_of(text: str | None) -> tuple[int, dict[str, Any] | None]:
    """``(version, topology document)`` of the stored ``ctl:topology`` text."""
    if not text:
        return 0, None
    doc = json.loads(text)
    return int(doc["version"]), doc["topology"]


def merged_placement(text: str | None, status: Mapping[str, str]) -> dict[str, Any] | None:
    """The placement record of its stored ``text`` with ``push`` and ``dispatch`` from the
    ``ctl:placement:status`` hash (None: no placement)."""
    if not text:
        return None
    doc: dict[str, Any] = json.loads(text)
    if not status_belongs(doc, status):
        return doc  # stored before the status hash existed: push/dispatch are inside
    push = doc.setdefault("push", {})
    for name, value in status.items():
        if name.startswith("push:"):
            push[name[5:]] = json.loads(value)
    if "dispatch" in status:
        doc["dispatch"] = json.loads(status["dispatch"])
    return doc


def status_belongs(doc: Mapping[str, Any], status: Mapping[str, str]) -> bool:
    """Whether the status hash holds the changing parts of the placement record ``doc``."""
    return status.get("version") == str(doc.get("version"))


@dataclass(frozen=True, slots=True)
class StatusTexts:
    """What ``GET /v1/status`` reads, as stored (:meth:`RedisState.status_texts`;
    :mod:`controller.status_view` parses only what changed)."""

    nodes: dict[str, str]  # live node id -> its record's JSON, sorted by id
    placement: str | None  # ctl:placement
    placement_status: dict[str, str]  # ctl:placement:status
    plan_attempt: str | None  # ctl:plan:last
    catalogue_stamp: tuple[str, int]  # as catalogue_stamp(): (epoch, version)
    topology: tuple[int, dict[str, Any] | None]  # as get_topology()
    outcomes: dict[str, int]


class RedisState:
    """Typed access to the controller's Redis keys (see the module docstring for the schema)."""

    def __init__(self, url: str, *, timeout_s: float = 2.0) -> None:
        self.url = url
        self.client: redis.Redis = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # A short, bounded retry: a down Redis answers 503 quickly instead of stalling.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
            health_check_interval=5,
        )
        self._timeout_s = timeout_s
        # For the one read on an event loop (the route fast path); made on first use, in the
        # loop that uses it.
        self._aclient: redis.asyncio.Redis | None = None
        self._demand_script = self.client.register_script(_DEMAND_LUA)
        self._prune_script = self.client.register_script(_PRUNE_LUA)
        self._lease_script = self.client.register_script(_LEASE_LUA)
        self._release_script = self.client.register_script(_RELEASE_LUA)
        self._fenced_placement_script = self.client.register_script(_FENCED_PLACEMENT_LUA)
        self._heartbeat_script = self.client.register_script(_HEARTBEAT_LUA)
        self._status_script = self.client.register_script(_STATUS_LUA)
        self._node_arrays_script = self.client.register_script(_NODE_ARRAYS_LUA)
        self._push_step_script = self.client.register_script(_PUSH_STEP_LUA)
        #: Writes of this process that may have moved the routing stamp (see _stamping).
        self.stamp_writes = 0
        self._stamp_lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None

    @contextmanager
    def _stamping(self) -> Iterator[None]:
        """Around a write that may rewrite the routing stamp: :attr:`stamp_writes` moves once
        it returned (or failed), so this process's own route cache never trusts a stamp it
        read before the write (:mod:`controller.route_cache`)."""
        try:
            yield
        finally:
            with self._stamp_lock:
                self.stamp_writes += 1

    def _call(self, fn: Callable[[], T]) -> T:
        with _redis_errors():
            return fn()

    def _transact(self, fn: Callable[[Any], T], *keys: str) -> T:
        """Run ``fn(pipe)`` under WATCH ``keys`` (retried on conflict); returns its value."""
        txn = cast(Callable[[Any], None], fn)
        with _redis_errors():
            return cast(T, self.client.transaction(txn, *keys, value_from_callable=True))

    def ping(self) -> bool:
        return bool(self._call(self.client.ping))

    # -- nodes ----------------------------------------------------------------------------
    def put_node(self, record: NodeRecord, *, ttl_s: float) -> bool:
        """Store a heartbeat; returns True when the node was not live before (membership change).

        Keeps ``registered_at`` of a live node, and its ``dropping`` list while the report still
        names one of those models (a heartbeat sent before the node applied its plan). One round
        trip (the :data:`_HEARTBEAT_LUA` script): the key's TTL is set by Redis as it stores the
        record, exactly as a ``SET ... PX`` would.
        """
        ttl_ms = max(1, int(ttl_s * 1000))
        doc = json.loads(record.to_json())
        registered_at = doc.pop("registered_at")
        doc.pop("dropping")  # the script writes both: from the old record, or these defaults
        with self._stamping():
            new = self._call(
                lambda: self._heartbeat_script(
                    keys=[node_key(record.node_id), NODES_KEY, ROUTING_STAMP_KEY],
                    args=[
                        record.node_id,
                        json.dumps(doc, sort_keys=True),
                        repr(float(registered_at)),
                        ttl_ms,
                        _new_stamp(),
                        ROUTING_CHANNEL,
                    ],
                )
            )
        return bool(int(new))

    def get_node(self, node_id: str) -> NodeRecord | None:
        text = self._call(lambda: self.client.get(node_key(node_id)))
        return NodeRecord.from_json(cast(str, text)) if text else None

    def live_nodes(self) -> list[NodeRecord]:
        """Nodes whose heartbeat has not expired, sorted by id; prunes expired ids. Two round
        trips whatever the number of nodes (SMEMBERS, one MGET), plus one script call when
        expired ids need pruning."""
        return self._live_nodes(with_ttl=False)[0]

    def live_nodes_ttl(self) -> tuple[list[NodeRecord], float | None]:
        """``(live nodes, seconds until the first of them expires)`` (None: no node with a
        TTL); the TTLs come in the MGET's pipeline (still two round trips)."""
        return self._live_nodes(with_ttl=True)

    def _live_nodes(self, *, with_ttl: bool) -> tuple[list[NodeRecord], float | None]:
        def run() -> tuple[list[NodeRecord], float | None]:
            node_ids = sorted(cast(set[str], self.client.smembers(NODES_KEY)))
            if not node_ids:
                return [], None
            keys = [node_key(n) for n in node_ids]
            pipe = self.client.pipeline(transaction=False)
            pipe.mget(keys)
            for key in keys if with_ttl else ():
                pipe.pttl(key)
            texts, *ttls = pipe.execute()
            dead = [n for n, t in zip(node_ids, texts, strict=True) if t is None]
            if dead:
                # Only remove ids whose key is still missing (a heartbeat may race in).
                self._prune_nodes(dead)
            live_ttls = [int(ms) for t, ms in zip(texts, ttls, strict=False) if t and ms >= 0]
            first = min(live_ttls) / 1000.0 if live_ttls else None
            return NodeRecord.many_from_json([t for t in texts if t is not None]), first

        return self._call(run)

    def status_texts(self) -> StatusTexts:
        """Everything ``GET /v1/status`` reads from here, in two round trips whatever the
        number of nodes (the node ids with the other keys in one pipeline, then one MGET);
        prunes expired ids as :meth:`live_nodes` does."""

        def run() -> StatusTexts:
            pipe = self.client.pipeline(transaction=False)
            pipe.smembers(NODES_KEY)
            pipe.get(PLACEMENT_KEY)
            pipe.hgetall(PLACEMENT_STATUS_KEY)
            pipe.get(PLAN_ATTEMPT_KEY)
            pipe.mget([CATALOGUE_EPOCH_KEY, CATALOGUE_VERSION_KEY])
            pipe.get(TOPOLOGY_KEY)
            pipe.hgetall(OUTCOMES_KEY)
            members, placement, status, attempt, (epoch, version), topology, outcomes = (
                pipe.execute()
            )
            node_ids = sorted(cast(set[str], members))
            keys = [node_key(n) for n in node_ids]
            texts = cast(list[str | None], self.client.mget(keys)) if keys else []
            dead = [n for n, t in zip(node_ids, texts, strict=True) if t is None]
            if dead:
                self._prune_nodes(dead)
            return StatusTexts(
                nodes={n: t for n, t in zip(node_ids, texts, strict=True) if t is not None},
                placement=placement,
                placement_status=status,
                plan_attempt=attempt,
                catalogue_stamp=(str(epoch or ""), int(version or 0)),
                topology=_topology_of(topology),
                outcomes={k: int(v) for k, v in outcomes.items()},
            )

        return self._call(run)

    def _prune_nodes(self, node_ids: Sequence[str]) -> None:
        removed = self._prune_script(
            keys=[NODES_KEY, *(node_key(n) for n in node_ids)], args=list(node_ids)
        )
        if int(removed):
            with self._stamping():
                _restamp(self.client)

    def update_node_models(
        self,
        node_id: str,
        models: Sequence[str] | None = None,
        *,
        dropping: Sequence[str] | None = None,
    ) -> bool:
        """Record a node's confirmed complete models (from a plan response) and/or the models
        a plan tells it to drop (routes stop naming those first); keeps the TTL. One script
        call (:data:`_NODE_ARRAYS_LUA`); the routing stamp moves only when a list changed.
        False when the node is not live (an expired node is not resurrected)."""
        keys = [node_key(node_id), ROUTING_STAMP_KEY]
        args = [*_arrays_args(models, dropping), _new_stamp(), ROUTING_CHANNEL]
        with self._stamping():
            done = self._call(lambda: self._node_arrays_script(keys=keys, args=args))
        return bool(int(done))

    def record_push(
        self,
        version: int,
        node_id: str,
        status: Mapping[str, Any],
        *,
        models: Sequence[str] | None = None,
        dropping: Sequence[str] | None = None,
    ) -> bool:
        """One push step in one script call: :meth:`update_node_models` with ``models`` and/or
        ``dropping`` (when given), then :meth:`update_push_status` of ``status``; returns
        whether the status was written (the stored placement is still ``version``)."""
        keys, args = _push_step(version, node_id, status, models, dropping)
        with self._stamping():
            done = self._call(lambda: self._push_step_script(keys=keys, args=args))
        return bool(int(done))

    def record_pushes(
        self,
        version: int,
        steps: Sequence[tuple[str, Mapping[str, Any], Sequence[str] | None]],
    ) -> list[bool]:
        """Several :meth:`record_push` steps in one pipeline (one round trip): for each
        ``(node_id, status, models)``, the node's confirmed ``models`` (when not None), then its
        push status; returns whether each status was written (as :meth:`record_push`)."""
        if not steps:
            return []

        def run() -> list[bool]:
            pipe = self.client.pipeline(transaction=False)
            for node_id, status, models in steps:
                keys, args = _push_step(version, node_id, status, models, None)
                self._push_step_script(keys=keys, args=args, client=pipe)
            return [bool(int(done)) for done in pipe.execute()]

        with self._stamping():
            return self._call(run)

    def delete_node(self, node_id: str) -> bool:
        def run() -> bool:
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(node_key(node_id))
            pipe.srem(NODES_KEY, node_id)
            _restamp(pipe)
            deleted, *_ = pipe.execute()
            return bool(deleted)

        with self._stamping():
            return self._call(run)

    def set_node_policy(self, node_id: str, cache_policy: str | None) -> bool:
        """Set a live node's ``cache_policy`` as the node itself confirmed it (a decentralised
        node handed to the controller or back: :mod:`controller.agents`), before its next
        heartbeat says the same; keeps the TTL and every other field. Moves the routing stamp
        when the policy changed. False when the node is not live."""

        def txn(pipe: Any) -> bool:
            text = pipe.get(node_key(node_id))
            if not text:
                return False
            doc = json.loads(text)
            if doc.get("cache_policy") == cache_policy:
                return True
            doc["cache_policy"] = cache_policy
            pipe.multi()
            pipe.set(node_key(node_id), json.dumps(doc, sort_keys=True), keepttl=True)
            _restamp(pipe)
            return True

        with self._stamping():
            return bool(self._transact(txn, node_key(node_id)))

    def mark_taken_over(self, node_ids: Sequence[str], *, taken: bool) -> None:
        """Remember (``taken``) or forget the decentralised nodes the controller took over
        (``ctl:agents:taken``), so a release without node ids knows which to hand back."""
        if not node_ids:
            return
        if taken:
            self._call(lambda: self.client.sadd(AGENTS_TAKEN_KEY, *node_ids))
        else:
            self._call(lambda: self.client.srem(AGENTS_TAKEN_KEY, *node_ids))

    def taken_over(self) -> set[str]:
        """The node ids :meth:`mark_taken_over` remembers (live or not)."""
        return set(cast(set[str], self._call(lambda: self.client.smembers(AGENTS_TAKEN_KEY))))

    # -- catalogue ------------------------------------------------------------------------
    def put_model(self, entry: CatalogueEntry) -> None:
        def run() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.set(model_key(entry.model_id), entry.to_json())
            pipe.sadd(MODELS_KEY, entry.model_id)
            pipe.srem(DELETED_MODELS_KEY, entry.model_id)
            pipe.set(CATALOGUE_EPOCH_KEY, uuid.uuid4().hex, nx=True)
            pipe.incr(CATALOGUE_VERSION_KEY)
            _restamp(pipe)
            pipe.execute()

        with self._stamping():
            self._call(run)

    def get_model(self, model_id: str) -> CatalogueEntry | None:
        text = self._call(lambda: self.client.get(model_key(model_id)))
        return CatalogueEntry.from_json(cast(str, text)) if text else None

    def list_models(self) -> list[CatalogueEntry]:
        """Every catalogue entry, sorted by model id."""

        def run() -> list[CatalogueEntry]:
            model_ids = sorted(cast(set[str], self.client.smembers(MODELS_KEY)))
            if not model_ids:
                return []
            texts = cast(list[str | None], self.client.mget([model_key(m) for m in model_ids]))
            return [CatalogueEntry.from_json(t) for t in texts if t]

        return self._call(run)

    def delete_model(self, model_id: str) -> bool:
        def run() -> bool:
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(model_key(model_id))
            pipe.srem(MODELS_KEY, model_id)
            pipe.sadd(DELETED_MODELS_KEY, model_id)
            pipe.incr(CATALOGUE_VERSION_KEY)
            _restamp(pipe)
            deleted, *_ = pipe.execute()
            return bool(deleted)

        with self._stamping():
            return self._call(run)

    def model_ids(self) -> tuple[set[str], set[str]]:
        """``(catalogue model ids, deleted model ids)``."""

        def run() -> tuple[set[str], set[str]]:
            pipe = self.client.pipeline(transaction=False)
            pipe.smembers(MODELS_KEY)
            pipe.smembers(DELETED_MODELS_KEY)
            present, deleted = pipe.execute()
            return set(present), set(deleted)

        return self._call(run)

    def catalogue_stamp(self) -> tuple[str, int]:
        """``(epoch, version)``: changes whenever the catalogue's content may have changed."""

        def run() -> tuple[str, int]:
            epoch, version = self.client.mget([CATALOGUE_EPOCH_KEY, CATALOGUE_VERSION_KEY])
            return str(epoch or ""), int(version or 0)

        return self._call(run)

    def routing_stamp(self) -> str:
        """The token of everything a route depends on (one GET; see ``ctl:routing:stamp``).
        A missing stamp (a fresh or wiped Redis) is set to a new token first."""

        def run() -> str:
            stamp = self.client.get(ROUTING_STAMP_KEY)
            if stamp is None:
                self.client.set(ROUTING_STAMP_KEY, _new_stamp(), nx=True)
                stamp = self.client.get(ROUTING_STAMP_KEY)
            return str(stamp)

        return self._call(run)

    async def routing_stamp_async(self) -> str | None:
        """:meth:`routing_stamp` without blocking the event loop (None: no stamp yet)."""
        with _redis_errors():
            stamp = await self._async_client().get(ROUTING_STAMP_KEY)
        return None if stamp is None else str(stamp)

    def _async_client(self) -> redis.asyncio.Redis:
        if self._aclient is None:
            self._aclient = redis.asyncio.Redis.from_url(
                self.url,
                decode_responses=True,
                socket_timeout=self._timeout_s,
                socket_connect_timeout=self._timeout_s,
                retry=redis.asyncio.retry.Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
            )
        return self._aclient

    @asynccontextmanager
    async def routing_changes(self) -> AsyncIterator[Callable[[float], Awaitable[bool]]]:
        """Subscribed to ``ctl:routing:changed`` (on the event loop): yields ``wait(timeout_s)``,
        True once at least one new stamp was announced (the backlog is drained), False after
        ``timeout_s`` without one.

        Raises:
            StateUnavailableError: Redis is down or the subscription broke.
        """
        pubsub = self._async_client().pubsub(ignore_subscribe_messages=True)

        async def wait(timeout_s: float) -> bool:
            with _redis_errors():
                got = await pubsub.get_message(timeout=timeout_s)
                if got is None:
                    return False
                while await pubsub.get_message(timeout=0.0) is not None:
                    pass
                return True

        try:
            with _redis_errors():
                await pubsub.subscribe(ROUTING_CHANNEL)
            yield wait
        finally:
            try:
                await pubsub.aclose()
            except (redis.RedisError, OSError):
                pass

    def catalogue_version(self) -> int:
        value = self._call(lambda: self.client.get(CATALOGUE_VERSION_KEY))
        return int(cast(str, value)) if value else 0

    # -- demand ---------------------------------------------------------------------------
    def record_demand(
        self,
        *,
        area_id: str,
        model_id: str,
        outcome: str,
        bytes_by_kind: Mapping[str, int],
        half_life_s: float,
        now_s: float | None = None,
    ) -> float:
        """Add one request to the decayed (area, model) count and the outcome counters."""
        now = time.time() if now_s is None else now_s

        def run() -> float:
            value = self._demand_script(
                keys=[DEMAND_KEY], args=[demand_field(area_id, model_id), now, half_life_s, 1]
            )
            pipe = self.client.pipeline(transaction=True)
            pipe.hincrby(OUTCOMES_KEY, "requests", 1)
            pipe.hincrby(OUTCOMES_KEY, outcome, 1)
            for kind, nbytes in bytes_by_kind.items():
                if nbytes:
                    pipe.hincrby(OUTCOMES_KEY, f"bytes:{kind}", int(nbytes))
            pipe.execute()
            return float(value)

        return self._call(run)

    def demand_counts(
        self, *, half_life_s: float, now_s: float | None = None
    ) -> dict[str, dict[str, float]]:
        """Decayed request counts: area id -> model id -> count as of ``now_s``."""
        now = time.time() if now_s is None else now_s
        raw = cast(dict[str, str], self._call(lambda: self.client.hgetall(DEMAND_KEY)))
        counts: dict[str, dict[str, float]] = {}
        for fld, text in raw.items():
            area_id, _, model_id = fld.partition(_SEP)
            count_s, _, at_s = text.partition(" ")
            counts.setdefault(area_id, {})[model_id] = decayed(
                float(count_s), float(at_s), now, half_life_s
            )
        return counts

    def outcomes(self) -> dict[str, int]:
        raw = cast(dict[str, str], self._call(lambda: self.client.hgetall(OUTCOMES_KEY)))
        return {k: int(v) for k, v in raw.items()}

    # -- dashboard log --------------------------------------------------------------------
    def record_fetch(self, entry: Mapping[str, Any], *, keep: int) -> None:
        """Prepend one fetch report to ``ctl:fetches`` and keep the newest ``keep``."""

        def run() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.lpush(FETCHES_KEY, json.dumps(dict(entry), sort_keys=True))
            pipe.ltrim(FETCHES_KEY, 0, keep - 1)
            pipe.execute()

        self._call(run)

    def recent_fetches(self) -> list[dict[str, Any]]:
        """The fetch log, newest first."""
        texts = cast(list[str], self._call(lambda: self.client.lrange(FETCHES_KEY, 0, -1)))
        return [json.loads(t) for t in texts]

    def put_plan_summary(self, version: int, summary: Mapping[str, Any], *, keep: int) -> None:
        """Store the summary of placement ``version``; drop all but the newest ``keep``."""

        def run() -> None:
            self.client.hset(PLANS_KEY, str(version), json.dumps(dict(summary), sort_keys=True))
            versions = sorted((int(v) for v in self.client.hkeys(PLANS_KEY)), reverse=True)
            if len(versions) > keep:
                self.client.hdel(PLANS_KEY, *(str(v) for v in versions[keep:]))

        self._call(run)

    def plan_summaries(self) -> list[dict[str, Any]]:
        """Stored plan summaries, newest version first."""
        raw = cast(dict[str, str], self._call(lambda: self.client.hgetall(PLANS_KEY)))
        return [json.loads(raw[v]) for v in sorted(raw, key=int, reverse=True)]

    # -- topology -------------------------------------------------------------------------
    def get_topology(self) -> tuple[int, dict[str, Any] | None]:
        """``(version, topology document)``; ``(0, None)`` when none was stored."""
        return _topology_of(cast(str | None, self._call(lambda: self.client.get(TOPOLOGY_KEY))))

    def put_topology(self, topology: Mapping[str, Any]) -> int:
        """Store a topology document; returns its new version."""

        def txn(pipe: Any) -> int:
            text = pipe.get(TOPOLOGY_KEY)
            version = int(json.loads(text)["version"]) + 1 if text else 1
            doc = {"schema_version": SCHEMA_VERSION, "version": version, "topology": topology}
            pipe.multi()
            pipe.set(TOPOLOGY_KEY, json.dumps(doc, sort_keys=True))
            _restamp(pipe)
            return version

        with self._stamping():
            return int(self._transact(txn, TOPOLOGY_KEY))

    # -- placement ------------------------------------------------------------------------
    def get_placement(self) -> dict[str, Any] | None:
        """The stored placement record, its ``push`` and ``dispatch`` from
        ``ctl:placement:status`` (one round trip)."""

        def run() -> tuple[str | None, dict[str, str]]:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(PLACEMENT_KEY)
            pipe.hgetall(PLACEMENT_STATUS_KEY)
            text, status = pipe.execute()
            return text, status

        text, status = self._call(run)
        return merged_placement(text, status)

    def placement_version(self) -> int | None:
        """The stored placement's version (one small read; None: no placement)."""

        def run() -> int | None:
            value = self.client.hget(PLACEMENT_STATUS_KEY, "version")
            if value is not None:
                return int(value)
            text = self.client.get(PLACEMENT_KEY)
            return int(json.loads(text).get("version", 0)) if text else None

        return self._call(run)

    def next_placement_version(self, floor: int = 0) -> int:
        """A fresh version number above ``floor`` and above every version handed out before
        (survives placement rewrites, and a Redis wipe when ``floor`` is the highest version the
        edges report having applied)."""

        def run() -> int:
            # The counter may be lost with a Redis restart without persistence while the
            # placement record survives elsewhere; never go below the stored version.
            current = self.client.get(PLACEMENT_KEY)
            stored = int(json.loads(cast(str, current)).get("version", 0)) if current else 0
            lowest = max(stored, floor)
            version = int(self.client.incr(PLACEMENT_VERSION_KEY))
            if version <= lowest:
                self.client.set(PLACEMENT_VERSION_KEY, lowest + 1)
                version = lowest + 1
            return version

        return self._call(run)

    def save_placement(self, record: Mapping[str, Any], *, fence: PlanLock | None = None) -> bool:
        """Store the placement record (``version``, ``solver``, ``servers``, ``push``, ...);
        its ``push`` map and ``dispatch`` go to ``ctl:placement:status``, where each push's
        outcome is then written alone (:meth:`update_push_status`).

        With ``fence``, only while that plan lock is still held (one atomic script): returns
        False, storing nothing, once the lock expired or another planner took it."""
        doc = {k: v for k, v in record.items() if k not in ("push", "dispatch")}
        doc["schema_version"] = SCHEMA_VERSION
        status: dict[str, str] = {"version": str(record.get("version"))}
        if "dispatch" in record:
            status["dispatch"] = json.dumps(record["dispatch"], sort_keys=True)
        if "push" in record:
            doc["push"] = {}  # the record names its pushes; their states are in the hash
            for node_id, push in record["push"].items():
                status[f"push:{node_id}"] = json.dumps(push, sort_keys=True)
        text = json.dumps(doc, sort_keys=True)

        def run() -> bool:
            if fence is not None:
                keys = [PLAN_LOCK_KEY, PLACEMENT_KEY, ROUTING_STAMP_KEY, PLACEMENT_STATUS_KEY]
                args: list[bytes | str] = [fence.token, text, _new_stamp(), ROUTING_CHANNEL]
                for name, value in status.items():
                    args += [name, value]
                return bool(self._fenced_placement_script(keys=keys, args=args))
            pipe = self.client.pipeline(transaction=True)
            pipe.set(PLACEMENT_KEY, text)
            pipe.delete(PLACEMENT_STATUS_KEY)
            pipe.hset(PLACEMENT_STATUS_KEY, mapping=cast(Any, status))
            _restamp(pipe)
            pipe.execute()
            return True

        with self._stamping():
            return self._call(run)

    def update_push_status(self, version: int, node_id: str, status: Mapping[str, Any]) -> bool:
        """Set ``push[node_id]`` of the stored placement if it is still ``version`` (one script
        call writing one hash field, whatever the size of the placement)."""
        return self._set_status(version, f"push:{node_id}", status)

    def update_dispatch(self, version: int, dispatch: Mapping[str, Any]) -> bool:
        """Set ``dispatch`` (the push round's state) of the stored placement if it is still
        ``version``."""
        return self._set_status(version, "dispatch", dispatch)

    def _set_status(self, version: int, name: str, value: Mapping[str, Any]) -> bool:
        text = json.dumps(dict(value), sort_keys=True)
        done = self._call(
            lambda: self._status_script(
                keys=[PLACEMENT_STATUS_KEY], args=[str(version), name, text]
            )
        )
        return bool(int(done))

    def save_plan_attempt(self, attempt: Mapping[str, Any]) -> None:
        doc = {**attempt, "schema_version": SCHEMA_VERSION}
        self._call(lambda: self.client.set(PLAN_ATTEMPT_KEY, json.dumps(doc, sort_keys=True)))

    def get_plan_attempt(self) -> dict[str, Any] | None:
        text = self._call(lambda: self.client.get(PLAN_ATTEMPT_KEY))
        if not text:
            return None
        doc: dict[str, Any] = json.loads(cast(str, text))
        return doc

    def plan_lock(self, *, timeout_s: float, blocking_timeout_s: float) -> PlanLock:
        """A cross-process lock around planning (released on exit, expires after ``timeout_s``).

        The lock's token is shared by all threads (``thread_local=False``): the planner's renewer
        thread extends the lock its planning thread took."""
        lock = self.client.lock(
            PLAN_LOCK_KEY,
            timeout=timeout_s,
            blocking_timeout=blocking_timeout_s,
            thread_local=False,
        )
        return PlanLock(lock)

    # -- leader lease (controller.leader) -----------------------------------------------
    def hold_lease(self, replica_id: str, token: str | None, *, lease_s: float) -> str | None:
        """Take the leader lease, or renew it when ``token`` is the one held; the token held
        now (``"{replica_id} {term}"``), or None when another replica holds it."""
        keys = [LEADER_KEY, LEADER_TERM_KEY]
        args: list[str | int] = [replica_id, max(1, int(lease_s * 1000)), token or ""]
        held = self._call(lambda: self._lease_script(keys=keys, args=args))
        return str(held) if held else None

    def release_lease(self, token: str) -> None:
        """Give the lease up at once (a clean shutdown: the next leader need not wait)."""
        self._call(lambda: self._release_script(keys=[LEADER_KEY], args=[token]))

    def lease_holder(self) -> tuple[str, int] | None:
        """``(replica_id, term)`` of the current leader (None: nobody leads right now)."""
        text = self._call(lambda: self.client.get(LEADER_KEY))
        if not text:
            return None
        replica_id, _, term = cast(str, text).rpartition(" ")
        return replica_id, int(term)


class PlanLock(AbstractContextManager[bool]):
    """Acquire on enter (returns whether it got the lock); release quietly on exit."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._held = False

    def __enter__(self) -> bool:
        with _redis_errors():
            self._held = bool(self._lock.acquire())
        return self._held

    def __exit__(self, *exc: object) -> None:
        if self._held:
            try:
                self._lock.release()
            except redis.RedisError:
                pass  # expired or Redis gone: the lock times out by itself

    @property
    def token(self) -> bytes:
        """The holder's token (the value of the lock key while held): the placement fence."""
        token: bytes = self._lock.local.token
        return token

    def reacquire(self) -> None:
        """Reset the lock's expiry to its full timeout (call while holding it)."""
        with _redis_errors():
            self._lock.reacquire()

    def owned(self) -> bool:
        """Whether this holder still owns the lock (False once it expired or Redis lost it)."""
        try:
            return self._held and bool(self._lock.owned())
        except redis.RedisError:
            return False
