"""Who masks with whom: the round's masking graph over the clients that shared keys (U_1).

SecAgg (Bonawitz et al. 2017) pairs every client with every other: the complete graph. SecAgg+
(Bell et al. 2020, §3) pairs each client only with its neighbours in a random k-regular graph,
with k = O(log n), so a client's keys, shares and masks cost O(log n) instead of O(n). fedray draws
that graph as a Harary graph H_{k,n} — the n clients on a cycle, each joined to the k/2 nearest on
either side — over a random order of U_1 drawn from (seed, "secagg.graph", round): the
construction Bell et al. describe as a random relabelling of a fixed k-regular graph. k is even
(an odd k is raised by one); k ≥ n − 1 is the complete graph.

The graph is a pure function of (seed, round, U_1), so clients and the server derive the same
one (in the protocol the server announces it with the public keys).
"""

from __future__ import annotations

import math

import numpy as np

from fedray import seeding


def default_degree(n: int) -> int:
    """SecAgg+'s k when not configured: the even number ≥ 2·⌈log₂ n⌉ (Bell et al. take k =
    O(log n); this gives 14 neighbours at n = 100, 20 at n = 1000)."""
    return 2 * max(1, math.ceil(math.log2(max(n, 2))))


class Graph:
    """The masking graph of one round over ``members`` (U_1, any order; kept sorted)."""

    def __init__(self, members, degree: int | None, seed: int, round_: int):
        self.members = np.unique(np.asarray(members, dtype=np.int64))
        n = len(self.members)
        if degree is not None:
            degree += degree % 2
        self.complete = degree is None or degree >= n - 1
        self.degree = n - 1 if self.complete else degree
        if not self.complete:
            rng = seeding.generator(seed, "secagg.graph", 0, round_)
            self._cycle = self.members[rng.permutation(n)]
            self._position = {int(c): i for i, c in enumerate(self._cycle)}
            half = self.degree // 2
            self._offsets = np.concatenate([np.arange(1, half + 1), -np.arange(1, half + 1)])

    def __len__(self) -> int:
        return len(self.members)

    def neighbours(self, client_id: int) -> np.ndarray:
        """The sorted ids ``client_id`` masks with (never itself)."""
        if self.complete:
            return self.members[self.members != client_id]
        p = self._position[int(client_id)]
        n = len(self._cycle)
        return np.sort(self._cycle[(p + self._offsets) % n])

    def degrees(self, client_ids) -> np.ndarray:
        """|N(u)| for each of ``client_ids`` (members)."""
        return np.full(len(client_ids), self.degree, dtype=np.int64)
