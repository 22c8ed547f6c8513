"""Blocks whose bytes may have reached a client wrong, and the Range resumes that would keep them.

Trusted blocks leave by ``sendfile``, unread (:mod:`edge_node.zerocopy`): the file is checked
unchanged after each ``sendfile`` (and a streamed-and-hashed block at its end), and a failed
check cuts the response short, so a response never *completes* with a changed byte. The bytes
sent before the cut may hold changed ones, though, and a Hub client keeps them:
``huggingface_hub``'s ``http_get`` resumes a cut transfer with ``Range: bytes=<received>-`` and
appends the answer to what it has. A 206 there would stitch good bytes onto a tainted head and
the download would end as a success.

So a block caught changed after its ``sendfile``, or found corrupt at the end of a block
streamed while hashed (:meth:`edge_node.node.EdgeNode.iter_whole_block`, whose earlier chunks
have left), is *tainted* for :data:`TAINT_TTL_S` (blocks found bad before any of their bytes
leave, e.g. by the scrub or a pre-response check, are not), and a Range request
whose head (the file's bytes before the range's start) covers a tainted block is answered 200
with the whole file: HTTP lets a server ignore Range, and ``huggingface_hub`` then rewinds and
truncates its partial file before writing ("requested a Range but got 200": the whole file
comes from re-verified bytes); ``curl -C -`` gives up ("doesn't seem to support byte ranges")
rather than stitch. Ranges whose head holds no tainted block (e.g. the bytes before the changed
block were all checked good) are answered 206 as usual.

Taints are the node's own: a resume sent to another node (say, behind a balancer) is not
covered. They are kept in ``tainted.json`` under the data dir (rare: one small write per
event), so a restart between the cut and the resume forgets none; expired ones are dropped,
and at most :data:`MAX_TAINTED` are kept (the oldest go first).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from core.digest import is_block_id
from core.errors import StoreFullError
from core.fsutil import atomic_write_json
from core.manifest import FileEntry

logger = logging.getLogger(__name__)

#: How long a Range over a tainted block is answered with the whole file (a partial download
#: may wait this long for its resume; ``huggingface_hub`` retries within seconds).
TAINT_TTL_S = 24 * 3600.0
MAX_TAINTED = 10_000
#: Response header saying the Range was ignored, and why.
RANGE_IGNORED_HEADER = "X-TrimCache-Range-Ignored"
TAINTED_FILE = "tainted.json"


class TaintLog:
    """Tainted block ids and when they were tainted (wall clock: they outlive the process)."""

    def __init__(
        self, path: Path | None, *, ttl_s: float = TAINT_TTL_S, durable: bool = False
    ) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self.durable = durable
        self._lock = threading.Lock()
        self._since: dict[str, float] = self._load()

    def _load(self) -> dict[str, float]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_bytes())
            loaded = {str(k): float(v) for k, v in data.items() if is_block_id(str(k))}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError, AttributeError) as exc:
            # Unreadable: taint nothing rather than refuse to start (logged for the operator).
            logger.warning("ignoring unreadable %s: %s", self.path, exc)
            return {}
        horizon = time.time() - self.ttl_s
        return {k: v for k, v in loaded.items() if v > horizon}

    def add(self, block_id: str) -> None:
        """Taint ``block_id`` now (call it before the cut response's connection closes)."""
        with self._lock:
            self._since.pop(block_id, None)
            self._since[block_id] = time.time()
            while len(self._since) > MAX_TAINTED:
                del self._since[next(iter(self._since))]
            snapshot = dict(self._since)
            if self.path is not None:
                try:
                    atomic_write_json(self.path, snapshot, durable=self.durable)
                except (OSError, StoreFullError) as exc:  # still held in memory until a restart
                    logger.warning("could not save %s: %s", self.path, exc)
        logger.warning("block_id=%s tainted: Range resumes over it get the whole file", block_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._since)

    def head_tainted(self, entry: FileEntry, start: int) -> bool:
        """Whether bytes ``[0, start)`` of ``entry`` cover a block tainted within the TTL."""
        if start <= 0 or not self._since:  # the common case: nothing tainted, one dict check
            return False
        horizon = time.time() - self.ttl_s
        with self._lock:
            since = self._since
            return any(
                ref.offset < start and since.get(ref.block_id, 0.0) > horizon
                for ref in entry.blocks
            )
