"""Who holds each block, and who is placed to hold it, during one push round (pure, no I/O).

The push round (:mod:`controller.planner`) asks, for every node it may start: which blocks of
its target no node holds yet, which of its evictions would remove the last confirmed copy of a
block another node is placed to hold but lacks, and which peers hold a block it needs. Asked of
plain ``node -> blocks`` maps each answer walks every node, so a round over N nodes cost
O(N^2) set operations (and more while nodes waited). :class:`Holdings` keeps two inverted
indexes in step with the confirmed holdings instead - ``block -> nodes holding it`` and
``block -> nodes placed to hold it that lack it`` - so each answer costs the blocks it is about.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

_NONE: frozenset[str] = frozenset()


class Holdings:
    """Confirmed holdings (``held``) and the round's targets, with their inverted indexes.
    Not thread-safe: the round calls it under its own lock."""

    def __init__(
        self, targets: Mapping[str, frozenset[str]], held: Mapping[str, frozenset[str]]
    ) -> None:
        self.targets: dict[str, frozenset[str]] = dict(targets)
        self.held: dict[str, frozenset[str]] = {}
        self._holders: dict[str, set[str]] = {}
        self._lacking: dict[str, set[str]] = {}
        for node_id, target in self.targets.items():
            for block_id in target:
                self._lacking.setdefault(block_id, set()).add(node_id)
        for node_id, blocks in held.items():
            self.set_held(node_id, blocks)
        # Every node of the round in id order: peers are listed in ring order (peers()).
        self._ring = sorted(set(self.held) | set(self.targets))
        self._position = {n: i for i, n in enumerate(self._ring)}

    def set_held(self, node_id: str, blocks: Iterable[str]) -> None:
        """``node_id`` now holds exactly ``blocks`` (a plan applied, or the round's start)."""
        new = frozenset(blocks)
        old = self.held.get(node_id, _NONE)
        target = self.targets.get(node_id, _NONE)
        for block_id in old - new:
            holders = self._holders[block_id]
            holders.discard(node_id)
            if not holders:
                del self._holders[block_id]
            if block_id in target:
                self._lacking.setdefault(block_id, set()).add(node_id)
        for block_id in new - old:
            self._holders.setdefault(block_id, set()).add(node_id)
            lacking = self._lacking.get(block_id)
            if lacking is not None:
                lacking.discard(node_id)
                if not lacking:
                    del self._lacking[block_id]
        self.held[node_id] = new

    def holders(self, block_id: str) -> frozenset[str]:
        """Nodes whose confirmed holdings include ``block_id``."""
        return frozenset(self._holders.get(block_id, _NONE))

    def is_held(self, block_id: str) -> bool:
        """Whether some node's confirmed holdings include ``block_id``."""
        return block_id in self._holders

    def lacking(self, block_id: str) -> frozenset[str]:
        """Nodes placed to hold ``block_id`` that have not confirmed it."""
        return frozenset(self._lacking.get(block_id, _NONE))

    def unheld(self, node_id: str) -> frozenset[str]:
        """Blocks of ``node_id``'s target that no node holds yet (the origin's to serve)."""
        return frozenset(b for b in self.targets.get(node_id, _NONE) if b not in self._holders)

    def last_copies(self, node_id: str) -> frozenset[str]:
        """Blocks ``node_id``'s plan would evict although it holds their only confirmed copy
        and another node is placed to hold them but has not confirmed them yet."""
        evicts = self.held.get(node_id, _NONE) - self.targets.get(node_id, _NONE)
        return frozenset(
            b for b in evicts if b in self._lacking and self._holders.get(b) == {node_id}
        )

    def peers(self, node_id: str, block_id: str, limit: int) -> list[str]:
        """Up to ``limit`` holders of ``block_id`` other than ``node_id``, in ring order after
        ``node_id`` (node ids sorted, wrapping): the same order for all of a node's blocks, a
        different one per node, so the nodes fetching a popular block spread over its holders.
        Costs at most about ``sqrt(limit * nodes)`` steps, whatever the number of holders."""
        holders = self._holders.get(block_id, _NONE)
        n = len(self._ring)
        start = self._position.get(node_id, -1) + 1
        others = len(holders) - (node_id in holders)
        if others <= 0:
            return []
        if others * others <= limit * n:  # few holders: rank them all
            ranked = sorted(
                (p for p in holders if p != node_id),
                key=lambda p: (self._position[p] - start) % n,
            )
            return ranked[:limit]
        out: list[str] = []  # many holders: walk the ring, one is met every n/others steps
        for step in range(n):
            peer = self._ring[(start + step) % n]
            if peer in holders and peer != node_id:
                out.append(peer)
                if len(out) == limit:
                    break
        return out

    def next_node(self, pending: Sequence[str]) -> str | None:
        """The first pending node whose evictions remove no last confirmed copy of a block
        another node is placed to hold but lacks (None: every pending node would)."""
        for node_id in pending:
            if not self.last_copies(node_id):
                return node_id
        return None
