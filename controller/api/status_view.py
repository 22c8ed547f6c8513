"""The big parts of the ``GET /v1/status`` body, encoded from the stored texts with caches
keyed by those texts (so a cached part can never be stale: a changed text is a cache miss).

With 1,000 nodes the body is ~1 MB: the node views, the placement's ``servers`` and its
``push`` map. Parsing every stored record and re-encoding it on each request cost ~35 ms of
CPU, held the GIL against the push workers and the solver, and made enough garbage to keep
the collector busy (measured; see docs/api.md and the README's scale rows). Here:

- a node's view (:func:`controller.api.routes.nodes.node_view`) is encoded once per stored
  record text (a heartbeat rewrites the text, so it is re-encoded then); only ``age_s`` is
  computed per request. The node set is the one read for this request (an expired or new
  node is never missed or kept);
- the placement record (everything but ``push`` and ``dispatch``) is encoded once per stored
  record text; the push statuses are spliced in as stored (each is the JSON of one push
  status), ``dispatch`` likewise. A record in the older layout (``push`` inside it) goes
  through :func:`controller.state.merged_placement` and
  :func:`~controller.api.routes.placement.placement_view` whole.

The document is the same as a full parse and re-encode would give (tested against
``node_view`` and ``placement_view``); only separators and key order inside ``push`` may differ.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from controller.api.routes.nodes import age_s, node_view
from controller.api.routes.placement import placement_view
from controller.state import NodeRecord, merged_placement, status_belongs


@dataclass(frozen=True, slots=True)
class StatusNode:
    """One live node: its stored text, its record and its view's JSON without ``age_s``
    (and without the closing brace)."""

    text: str
    record: NodeRecord
    head: str


class StatusView:
    """Per-app caches of the encoded parts (safe to share between request threads: entries
    are immutable and a cache is replaced whole)."""

    def __init__(self) -> None:
        self._nodes: dict[str, StatusNode] = {}
        self._record: _Record | None = None

    def nodes(self, texts: Mapping[str, str]) -> list[StatusNode]:
        """The live nodes of ``texts`` (node id -> stored record JSON), in that order; only
        records whose text changed since the last call are parsed and encoded."""
        old = self._nodes
        changed = [t for n, t in texts.items() if (e := old.get(n)) is None or e.text != t]
        parsed = iter(NodeRecord.many_from_json(changed))
        fresh: dict[str, StatusNode] = {}
        for node_id, text in texts.items():
            entry = old.get(node_id)
            if entry is None or entry.text != text:
                record = next(parsed)
                view = node_view(record, record.last_seen)
                del view["age_s"]
                entry = StatusNode(text, record, json.dumps(view)[:-1])
            fresh[node_id] = entry
        self._nodes = fresh
        return list(fresh.values())

    def placement(
        self, text: str | None, status: Mapping[str, str], solver: str
    ) -> tuple[str, float]:
        """``(the placement part as JSON, its hit_ratio)`` (as ``placement_view`` of
        ``merged_placement(text, status)``)."""
        cached = self._record
        if text is None or cached is None or cached.text != text:
            doc = json.loads(text) if text else None
            if doc is None or not status_belongs(doc, status) or doc.get("push"):
                view = placement_view(merged_placement(text, status), solver)
                return json.dumps(view), float(view.get("hit_ratio", 0.0))
            parts = {k: v for k, v in doc.items() if k not in ("push", "dispatch")}
            dispatch = doc.get("dispatch")
            cached = self._record = _Record(
                text=cast(str, text),
                head=json.dumps(placement_view(parts, solver))[:-1],
                hit_ratio=float(doc.get("hit_ratio", 0.0)),
                dispatch=None if dispatch is None else json.dumps(dispatch),
            )
        pushes = (f"{json.dumps(k[5:])}: {v}" for k, v in status.items() if k.startswith("push:"))
        pairs = [f'"push": {{{", ".join(pushes)}}}']
        dispatch = status.get("dispatch", cached.dispatch)
        if dispatch is not None:
            pairs.append(f'"dispatch": {dispatch}')
        sep = "" if cached.head == "{" else ", "
        return cached.head + sep + ", ".join(pairs) + "}", cached.hit_ratio


@dataclass(frozen=True, slots=True)
class _Record:
    text: str  # the stored placement record
    head: str  # its view without push and dispatch, as JSON without the closing brace
    hit_ratio: float
    dispatch: str | None  # the record's own dispatch as JSON (used when the hash has none)


def encode_status(
    nodes: Sequence[StatusNode], now_s: float, placement: str, rest: Mapping[str, Any]
) -> bytes:
    """The whole body: ``{"nodes": [...], "placement": ..., **rest}`` (in that order)."""
    views = ", ".join(f'{n.head}, "age_s": {age_s(n.record, now_s)!r}}}' for n in nodes)
    tail = json.dumps(dict(rest))
    return f'{{"nodes": [{views}], "placement": {placement}, {tail[1:]}'.encode()
