"""FedProx.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in Heterogeneous Networks",
MLSys 2020. Clients minimise the proximal objective

    h_k(w; w^t) = F_k(w) + μ/2 · ‖w − w^t‖²

(see :func:`fedray.training.local_sgd`), stragglers contribute partial work (the ``partial``
deadline policy), and the server aggregates exactly as FedAvg.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedray.strategies.aggregate import Aggregate
from fedray.strategies.base import ClientTask, ServerState, Strategy, mean_step


@dataclass(frozen=True)
class FedProx(Strategy):
    mu: float
    server_lr: float = 1.0

    def client_plan(self, received: Mapping, client_state: Mapping) -> ClientTask:
        return ClientTask(mu=self.mu)

    def server_step(self, state: ServerState, aggregate: Aggregate) -> ServerState:
        return mean_step(state, aggregate, self.server_lr)
