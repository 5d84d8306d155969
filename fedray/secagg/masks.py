"""The masks: what a client adds to its input, and what the server removes from the sum.

Bonawitz et al. 2017, §4 (Figure 4, rounds 2 and 4). Client u with ring input x_u, self-mask seed
b_u and pairwise seeds s_{u,v} agreed with each neighbour v (Diffie–Hellman in the protocol) sends

    y_u = x_u + PRG(b_u) + Σ_{v ∈ N(u)} δ_{u,v} · PRG(s_{u,v})   (mod 2^b),
    δ_{u,v} = +1 if u < v, −1 if u > v,

so every pair of survivors' masks cancels in Σ y_u. For the survivors U_2 (masked input arrived)
and the dropped clients D = U_1 \\ U_2 the server computes

    z = Σ_{u ∈ U_2} y_u − Σ_{u ∈ U_2} PRG(b_u) − Σ_{u ∈ U_2} Σ_{v ∈ N(u) ∩ D} δ_{u,v} PRG(s_{u,v}),

which is Σ_{u ∈ U_2} x_u exactly: the survivors' self-mask seeds b_u, and the dropped clients'
key-agreement secrets (from which s_{u,v} follows for every survivor u), are reconstructed from
the shares the survivors return in the unmasking round — if at least t of the holders of each
secret survived; otherwise the round fails (the server can remove nothing, and learns nothing).

What is simulated: the seeds come from fedray's derived generators — s_{u,v} from
(seed, "secagg.pair", {min(u,v), max(u,v)}, round) and b_u from (seed, "secagg.self", u, round) —
instead of a key agreement, and a secret counts as reconstructible when at least t of the
clients holding its Shamir shares survived, instead of interpolating the shares. The masks, their
signs, their cancellation and which of them the server can and must remove are the protocol's.
The holders of u's shares are u itself and its neighbours N(u) (all of U_1 in SecAgg).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedray import seeding
from fedray.secagg import ring
from fedray.secagg.graph import Graph

PAIR, SELF = "secagg.pair", "secagg.self"


def _prg(seed: int, purpose: str, key: int, round_: int, length: int, bits: int) -> np.ndarray:
    rng = seeding.generator(seed, purpose, key, round_)
    return ring.reduce(rng.bit_generator.random_raw(length).astype(np.uint64), bits)


def pair_mask(seed: int, u: int, v: int, round_: int, length: int, bits: int) -> np.ndarray:
    """PRG(s_{u,v}) = PRG(s_{v,u}): keyed by the unordered pair (ids are < 2^32)."""
    lo, hi = (u, v) if u < v else (v, u)
    return _prg(seed, PAIR, (int(lo) << 32) | int(hi), round_, length, bits)


def self_mask(seed: int, u: int, round_: int, length: int, bits: int) -> np.ndarray:
    return _prg(seed, SELF, int(u), round_, length, bits)


def mask_input(
    x: np.ndarray, client_id: int, graph: Graph, *, seed: int, round_: int, bits: int
) -> np.ndarray:
    """Client u's masked input y_u (round 2, MaskedInputCollection)."""
    n = len(x)
    y = ring.add(x, self_mask(seed, client_id, round_, n, bits), bits)
    for v in graph.neighbours(client_id):
        p = pair_mask(seed, client_id, int(v), round_, n, bits)
        y = ring.add(y, p, bits) if client_id < v else ring.subtract(y, p, bits)
    return y


@dataclass(frozen=True)
class Unmasked:
    """The outcome of the unmasking round: Σ_{U_2} x_u (None if the round failed) and what it
    took."""

    total: np.ndarray | None
    survivors: int  # |U_2|
    dropped: int  # |U_1 \ U_2|: keys shared, no masked input accepted
    self_masks: int  # b_u reconstructed (one per survivor)
    dropped_keys: int  # dropped clients' key secrets reconstructed
    pair_masks: int  # pairwise masks recomputed from them and subtracted

    @property
    def ok(self) -> bool:
        return self.total is not None


def reconstructible(
    graph: Graph, survivors: np.ndarray, threshold: Callable[[int], int]
) -> np.ndarray:
    """Per member of U_1: whether ≥ t of the holders of its shares (itself and N(u)) survived.
    ``threshold(holders)`` gives t for a client whose secret has that many holders."""
    alive = set(int(s) for s in survivors)
    out = np.zeros(len(graph), dtype=bool)
    for i, u in enumerate(graph.members):
        holders = graph.neighbours(int(u))
        count = sum(int(h) in alive for h in holders) + (int(u) in alive)
        out[i] = count >= threshold(len(holders) + 1)
    return out


def unmask(
    masked_sum: np.ndarray,
    survivors,
    graph: Graph,
    *,
    threshold: Callable[[int], int],
    min_survivors: int,
    seed: int,
    round_: int,
    bits: int,
) -> Unmasked:
    """The server's unmasking round (Figure 4, round 4) over the ring sum of the survivors'
    masked inputs."""
    survivors = np.unique(np.asarray(survivors, dtype=np.int64))
    alive = set(int(s) for s in survivors)
    dropped = [int(u) for u in graph.members if int(u) not in alive]
    if len(survivors) < min_survivors or not reconstructible(graph, survivors, threshold).all():
        return Unmasked(None, len(survivors), len(dropped), 0, 0, 0)
    n = len(masked_sum)
    z = np.asarray(masked_sum, dtype=np.uint64).copy()
    for u in survivors:
        z = ring.subtract(z, self_mask(seed, int(u), round_, n, bits), bits)
    keys = pairs = 0
    for v in dropped:
        with_survivors = [int(u) for u in graph.neighbours(v) if int(u) in alive]
        keys += bool(with_survivors)
        for u in with_survivors:
            # survivor u added δ_{u,v} PRG(s_{u,v}); take it out
            p = pair_mask(seed, u, v, round_, n, bits)
            z = ring.subtract(z, p, bits) if u < v else ring.add(z, p, bits)
            pairs += 1
    return Unmasked(z, len(survivors), len(dropped), len(survivors), keys, pairs)
