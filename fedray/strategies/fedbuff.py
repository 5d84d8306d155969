"""FedBuff: buffered asynchronous aggregation with any server optimizer as the step.

Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba. "Federated Learning with Buffered
Asynchronous Aggregation", AISTATS 2022, Algorithm 1. Client updates Δ_i = x_i − x_{τ_i} arrive
one at a time; the server accumulates them weighted by their staleness,

    Δ̄ ← Δ̄ + s(τ_i) · Δ_i,          s(τ) = 1/sqrt(1 + τ) by default,

and once K updates are buffered takes a server step on Δ̄ / K (``weighting: uniform``, the
paper's rule). fedray's default, ``weighting: samples``, weights each update by its client's
sample count n_i as sync FedAvg does — Δ̄ = Σ n_i s(τ_i) Δ_i / Σ n_i — which keeps the many
small, fast clients that dominate asynchronous arrivals from outvoting the large, slow ones. Either
way the step is taken — here with any of fedray's
server strategies: with FedAvg (x ← x + η_g Δ̄/K) as in the paper, or FedAvgM / FedAdam / FedYogi /
FedAdagrad on the same pseudo-gradient. The buffer is a running sum, so the server holds
O(model) memory for linear steps; a robust rule (median, Krum, ...) needs the K rows themselves.
K = 1 with FedAvg is plain asynchronous SGD on deltas: x ← x + η_g s(τ) Δ.

The average is uniform over the K updates, as in the paper, not weighted by sample counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedray.strategies.staleness import StalenessWeight


@dataclass
class UpdateBuffer:
    """K staleness-weighted updates waiting for the next server step (mutable, driver-owned)."""

    size: int
    staleness: StalenessWeight = field(default_factory=StalenessWeight)
    keep_rows: bool = False  # robust steps need the individual updates
    weighting: str = "samples"  # or "uniform" (Nguyen et al.)
    total: np.ndarray | None = None
    rows: list[np.ndarray] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    stalenesses: list[int] = field(default_factory=list)
    mass: float = 0.0  # Σ n_i (samples) or K (uniform)
    # Row-sparse uploads: Σ m_i over the updates that carried each coordinate, so the step can
    # average each row over the clients that sent it (None while every update was dense).
    coverage: np.ndarray | None = None

    def __post_init__(self):
        if self.weighting not in ("samples", "uniform"):
            raise ValueError(
                f"FedBuff weighting must be samples or uniform, got {self.weighting!r}"
            )
        if self.size < 1:
            raise ValueError(f"FedBuff buffer size K must be >= 1, got {self.size}")

    def add(
        self,
        update: np.ndarray,
        staleness: int,
        num_samples: int = 1,
        index: np.ndarray | None = None,
    ) -> None:
        """Buffer one update; ``index``: the coordinates it carries, when row-sparse."""
        weight = float(self.staleness(staleness))
        if self.keep_rows:
            self.rows.append(np.asarray(update, dtype=np.float64) * weight)
        else:
            mass = float(num_samples) if self.weighting == "samples" else 1.0
            weighted = np.asarray(update, dtype=np.float64) * (weight * mass)
            self.total = weighted if self.total is None else self.total + weighted
            self.mass += mass
            if index is not None:
                if self.coverage is None:
                    self.coverage = np.zeros(len(weighted), dtype=np.float64)
                self.coverage[index] += mass
        self.weights.append(weight)
        self.stalenesses.append(int(staleness))

    @property
    def full(self) -> bool:
        return len(self.weights) >= self.size

    def __len__(self) -> int:
        return len(self.weights)

    def drain(self) -> tuple[np.ndarray, float] | tuple[np.ndarray, np.ndarray]:
        """Empty the buffer. Linear steps get (Σ m_i s(τ_i) Δ_i, Σ m_i) with m_i = n_i or 1,
        ready for ``strategy.apply``; robust steps get the [K, d] matrix of weighted rows and unit
        weights (robust rules ignore client weights)."""
        if self.keep_rows:
            out = (np.stack(self.rows), np.ones(len(self.rows)))
        else:
            out = (self.total, self.mass)
        self.total, self.rows, self.weights, self.stalenesses = None, [], [], []
        self.mass = 0.0
        self.coverage = None
        return out

    def drain_with_coverage(self):
        """:meth:`drain` plus the per-coordinate mass of row-sparse updates (or None)."""
        coverage = self.coverage
        return (*self.drain(), coverage)
