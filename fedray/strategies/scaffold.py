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
sums are linear, so workers pre-sum them (Δc_k as the aggregate's ``control`` extra). The
per-client variate c_k is client state (``scaffold.control`` in the client-state store,
:class:`fedray.clients.state_store.ClientStateStore`), not server state: :meth:`Scaffold.client_plan`
reads it and :meth:`Scaffold.client_update` returns its successor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedray.strategies.aggregate import Aggregate, ClientMessage
from fedray.strategies.base import ClientTask, LocalResult, Strategy, step_params

CONTROL = "scaffold.control"  # the client-state entry holding c_k


@dataclass(frozen=True)
class ScaffoldState:
    params: np.ndarray  # flat float32 model parameters x
    control: np.ndarray  # server control variate c, float64, same shape as params
    version: int = 0  # number of server updates applied


@dataclass(frozen=True)
class Scaffold(Strategy):
    num_clients: int = 1  # N, the registered population: each Δc_k counts 1/N
    server_lr: float = 1.0  # η_g

    def __post_init__(self):
        if not self.server_lr > 0:
            raise ValueError(f"SCAFFOLD server_lr must be > 0, got {self.server_lr!r}")
        if not self.num_clients >= 1:
            raise ValueError(f"SCAFFOLD num_clients must be >= 1, got {self.num_clients!r}")

    def init(self, params: np.ndarray) -> ScaffoldState:
        params = np.asarray(params, dtype=np.float32).copy()
        return ScaffoldState(params=params, control=np.zeros(params.shape), version=0)

    def downlink(self, state: ScaffoldState) -> dict[str, np.ndarray]:
        return {"control": state.control.astype(np.float32)}  # c goes down with x

    def client_plan(self, received: Mapping, client_state: Mapping) -> ClientTask:
        control = np.asarray(received["control"], dtype=np.float32)
        c_k = client_state.get(CONTROL)
        c_k = np.zeros_like(control) if c_k is None else c_k
        return ClientTask(correction=control - c_k, context={"c": control, "c_k": c_k})

    def client_update(self, task: ClientTask, local: LocalResult) -> ClientMessage:
        # Option II: c_k⁺ = c_k − c + (x − y_k) / (K η_l). The client keeps the exact c_k⁺; the
        # server only sees the change Δc_k, through the uplink codec.
        c, c_k = task.context["c"], task.context["c_k"]
        scale = 1.0 / (max(local.steps, 1) * local.lr)
        c_new = (c_k - c - local.update * scale).astype(np.float32)
        return ClientMessage(
            update=local.update,
            weight=local.num_samples,
            extras={"control": c_new - c_k},
            state={CONTROL: c_new},
        )

    def server_step(self, state: ScaffoldState, aggregate: Aggregate) -> ScaffoldState:
        """x ← x + η_g Σ n_k Δy_k / Σ n_k and c ← c + Σ Δc_k / N over the clients that reported."""
        if aggregate.empty:
            return state  # nobody reported: model and variate stay, the version does not advance
        params = step_params(state.params, aggregate.mean(), self.server_lr)
        control_sum = aggregate.extras.get("control", 0.0)
        control = state.control + np.asarray(control_sum, dtype=np.float64) / self.num_clients
        return ScaffoldState(params=params, control=control, version=state.version + 1)
