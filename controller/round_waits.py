"""Which nodes of a push round wait, and for whom (pure, no I/O).

The push round (:mod:`controller.planner`) starts a node's push as soon as it waits for no
peer (:func:`controller.planner._wait_reason`): a node waits either for the node of the round
fetching a block it needs (it copies it from that peer afterwards), or for a node still in the
round that is placed to hold a block whose last confirmed copy the waiting node would evict.
Asking every waiting node again after each ended push costs the number of waiting nodes per
ended push: O(N^2) over a round of N nodes, all of it in the controller process beside the
requests it serves. :class:`RoundWaits` indexes each waiting node by what it waits on instead,
so an ended push wakes only the nodes whose answer it can change:

- the nodes waiting on *that node* (its push ended: it is no longer fetching, nor in the round);
- the nodes waiting on a *block that node now holds* (an applied plan confirmed a copy, so a
  fetch of it is no longer needed and it is no longer a last copy);
- on :meth:`expired`, the nodes waiting on a fetcher that did not accept its plan within the
  claim time (a hung edge must not hold the others: ``CLAIM_ACCEPT_S`` in the planner).

A woken node is asked again (it may find another reason to wait and is indexed anew). Nothing
else changes a wait's answer: a node waits on a fetch while the fetcher's push runs and the
block is unheld; on a last copy while the node lacking it is in the round and no other node
holds the block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Wait:
    """Why a node waits: for ``on`` (a node of the round) because of ``block_id``; ``fetch``:
    ``on`` is fetching the block (else ``on`` is placed to hold a last copy the node holds)."""

    on: str
    block_id: str
    fetch: bool


class RoundWaits:
    """The waiting nodes of one push round, indexed by the node and the block each waits on.
    Not thread-safe: the round's dispatcher thread owns it."""

    def __init__(self) -> None:
        self._waits: dict[str, Wait] = {}
        self._by_node: dict[str, set[str]] = {}
        self._by_block: dict[str, set[str]] = {}
        self._fetches: dict[str, set[str]] = {}  # fetcher -> the nodes waiting on its fetch

    def __len__(self) -> int:
        return len(self._waits)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._waits

    def waiting(self) -> list[str]:
        """The waiting nodes, in id order."""
        return sorted(self._waits)

    def reason(self, node_id: str) -> Wait | None:
        return self._waits.get(node_id)

    def wait(self, node_id: str, why: Wait) -> None:
        """``node_id`` waits for ``why`` (replacing what it waited for before)."""
        self.discard(node_id)
        self._waits[node_id] = why
        self._by_node.setdefault(why.on, set()).add(node_id)
        self._by_block.setdefault(why.block_id, set()).add(node_id)
        if why.fetch:
            self._fetches.setdefault(why.on, set()).add(node_id)

    def discard(self, node_id: str) -> None:
        """``node_id`` no longer waits (it was started, or asked again)."""
        why = self._waits.pop(node_id, None)
        if why is None:
            return
        indexes = [(self._by_node, why.on), (self._by_block, why.block_id)]
        if why.fetch:
            indexes.append((self._fetches, why.on))
        for index, key in indexes:
            members = index[key]
            members.discard(node_id)
            if not members:
                del index[key]

    def ended(self, node_id: str, held: Iterable[str] = ()) -> set[str]:
        """``node_id``'s push ended, holding ``held`` now: the nodes whose wait it may have
        ended (they no longer count as waiting; ask each again)."""
        woken = set(self._by_node.get(node_id, ()))
        if self._by_block:
            for block_id in held:
                woken.update(self._by_block.get(block_id, ()))
        for waiter in woken:
            self.discard(waiter)
        return woken

    def expired(self, claim_lapsed: Callable[[str], bool]) -> set[str]:
        """The nodes waiting on a fetch by a node for which ``claim_lapsed(node)`` (it did not
        accept its plan in time); they no longer count as waiting (ask each again)."""
        woken: set[str] = set()
        for on, waiters in self._fetches.items():
            if claim_lapsed(on):
                woken.update(waiters)
        for waiter in woken:
            self.discard(waiter)
        return woken
