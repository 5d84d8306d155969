"""Byzantine-robust aggregation: coordinate-wise median, trimmed mean, Krum and Multi-Krum.

Each rule maps a stack of individual client updates U (one row Δ_k per client, shape [n, d]) to
one update, and the server steps x_{t+1} = x_t + η · rule(U). None of them is a sum, so the strategy's
aggregate is stacked (:meth:`RobustAggregation.new_aggregate`): workers return every Δ_k.

Median and trimmed mean. Yin, Chen, Ramchandran, Bartlett. "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018. Per coordinate j, med_j = median_k U_kj, and the
β-trimmed mean drops the ⌊βn⌋ largest and ⌊βn⌋ smallest U_kj and averages the rest, β ∈ [0, ½).

Krum and Multi-Krum. Blanchard, El Mhamdi, Guerraoui, Stainer. "Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017. With at most f Byzantine updates,

    score(i) = Σ_{j ∈ N_i} ‖U_i − U_j‖²,   N_i = the max(1, n − f − 2) updates nearest to U_i,

Krum returns the update with the lowest score and Multi-Krum the mean of the m updates with the
lowest scores (ties go to the lower row index): a plain mean as in the paper (``weighting:
uniform``, the default), or weighted by the chosen clients' sample counts as Flower's
``aggregate_krum`` does (``weighting: num_samples``). The paper's guarantee needs n > 2f + 2; with
fewer updates (a small cohort, or dropouts) the score still uses the single nearest neighbour, as
Flower does, so a round degrades gracefully instead of failing. That is what makes the check
vector "f = 1 over 0.2, 0.7, 1.0 selects 0.7" hold (scores 0.25, 0.09, 0.09; the tie goes first).

Client weights n_k steer none of the rules by default: a Byzantine client can report any n_k, so
letting it weigh in would undo the robustness — which is why Multi-Krum's ``num_samples``
weighting is an option for reproducing Flower, not the default (even there the n_k only weigh
the updates Krum already chose). Rows with weight 0 (clients that did no work) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedray.strategies.aggregate import Aggregate
from fedray.strategies.base import ServerState, Strategy

RULES = ("median", "trimmed_mean", "krum", "multi_krum")


def _as_update_matrix(updates: np.ndarray) -> np.ndarray:
    u = np.asarray(updates, dtype=np.float64)
    if u.ndim != 2 or u.shape[0] == 0:
        raise ValueError(f"updates must be a non-empty [n_clients, d] matrix, got shape {u.shape}")
    if not np.isfinite(u).all():
        raise ValueError("updates contain NaN or inf; drop non-finite client updates first")
    return u


def coordinate_median(updates: np.ndarray) -> np.ndarray:
    """Per-coordinate median of the rows of ``updates`` ([n, d] → [d])."""
    return np.median(_as_update_matrix(updates), axis=0)


def trimmed_mean(updates: np.ndarray, beta: float) -> np.ndarray:
    """Per-coordinate mean after dropping the ⌊βn⌋ largest and ⌊βn⌋ smallest values."""
    if not 0 <= beta < 0.5:
        raise ValueError(
            f"trimmed mean beta (fraction cut per side) must be in [0, 0.5), got {beta!r}"
        )
    u = _as_update_matrix(updates)
    cut = int(np.floor(beta * u.shape[0]))
    return np.sort(u, axis=0)[cut : u.shape[0] - cut].mean(axis=0)


def _check_krum(n: int, f: int) -> None:
    if isinstance(f, bool) or not isinstance(f, int | np.integer) or f < 0:
        raise ValueError(f"Krum f (Byzantine clients tolerated) must be an integer >= 0, got {f!r}")
    if n < 2:
        raise ValueError(f"Krum needs at least 2 updates to compare, got {n}")


def krum_scores(updates: np.ndarray, f: int) -> np.ndarray:
    """score(i): the summed squared distances from row i to its max(1, n − f − 2) nearest rows."""
    u = _as_update_matrix(updates)
    n = u.shape[0]
    _check_krum(n, f)
    # Differences rather than the Gram-matrix identity: no cancellation error between close
    # updates, and memory stays O(n · d).
    dist = np.full((n, n), np.inf)  # the diagonal stays inf, so a row never counts itself
    for i in range(n - 1):
        diff = u[i + 1 :] - u[i]
        dist[i, i + 1 :] = dist[i + 1 :, i] = np.einsum("kd,kd->k", diff, diff)
    return np.sort(dist, axis=1)[:, : max(1, n - f - 2)].sum(axis=1)


def krum(updates: np.ndarray, f: int) -> np.ndarray:
    """The row of ``updates`` with the lowest Krum score."""
    u = _as_update_matrix(updates)
    return u[int(np.argmin(krum_scores(u, f)))].copy()


def multi_krum(
    updates: np.ndarray, f: int, m: int | None = None, weights: np.ndarray | None = None
) -> np.ndarray:
    """Mean of the m rows with the lowest Krum scores (weighted by ``weights`` if given, e.g.
    sample counts); m = None means max(1, n − f)."""
    u = _as_update_matrix(updates)
    n = u.shape[0]
    scores = krum_scores(u, f)
    m = max(1, n - f) if m is None else m
    if isinstance(m, bool) or not isinstance(m, int | np.integer) or not 1 <= m <= n:
        raise ValueError(
            f"Multi-Krum m (updates averaged) must be an integer in [1, n={n}], got {m!r}"
        )
    chosen = np.sort(np.argsort(scores, kind="stable")[:m])  # fixed summation order
    if weights is None:
        return u[chosen].mean(axis=0)
    return np.average(u[chosen], axis=0, weights=np.asarray(weights, dtype=np.float64)[chosen])


@dataclass(frozen=True)
class RobustAggregation(Strategy):
    """x + η · rule(U) over individual client updates; see the module docstring for the rules."""

    rule: Literal["median", "trimmed_mean", "krum", "multi_krum"]
    server_lr: float = 1.0  # η
    beta: float | None = None  # trimmed_mean: fraction cut per side, in [0, 0.5)
    f: int | None = None  # krum, multi_krum: Byzantine clients tolerated
    m: int | None = None  # multi_krum: updates averaged; None means n − f
    weighting: Literal["uniform", "num_samples"] | None = None  # multi_krum; None: uniform

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"robust rule must be one of {RULES}, got {self.rule!r}")
        if not self.server_lr > 0:
            raise ValueError(f"robust server_lr must be > 0, got {self.server_lr!r}")
        takes = {
            "beta": self.rule == "trimmed_mean",
            "f": self.rule in ("krum", "multi_krum"),
            "m": self.rule == "multi_krum",
            "weighting": self.rule == "multi_krum",  # Krum returns one row: nothing to weigh
        }
        for key, used in takes.items():
            if not used and getattr(self, key) is not None:
                raise ValueError(f"option {key} is not used by rule={self.rule!r}; leave it out")
        if self.rule == "trimmed_mean" and self.beta is None:
            raise ValueError("rule='trimmed_mean' needs beta, the fraction cut per side (e.g. 0.1)")
        if takes["f"] and self.f is None:
            raise ValueError(
                f"rule={self.rule!r} needs f, the number of Byzantine clients tolerated"
            )
        if self.beta is not None and not 0 <= self.beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {self.beta!r}")
        if self.f is not None and (
            isinstance(self.f, bool) or not isinstance(self.f, int) or self.f < 0
        ):
            raise ValueError(f"f must be an integer >= 0, got {self.f!r}")
        if self.weighting not in (None, "uniform", "num_samples"):
            raise ValueError(f"weighting must be uniform or num_samples, got {self.weighting!r}")
        if self.m is not None and (
            isinstance(self.m, bool) or not isinstance(self.m, int) or self.m < 1
        ):
            raise ValueError(f"m must be an integer >= 1, got {self.m!r}")

    def combine(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """rule(U) for a stack of individual updates ([n, d] → [d], float64); ``weights`` (the
        clients' sample counts) matter only to Multi-Krum with ``weighting: num_samples``."""
        if self.rule == "median":
            return coordinate_median(updates)
        if self.rule == "trimmed_mean":
            return trimmed_mean(updates, self.beta)
        if self.rule == "krum":
            return krum(updates, self.f)
        by_samples = self.weighting == "num_samples"
        return multi_krum(updates, self.f, self.m, weights if by_samples else None)

    def new_aggregate(self) -> Aggregate:
        return Aggregate.stacked()

    def enough(self, n: int) -> bool:
        """Whether the rule can combine ``n`` updates. When dropouts leave too few (Krum needs
        two to compare, Multi-Krum at least m) the step keeps the model rather than failing."""
        if self.rule in ("krum", "multi_krum") and n < 2:
            return False
        return not (self.rule == "multi_krum" and self.m is not None and self.m > n)

    def server_step(self, state: ServerState, aggregate: Aggregate) -> ServerState:
        if not aggregate.rows:
            return state
        updates, weights = aggregate.matrix()
        if not self.enough(int((weights > 0).sum())):
            return state
        return self.aggregate(state, updates, weights)

    def aggregate(
        self, state: ServerState, updates: np.ndarray, weights: np.ndarray
    ) -> ServerState:
        """x + η · rule(rows of ``updates`` whose weight is > 0); unchanged if there are none."""
        updates = np.asarray(updates)
        weights = np.asarray(weights, dtype=np.float64)
        if updates.ndim != 2 or weights.shape != (updates.shape[0],):
            raise ValueError(
                f"need updates [n, d] and weights [n], got shapes {updates.shape} and {weights.shape}"
            )
        if updates.shape[1] != state.params.size:
            raise ValueError(
                f"updates have {updates.shape[1]} columns, the model has {state.params.size}"
            )
        reported = weights > 0
        if not reported.any():
            return state  # nobody reported: the model stays, the version does not advance
        step = self.combine(updates[reported], weights[reported])
        params = (state.params.astype(np.float64) + self.server_lr * step).astype(np.float32)
        return ServerState(params=params, version=state.version + 1)
