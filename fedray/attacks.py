"""Adversarial clients: who attacks (a seeded set) and what an attacker does to its upload.

An attack is a client transform (:class:`Attack`, placed right after the row-sparse packing and
before DP clipping and the codec in :class:`fedray.execution.transforms.Pipeline`), so the
drivers, the pool and the worker do not know about it; the drivers only ask the pipeline which
clients were adversarial, to mark them in the tables (``client_events.adversarial``,
``rounds.num_adversarial``). Kinds (``attack.kind``):

* ``sign_flip`` — the attacker uploads −Δ (the classic reversed-gradient attack; e.g. Damaskinos
  et al. 2018, used as a baseline by Baruch et al. 2019).
* ``gaussian`` — Δ + N(0, scale² I), the noise drawn from (seed, "attack.noise", client, round).
* ``model_replacement`` — the boosting step of Bagdasaryan, Veit, Hua, Estrin, Shmatikov,
  "How To Backdoor Federated Learning", AISTATS 2020, eq. (3): to replace the global model G by
  its own X the attacker submits L = γ(X − G) + G, i.e. the update γ·Δ, with γ = n/η (n clients
  per round, η the server learning rate) unless ``boost`` is given. Without ``target_class``
  X is the attacker's honest model (boosting alone); with it, X is trained on the attacker's data
  relabelled to that class — a simple targeted-poisoning task standing in for the paper's
  backdoor (no trigger pattern), whose success shows as lost accuracy.
* ``label_flip`` — data poisoning: the attacker trains on its data with every class label y
  replaced by C − 1 − y (Biggio et al. 2012; Tolpegin et al. 2020). This acts before training,
  through the transform's ``prepare`` hook on the client's data; workloads without class
  labels are refused.
* ``alie`` — "A Little Is Enough", Baruch, Baruch, Goldberg, NeurIPS 2019, Algorithm 1: the
  colluding attackers of a round estimate the per-coordinate mean μ and standard deviation σ of
  their own honest updates and all send μ − z·σ, with z_max from the paper's §3:
  s = ⌊n/2 + 1⌋ − m and z = Φ⁻¹((n − s)/n) for n clients in the round, m of them attackers
  (``z`` overrides it).

**Where ALIE sees the round's attackers together.** μ and σ need every attacker of the round at
once, but workers train groups of clients and only the driver sees the whole round. They are,
however, functions of three *sums* — Σu, Σu², m — and the round's mergeable
:class:`~fedray.strategies.aggregate.Aggregate` already carries unweighted sums of named side
uploads (``extras``) from every group to the driver in a fixed order. So the server side of an
attacker's upload (``receive``) moves its honest update out of the sum into those extras (its
row keeps weight 0, which every rule ignores), and ``finalize`` — the transforms' step on the
whole round's sum, run on the driver before the server step — turns them into μ − z·σ and puts
it in for each attacker (linear sums: Σ_att w_k · (μ − z·σ); stacked rows: m rows of it with the
attackers' mean weight). No new argument reaches the drivers, the pool or the worker. The
collusion itself costs no upload bytes (it happens off the federation's links), and the crafted
vector enters the sum as decoded: with a lossy uplink codec the statistics come from the decoded
honest updates and μ − z·σ is not re-encoded; with DP it is clipped to C like any update. ALIE
needs rounds, so asynchronous runs refuse it; the other kinds act per upload and work in both.

**Who attacks.** ``fraction`` of the N registered clients: exactly m = round(fraction · N) of
them, the clients c with π(c) < m for a seeded permutation π of 0..N−1 (a 4-round Feistel
network on ⌈log₂ N⌉ bits with cycle walking, so it costs O(1) per client however large N is).
``selection: fixed`` keys π by the seed alone (the same attackers all run); ``per_round`` by
(seed, round) — the dispatch number in async runs — so the set is drawn afresh each round.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from statistics import NormalDist

import numpy as np

from fedray import seeding
from fedray.errors import UserError
from fedray.privacy import clip
from fedray.strategies.aggregate import Aggregate

KINDS = ("sign_flip", "gaussian", "model_replacement", "alie", "label_flip")
# The ALIE side sums that travel in Aggregate.extras from the workers to the driver.
ALIE_SUM, ALIE_SQUARES, ALIE_COUNT, ALIE_WEIGHT = (
    "attack.alie.sum",
    "attack.alie.squares",
    "attack.alie.count",
    "attack.alie.weight",
)
_FEISTEL_ROUNDS = 4


# --------------------------------------------------------------------------- who attacks


@functools.lru_cache(maxsize=1024)
def _round_keys(seed: int, purpose: str, key: int) -> tuple[int, ...]:
    rng = seeding.generator(seed, purpose, 0, key)
    return tuple(int(k) for k in rng.integers(0, 2**63, size=_FEISTEL_ROUNDS))


def permute(ids, n: int, seed: int, key: int = 0, purpose: str = "attack.select") -> np.ndarray:
    """π(ids) for a seeded permutation π of 0..n−1 keyed by (seed, purpose, key)."""
    ids = np.asarray(ids, dtype=np.uint64)
    half = max(1, ((max(n, 2) - 1).bit_length() + 1) // 2)
    mask, shift = np.uint64((1 << half) - 1), np.uint64(half)
    keys = [np.uint64(k) for k in _round_keys(int(seed), purpose, int(key))]

    def encrypt(x: np.ndarray) -> np.ndarray:
        left, right = x >> shift, x & mask
        for k in keys:
            left, right = right, left ^ (seeding._splitmix64(right ^ k) & mask)
        return (left << shift) | right

    # Cycle walking: the Feistel network permutes 0..4^half − 1 ⊇ 0..n−1; re-encrypting until
    # the value falls below n stays on x's cycle, so the result is a permutation of 0..n−1.
    out = encrypt(ids)
    outside = out >= np.uint64(n)
    while outside.any():
        out[outside] = encrypt(out[outside])
        outside = out >= np.uint64(n)
    return out.astype(np.int64)


def num_attackers(fraction: float, num_clients: int) -> int:
    """m = round(fraction · N) (halves up), the size of the attacker set."""
    return min(num_clients, math.floor(fraction * num_clients + 0.5))


def alie_z(n: int, m: int) -> float:
    """Baruch et al.'s z_max: s = ⌊n/2 + 1⌋ − m, z = Φ⁻¹((n − s)/n). Outside the paper's
    setting (a majority of attackers, s ≤ 0) s is held at 1 so z stays finite; n < 2: 0."""
    if n < 2 or m < 1:
        return 0.0
    s = max(n // 2 + 1 - m, 1)
    return NormalDist().inv_cdf((n - s) / n)


# --------------------------------------------------------------------------- the transform


class Attack:
    """The client transform of an ``attack`` config section (see the module docstring)."""

    def __init__(
        self,
        cfg,
        *,
        seed: int,
        num_clients: int,
        boost: float,
        clip_norm: float | None = None,
        num_classes: int | None = None,
    ):
        self.kind, self.selection = cfg.kind, cfg.selection
        self.scale, self.z, self.target_class = cfg.scale, cfg.z, cfg.target_class
        self.seed, self.num_clients, self.boost = seed, num_clients, boost
        self.count = num_attackers(cfg.fraction, num_clients)
        self.clip_norm, self.num_classes = clip_norm, num_classes

    def adversarial(self, client_ids, key: int) -> np.ndarray:
        """Whether each client is an attacker in round (or dispatch) ``key``."""
        ids = np.asarray(client_ids, dtype=np.int64)
        if self.count == 0 or ids.size == 0:
            return np.zeros(ids.shape, dtype=bool)
        k = key if self.selection == "per_round" else 0
        return permute(ids, self.num_clients, self.seed, k) < self.count

    def _attacks(self, client_id: int, key: int) -> bool:
        return bool(self.adversarial([client_id], key)[0])

    def prepare(self, data, client_id: int, key: int):
        """The data a client trains on: label flipping (and model replacement with a target
        class) poisons an attacker's train labels."""
        poisons = self.kind == "label_flip" or self.target_class is not None
        if not poisons or not self._attacks(client_id, key):
            return data
        if self.kind == "label_flip":
            return replace(data, y_train=(self.num_classes - 1) - data.y_train)
        return replace(data, y_train=data.y_train * 0 + self.target_class)

    def send(self, up) -> None:
        if self.kind in ("alie", "label_flip") or not self._attacks(up.client_id, up.key):
            return
        if self.kind == "sign_flip":
            up.update = -up.update
        elif self.kind == "gaussian":
            rng = seeding.generator(self.seed, "attack.noise", up.client_id, up.key)
            noise = rng.normal(0.0, self.scale, size=up.update.shape)
            up.update = (up.update + noise).astype(up.update.dtype)
        else:  # model_replacement
            up.update = (up.update * self.boost).astype(up.update.dtype)

    def receive(self, up) -> None:
        if self.kind != "alie" or not self._attacks(up.client_id, up.key):
            return
        # The honest update goes to the collusion's sums, not to the round's sum; finalize puts
        # μ − z·σ in its place once every attacker of the round has been seen.
        u = np.asarray(up.update, dtype=np.float64)
        up.extras[ALIE_SUM], up.extras[ALIE_SQUARES] = u, u * u
        up.extras[ALIE_COUNT] = np.ones(1)
        up.extras[ALIE_WEIGHT] = np.full(1, float(up.weight))
        up.update, up.weight = np.zeros_like(up.update), 0.0

    def finalize(self, aggregate: Aggregate, round_: int, context) -> dict:
        """ALIE: μ − z·σ in place of each attacker's honest update (no columns of its own; the
        drivers mark attackers from :meth:`adversarial`)."""
        if ALIE_COUNT not in aggregate.extras:
            return {}
        total = aggregate.extras.pop(ALIE_SUM)
        squares = aggregate.extras.pop(ALIE_SQUARES)
        m = int(round(aggregate.extras.pop(ALIE_COUNT)[0]))
        weight = float(aggregate.extras.pop(ALIE_WEIGHT)[0])
        crafted = alie_update(total, squares, m, aggregate.count, self.z)
        if self.clip_norm is not None:
            crafted, _ = clip(crafted, self.clip_norm)
        if aggregate.keep_rows:
            for _ in range(m):
                aggregate.rows.append(crafted)
                aggregate.row_weights.append(weight / m)
                aggregate.row_index.append(None)
        else:
            mass = weight * crafted
            aggregate.total = mass if aggregate.total is None else aggregate.total + mass
            aggregate.weight += weight
        return {}


