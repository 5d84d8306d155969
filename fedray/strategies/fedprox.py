"""FedProx.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in Heterogeneous Networks",
MLSys 2020. Clients minimise the proximal objective

    h_k(w; w^t) = F_k(w) + μ/2 · ‖w − w^t‖²

(see :func:`fedray.training.local_sgd`), stragglers contribute partial work (the ``partial``
deadline policy), and the server aggregates exactly as FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.strategies.base import ServerState
from fedray.strategies.fedavg import FedAvg


@dataclass(frozen=True)
class FedProx:
    mu: float
    server_lr: float = 1.0
    linear: bool = True

    @property
    def client_mu(self) -> float:
        return self.mu

    def init(self, params: np.ndarray) -> ServerState:
        return FedAvg(self.server_lr).init(params)

    def apply(self, state: ServerState, update_sum: np.ndarray, weight_sum: float) -> ServerState:
        return FedAvg(self.server_lr).apply(state, update_sum, weight_sum)
