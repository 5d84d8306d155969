"""Secure aggregation as a client transform (:mod:`fedray.execution.transforms`).

``send`` (on the client): the update, weighted as the strategy sums it, and the weight itself as
one extra coordinate — so the server never sees an individual weight — are quantised into the ring
(:mod:`fedray.secagg.ring`) and masked (:func:`fedray.secagg.masks.mask_input`); the payload is
the masked vector, ⌈b/8⌉ bytes per coordinate. ``receive`` (the server) only unpacks it: a masked
vector cannot be decoded on its own, so it goes into a ring aggregate
(:meth:`fedray.strategies.aggregate.Aggregate.ring`), whose sums mod 2^b workers pre-sum and the
driver merges in the fixed group order as usual. ``finalize`` (the driver, once per round) runs
the unmasking round over the ring sum and turns it into the plain linear sum Σ w_k u_k, Σ w_k —
or, with too few survivors, empties it: the round fails and the model stays.

The clients that shared keys (U_1) are the round's cohort: the driver sends their ids with the
round's model (``downlink``), as the server announces the public keys it collected.

**With DP-FedAvg** (``privacy``) the server may not noise the sum — it would have to be trusted
with it, which is what secure aggregation removes. Each client instead adds its share of the
noise before quantising and masking (distributed noise; Kairouz, Liu, Steinke, "The Distributed
Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation", ICML 2021): with
t = the fewest survivors a round can succeed with, client u adds N(0, (zC)²/t · I), drawn from
(seed, "secagg.dp.noise", u, round), to its clipped update (weight 1). A successful round has
|U_2| ≥ t survivors, so its unmasked sum carries noise of variance |U_2|/t · (zC)² ≥ (zC)²: at
least DP-FedAvg's central noise, and the accountant's ε holds (a failed round releases nothing
and still counts). What it does not cover: each client's noisy value is rounded to the grid 1/s
(and clipped to ±c, which the config makes 10 noise deviations wide) before the sum, so the
mechanism is the continuous Gaussian only up to that rounding — Kairouz et al.'s discrete
Gaussian analysis is not implemented; read ε as exact in the limit of a fine grid (large
``scale``).
"""

from __future__ import annotations

import math

import numpy as np

from fedray import seeding
from fedray.secagg import masks, ring
from fedray.secagg.graph import Graph, default_degree
from fedray.strategies.aggregate import Aggregate

MEMBERS = "secagg.members"  # what clients receive: the ids of U_1
NOISE_PURPOSE = "secagg.dp.noise"


def threshold_rule(threshold: int | float):
    """t for a secret with ``holders`` share holders: a count, or ⌈fraction · holders⌉."""
    if isinstance(threshold, int):
        return lambda holders: threshold
    return lambda holders: max(1, math.ceil(threshold * holders - 1e-9))


class SecureAggregation:
    def __init__(self, sa, seed: int, noise_std: float | None = None):
        self.cfg, self.seed = sa, seed
        self.noise_std = noise_std  # z·C of DP-FedAvg: the std the sum must carry
        self.bits, self.scale, self.clip_range = sa.bits, sa.scale, sa.clip_range
        self.threshold = threshold_rule(sa.threshold)
        self._graph: tuple | None = None  # (round, members bytes, Graph): one graph a round

    def graph(self, members: np.ndarray, round_: int) -> Graph:
        members = np.asarray(members, dtype=np.int64)
        key = (round_, members.tobytes())
        if self._graph is None or self._graph[:2] != key:
            degree = None
            if self.cfg.protocol == "secagg_plus":
                degree = self.cfg.neighbours or default_degree(len(members))
            self._graph = (*key, Graph(members, degree, self.seed, round_))
        return self._graph[2]

    # ------------------------------------------------------------------ the client

    def send(self, up) -> None:
        graph = self.graph(up.received[MEMBERS], up.key)
        weighted = np.asarray(up.update, dtype=np.float64) * up.weight
        if self.noise_std:
            # this client's share of the central noise, for the fewest survivors t that unmask
            t = self.threshold(len(graph))
            rng = seeding.generator(self.seed, NOISE_PURPOSE, up.client_id, up.key)
            weighted = weighted + rng.normal(0.0, self.noise_std / math.sqrt(t), weighted.shape)
        x = np.append(weighted, float(up.weight))
        q, clipped = ring.quantise(x, scale=self.scale, clip_range=self.clip_range, bits=self.bits)
        y = masks.mask_input(q, up.client_id, graph, seed=self.seed, round_=up.key, bits=self.bits)
        up.payload, up.update, up.weight = ring.pack(y, self.bits), None, 0.0
        up.nbytes = len(up.payload)
        up.clipped = up.clipped or clipped > 0

    def receive(self, up) -> None:
        up.update = ring.unpack(up.payload, self.bits)

    # ------------------------------------------------------------------ the server

    def new_aggregate(self, aggregate: Aggregate) -> Aggregate:
        return Aggregate.ring(self.bits)

    def downlink(self, round_: int, cohort: np.ndarray) -> dict:
        return {MEMBERS: np.unique(np.asarray(cohort, dtype=np.int64))}

    def finalize(self, aggregate: Aggregate, round_: int, context: dict) -> dict:
        """Unmask the round's ring sum (in place) and return its ``secagg_*`` columns."""
        graph = self.graph(context[MEMBERS], round_)
        total = aggregate.total
        if total is None:
            total = np.zeros(0, dtype=np.uint64)
        out = masks.unmask(
            total,
            aggregate.members,
            graph,
            threshold=self.threshold,
            min_survivors=self.threshold(len(graph)),
            seed=self.seed,
            round_=round_,
            bits=self.bits,
        )
        if out.ok and len(out.total):
            values = ring.dequantise(out.total, scale=self.scale, bits=self.bits)
            aggregate.unmasked(values[:-1], values[-1])
        else:
            aggregate.unmasked(None, 0.0)
        return {
            "secagg_failed": not out.ok,
            "secagg_survivors": out.survivors,
            "secagg_dropped": out.dropped,
            "secagg_neighbours": graph.degree,
            "secagg_dropped_keys": out.dropped_keys,
            "secagg_pair_masks": out.pair_masks,
        }