def alie_update(
    total: np.ndarray, squares: np.ndarray, m: int, n: int, z: float | None = None
) -> np.ndarray:
    """μ − z·σ from the attackers' Σu, Σu² and count m (σ the population standard deviation,
    ddof 0); ``n``: the round's clients, for z_max when ``z`` is None."""
    mean = total / m
    std = np.sqrt(np.maximum(squares / m - mean * mean, 0.0))
    return mean - (alie_z(n, m) if z is None else z) * std


def make_attack(cfg, *, num_classes: int | None = None) -> Attack | None:
    """The :class:`Attack` of a run's config (None without an ``attack`` section)."""
    a = cfg.attack
    if a is None:
        return None
    boost = a.boost
    if boost is None:  # Bagdasaryan et al.'s γ = n / η
        boost = cfg.clients_per_round / (cfg.strategy.server_lr or 1.0)
    clip_norm = cfg.privacy.clip_norm if cfg.privacy is not None else None
    return Attack(
        a,
        seed=cfg.seed,
        num_clients=cfg.clients.num_clients,
        boost=boost,
        clip_norm=clip_norm,
        num_classes=num_classes,
    )


def check_attack_support(cfg, workload, flat) -> None:
    """What an attack cannot be combined with, known once the workload is built."""
    a = cfg.attack
    if a is None:
        return
    if a.kind == "label_flip" and getattr(workload, "num_classes", None) is None:
        raise UserError(
            f"attack.kind label_flip flips class labels, but workload {workload.name} has none; "
            "use a classification workload (synthetic, ecom_intent, ecom_relation) or another "
            "attack.kind"
        )
    classes = getattr(workload, "num_classes", None)
    if a.target_class is not None and (classes is None or a.target_class >= classes):
        has = f"has {classes} classes" if classes is not None else "has no class labels"
        raise UserError(
            f"attack.target_class={a.target_class}, but workload {workload.name} {has}; choose "
            "a class index below that, or remove target_class"
        )
    if a.kind == "alie" and not flat.dense:
        raise UserError(
            f"attack.kind alie takes per-coordinate statistics of whole updates, but workload "
            f"{workload.name} uploads private parameters or row-sparse tables; use a dense "
            "workload or another attack.kind"
        )
