"""FedAvgM: FedAvg with server momentum.

Hsu, Qi, Brown. "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification", arXiv:1909.06335, 2019. The server keeps a velocity v and applies the weighted
mean client update Δ_t = Σ_k n_k Δ_k / Σ_k n_k as a heavy-ball step:

    v_t     = β · v_{t−1} + Δ_t,        v_{−1} = 0
    x_{t+1} = x_t + η · v_t.

The paper's algorithm writes v ← βv + Δw, w ← w − v with Δw the weighted mean of the
global-minus-client differences; negating Δ gives the form above, and η (a server learning rate,
1 in the paper) scales the step. With β = 0 and η = 1 this is FedAvg; momentum multiplies the
effective step size by about 1 / (1 − β). The mean is linear, so workers pre-sum n_k Δ_k and
the server sees only their sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.strategies.aggregate import Aggregate
from fedray.strategies.base import Strategy


@dataclass(frozen=True)
class MomentumState:
    params: np.ndarray  # flat float32 model parameters
    velocity: np.ndarray  # float64, same shape as params
    version: int = 0  # number of server updates applied


@dataclass(frozen=True)
class FedAvgM(Strategy):
    server_lr: float = 1.0  # η
    momentum: float = 0.9  # β

    def __post_init__(self):
        if not self.server_lr > 0:
            raise ValueError(f"FedAvgM server_lr must be > 0, got {self.server_lr!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"FedAvgM momentum must be in [0, 1), got {self.momentum!r}")

    def init(self, params: np.ndarray) -> MomentumState:
        params = np.asarray(params, dtype=np.float32).copy()
        return MomentumState(params=params, velocity=np.zeros(params.shape), version=0)

    def server_step(self, state: MomentumState, aggregate: Aggregate) -> MomentumState:
        if aggregate.empty:
            return state  # nobody reported: model and velocity stay, the version does not advance
        velocity = self.momentum * state.velocity + aggregate.mean()
        params = state.params.astype(np.float64) + self.server_lr * velocity
        return MomentumState(
            params=params.astype(np.float32), velocity=velocity, version=state.version + 1
        )
