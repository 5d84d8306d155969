"""FedAvg with a server learning rate.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas. "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017. With client updates Δ_k = w_k − w^t and sample
counts n_k,

    w^{t+1} = w^t + η_s · Σ_k n_k Δ_k / Σ_k n_k,

which for η_s = 1 is the paper's weighted average of client models. The sum is linear, so workers
pre-sum n_k Δ_k and the server sees only (Σ n_k Δ_k, Σ n_k).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedray.strategies.base import ServerState, weighted_mean_step


@dataclass(frozen=True)
class FedAvg:
    server_lr: float = 1.0
    client_mu: float = 0.0  # no proximal term on clients
    linear: bool = True  # workers may pre-sum updates

    def init(self, params: np.ndarray) -> ServerState:
        return ServerState(params=np.asarray(params, dtype=np.float32).copy(), version=0)

    def apply(self, state: ServerState, update_sum: np.ndarray, weight_sum: float) -> ServerState:
        if weight_sum <= 0:
            return state  # nobody reported: the model stays, the version does not advance
        params = weighted_mean_step(state.params, update_sum, weight_sum, self.server_lr)
        return replace(state, params=params, version=state.version + 1)
