"""FedAvg with a server learning rate.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas. "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017. With client updates Δ_k = w_k − w^t and sample
counts n_k,

    w^{t+1} = w^t + η_s · Σ_k n_k Δ_k / Σ_k n_k,

which for η_s = 1 is the paper's weighted average of client models. The sum is linear, so workers
pre-sum n_k Δ_k into a linear :class:`~fedray.strategies.aggregate.Aggregate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedray.strategies.aggregate import Aggregate
from fedray.strategies.base import ServerState, Strategy, mean_step


@dataclass(frozen=True)
class FedAvg(Strategy):
    server_lr: float = 1.0

    def server_step(self, state: ServerState, aggregate: Aggregate) -> ServerState:
        return mean_step(state, aggregate, self.server_lr)
