"""SCAFFOLD: stochastic controlled averaging.

Karimireddy, Kale, Mohri, Reddi, Stich, Suresh. "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", ICML 2020, Algorithm 1 with option II. The server keeps the model x and a
control variate c; client k keeps its own variate c_k, zero until its first round. A sampled
client starts from y_k = x and takes K_k local steps of

    y_k ← y_k − η_l (g_k(y_k) − c_k + c)

(:func:`fedray.training.local_sgd` with the correction c − c_k), then sets (option II)

    c_k⁺ = c_k − c + (x − y_k) / (K_k η_l)

and uploads Δy_k = y_k − x and Δc_k = c_k⁺ − c_k, both through the uplink codec (so a client
uploads two payloads, and downloads x and c). The server takes

    x ← x + η_g · Σ_k n_k Δy_k / Σ_k n_k
    c ← c + (1/N) · Σ_{k∈S} Δc_k            (the paper's (|S|/N) · mean_k Δc_k)

Choice: Δy is averaged with sample weights n_k, as in every other fedray strategy, so that with
c = c_k = 0 SCAFFOLD is exactly FedAvg; the paper's uniform mean is the case of equal n_k. The
control variate is the mean over all N clients, so each participant's change counts 1/N. Both
sums are linear, so workers pre-sum them. The per-client variates c_k live in the driver's
client-state store (:class:`fedray.clients.state_store.ClientStateStore`), not in this state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.strategies.base import weighted_mean_step


@dataclass(frozen=True)
class ScaffoldState:
    params: np.ndarray  # flat float32 model parameters x
    control: np.ndarray  # server control variate c, float64, same shape as params
    version: int = 0  # number of server updates applied


@dataclass(frozen=True)
class Scaffold:
    server_lr: float = 1.0  # η_g
    client_mu: float = 0.0  # no proximal term on clients
    linear: bool = True  # workers may pre-sum updates
    control_variates: bool = True  # the driver keeps c_k per client and ships c and Δc_k

    def __post_init__(self):
        if not self.server_lr > 0:
            raise ValueError(f"SCAFFOLD server_lr must be > 0, got {self.server_lr!r}")

    def init(self, params: np.ndarray) -> ScaffoldState:
        params = np.asarray(params, dtype=np.float32).copy()
        return ScaffoldState(params=params, control=np.zeros(params.shape), version=0)

    def apply(
        self,
        state: ScaffoldState,
        update_sum: np.ndarray,
        weight_sum: float,
        *,
        control_sum: np.ndarray,
        num_clients: int,
    ) -> ScaffoldState:
        """``update_sum`` = Σ n_k Δy_k, ``weight_sum`` = Σ n_k, ``control_sum`` = Σ Δc_k over the
        clients that reported; ``num_clients`` = N, the registered population."""
        if weight_sum <= 0:
            return state  # nobody reported: model and variate stay, the version does not advance
        params = weighted_mean_step(state.params, update_sum, weight_sum, self.server_lr)
        control = state.control + np.asarray(control_sum, dtype=np.float64) / num_clients
        return ScaffoldState(params=params, control=control, version=state.version + 1)
