"""FedBuff: buffered asynchronous aggregation with any server strategy as the step.

Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba. "Federated Learning with Buffered
Asynchronous Aggregation", AISTATS 2022, Algorithm 1. Client updates Δ_i = x_i − x_{τ_i} arrive
one at a time; the server accumulates them weighted by their staleness,

    Δ̄ ← Δ̄ + s(τ_i) · Δ_i,          s(τ) = 1/sqrt(1 + τ) by default,

and once K updates are buffered takes a server step on Δ̄ / K (``weighting: uniform``, the
paper's rule). fedray's default, ``weighting: samples``, weights each update by its client's
sample count n_i as sync FedAvg does — Δ̄ = Σ n_i s(τ_i) Δ_i / Σ n_i — which keeps the many
small, fast clients that dominate asynchronous arrivals from outvoting the large, slow ones. Either
way the step is the wrapped strategy's ``server_step`` on the buffer: with FedAvg
(x ← x + η_g Δ̄/K) as in the paper, or FedAvgM / FedAdam / FedYogi / FedAdagrad on the same
pseudo-gradient; a robust rule (median, Krum, ...) gets the K damped rows (its aggregate is
stacked). The buffer is the inner strategy's :class:`~fedray.strategies.aggregate.Aggregate`, so
the server holds O(model) memory for linear steps. K = 1 with FedAvg is plain asynchronous SGD on
deltas: x ← x + η_g s(τ) Δ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedray.strategies.aggregate import Aggregate, ClientMessage
from fedray.strategies.base import ClientTask, LocalResult, Strategy
from fedray.strategies.staleness import StalenessWeight


@dataclass(frozen=True)
class FedBuff(Strategy):
    inner: Strategy
    buffer_size: int = 10  # K
    staleness: StalenessWeight = field(default_factory=StalenessWeight)
    weighting: str = "samples"  # or "uniform" (Nguyen et al.)

    def __post_init__(self):
        if self.weighting not in ("samples", "uniform"):
            raise ValueError(
                f"FedBuff weighting must be samples or uniform, got {self.weighting!r}"
            )
        if self.buffer_size < 1:
            raise ValueError(f"FedBuff buffer size K must be >= 1, got {self.buffer_size}")

    # The client side and the server state are the wrapped strategy's.
    def init(self, params: np.ndarray):
        return self.inner.init(params)

    def downlink(self, state) -> dict[str, np.ndarray]:
        return self.inner.downlink(state)

    def client_plan(self, received: Mapping, client_state: Mapping) -> ClientTask:
        return self.inner.client_plan(received, client_state)

    def client_update(self, task: ClientTask, local: LocalResult) -> ClientMessage:
        return self.inner.client_update(task, local)

    def new_aggregate(self) -> Aggregate:
        return self.inner.new_aggregate()

    def arrival(
        self,
        aggregate: Aggregate,
        update: np.ndarray,
        num_samples: int,
        staleness: int,
        start: np.ndarray,
        current: np.ndarray,
        index: np.ndarray | None = None,
    ) -> None:
        """Buffer one update, damped by s(τ) and weighted by n_i (or 1); ``index``: the
        coordinates a row-sparse update carries."""
        mass = float(num_samples) if self.weighting == "samples" else 1.0
        aggregate.add(update, mass, scale=float(self.staleness(staleness)), index=index)

    def server_step(self, state, aggregate: Aggregate):
        return self.inner.server_step(state, aggregate)
