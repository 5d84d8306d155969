"""The strategy contract: plain maths over explicit state, no Ray, no files, no clocks.

A strategy is five functions (fedjax's ``init/apply`` and pfl-research's algorithm/aggregator
split are the models; see shared/STYLE.md):

    init(params) -> state                                   the server's state
    downlink(state) -> {name: array}                        what clients receive besides the model
    client_plan(received, client_state) -> ClientTask       how a client trains   (on the worker)
    client_update(task, local) -> ClientMessage             what it uploads       (on the worker)
    new_aggregate() -> Aggregate                            a linear sum, or stacked rows
    server_step(state, aggregate) -> state                  the server update     (on the driver)

The driver owns the loop, scheduling and I/O, so one strategy serves the sync and async drivers.
Everything a client remembers between tasks (control variates, ...) is named in
``ClientMessage.state`` and lives in the driver's client-state store, never in the server state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from fedray.strategies.aggregate import Aggregate, ClientMessage


@dataclass(frozen=True)
class ServerState:
    params: np.ndarray  # flat float32 model parameters
    version: int = 0  # number of server updates applied


@dataclass(frozen=True)
class ClientTask:
    """What a client receives and how it trains: the proximal coefficient μ of its local
    objective, a correction added to every local gradient (SCAFFOLD's c − c_k), and whatever
    ``client_update`` needs back (``context``)."""

    mu: float = 0.0
    correction: np.ndarray | None = None
    context: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalResult:
    """The outcome of local training: Δ = w_k − w (float32), the client's sample count, the SGD
    steps taken and their learning rate."""

    update: np.ndarray
    num_samples: int
    steps: int
    lr: float


def mean_update(update_sum: np.ndarray, weight_sum: float) -> np.ndarray:
    """Δ = (Σ_k n_k Δ_k) / (Σ_k n_k), in float64: the averaged pseudo-gradient every linear
    strategy starts from."""
    return np.asarray(update_sum, dtype=np.float64) / float(weight_sum)


def step_params(params: np.ndarray, step: np.ndarray, server_lr: float) -> np.ndarray:
    """x + η_s · step, computed in float64 and returned as float32."""
    return (params.astype(np.float64) + server_lr * step).astype(np.float32)


class Strategy:
    """Defaults shared by the strategies: clients train plainly (μ = 0, no correction), upload
    their update weighted by their sample count, and the server sums (a linear aggregate)."""

    def init(self, params: np.ndarray) -> ServerState:
        return ServerState(params=np.asarray(params, dtype=np.float32).copy(), version=0)

    def downlink(self, state) -> dict[str, np.ndarray]:
        return {}

    def client_plan(self, received: Mapping, client_state: Mapping) -> ClientTask:
        return ClientTask()

    def client_update(self, task: ClientTask, local: LocalResult) -> ClientMessage:
        return ClientMessage(update=local.update, weight=local.num_samples)

    def new_aggregate(self) -> Aggregate:
        return Aggregate.linear()

    def server_step(self, state, aggregate: Aggregate):
        raise NotImplementedError


def mean_step(state, aggregate: Aggregate, server_lr: float):
    """x + η_s · mean(aggregate), the version advanced; the state unchanged if nobody reported
    (the version does not advance either)."""
    if aggregate.empty:
        return state
    params = step_params(state.params, aggregate.mean(), server_lr)
    return replace(state, params=params, version=state.version + 1)
