"""FedAsync: mix each arriving client model into the global model, damped by its staleness.

Xie, Koyejo, Gupta. "Asynchronous Federated Optimization", OPT workshop 2020 (arXiv:1903.03934),
Algorithm 1. When a client that started from version τ of the model returns its local model
x_new = x_τ + Δ at server version t (staleness t − τ), the server takes

    α_t = α · s(t − τ)
    x_t = (1 − α_t) · x_{t−1} + α_t · x_new  =  x_{t−1} + α · s(t − τ) · (x_new − x_{t−1})

with s one of the functions in :mod:`fedray.strategies.staleness`. In the contract's terms
(:mod:`fedray.strategies.base`) an arrival is the message u = x_new − x_{t−1} damped by s(τ)
(:meth:`FedAsync.arrival`), a buffer of one, and the server step is x + α · u. Check: α = 0.9,
polynomial a = 1, staleness 2 gives α_t = 0.3, and global 10 mixed with client 2 gives 7.6.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedray.strategies.aggregate import Aggregate
from fedray.strategies.base import ServerState, Strategy, mean_step
from fedray.strategies.staleness import StalenessWeight


@dataclass(frozen=True)
class FedAsync(Strategy):
    alpha: float = 0.6
    staleness: StalenessWeight = field(default_factory=StalenessWeight)
    buffer_size: int = 1  # every arrival is a server step

    def __post_init__(self):
        if not 0 < self.alpha <= 1:
            raise ValueError(f"FedAsync alpha must be in (0, 1], got {self.alpha!r}")
        if self.buffer_size != 1:
            raise ValueError("FedAsync applies every update as it arrives: buffer_size must be 1")

    def mixing_weight(self, staleness: int) -> float:
        return self.alpha * float(self.staleness(staleness))

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
        """Add the client model x_τ + Δ as u = x_τ + Δ − x_t, damped by s(τ). With a row-sparse
        upload (``index``) only the coordinates it carried are mixed: untouched rows keep the
        current model's values instead of being pulled back to version τ's."""
        if index is None:
            client_model = start + update
            u = client_model.astype(np.float64) - current.astype(np.float64)
        else:
            u = np.zeros(current.shape, dtype=np.float64)
            client_model = start[index] + update[index]
            u[index] = client_model.astype(np.float64) - current[index].astype(np.float64)
        aggregate.add(u, 1.0, scale=float(self.staleness(staleness)))

    def server_step(self, state: ServerState, aggregate: Aggregate) -> ServerState:
        return mean_step(state, aggregate, self.alpha)
