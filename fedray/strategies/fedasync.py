"""FedAsync: mix each arriving client model into the global model, damped by its staleness.

Xie, Koyejo, Gupta. "Asynchronous Federated Optimization", OPT workshop 2020 (arXiv:1903.03934),
Algorithm 1. When a client that started from version τ of the model returns its local model
x_new at server version t (staleness t − τ), the server takes

    α_t = α · s(t − τ)
    x_t = (1 − α_t) · x_{t−1} + α_t · x_new

with s one of the functions in :mod:`fedray.strategies.staleness`. Check: α = 0.9, polynomial
a = 1, staleness 2 gives α_t = 0.3, and global 10 mixed with client 2 gives 7.6.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from fedray.strategies.base import ServerState
from fedray.strategies.staleness import StalenessWeight


@dataclass(frozen=True)
class FedAsync:
    alpha: float = 0.6
    staleness: StalenessWeight = field(default_factory=StalenessWeight)
    client_mu: float = 0.0
    linear: bool = False  # updates are applied one at a time, never summed

    def __post_init__(self):
        if not 0 < self.alpha <= 1:
            raise ValueError(f"FedAsync alpha must be in (0, 1], got {self.alpha!r}")

    def init(self, params: np.ndarray) -> ServerState:
        return ServerState(params=np.asarray(params, dtype=np.float32).copy(), version=0)

    def mixing_weight(self, staleness: int) -> float:
        return self.alpha * float(self.staleness(staleness))

    def mix(self, state: ServerState, client_params: np.ndarray, staleness: int) -> ServerState:
        """x ← (1 − α_t) x + α_t x_client, in float64."""
        alpha_t = self.mixing_weight(staleness)
        x = state.params.astype(np.float64)
        mixed = (1.0 - alpha_t) * x + alpha_t * np.asarray(client_params, dtype=np.float64)
        return replace(state, params=mixed.astype(np.float32), version=state.version + 1)
