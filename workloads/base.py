"""The ``Workload`` interface: what the simulator needs from a federated task.

A workload owns its data (a pure function of the seed and a client id), its model and its local
training/evaluation. The engine owns everything else — selection, time, aggregation, I/O — so a
workload never sees Ray, clocks or files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from fedray.training import TrainStats, local_sgd


@dataclass(frozen=True)
class ClientData:
    """One client's tensors: a train split used for local training and a held-out test split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(
            t.element_size() * t.nelement()
            for t in (self.x_train, self.y_train, self.x_test, self.y_test)
        )


class Workload(ABC):
    """A federated task. Subclasses are built from the ``workload`` config section and the seed."""

    name: str
    # Extra metrics ``evaluate`` returns besides loss and accuracy; each becomes an ``eval_<name>``
    # column of rounds.parquet (computed on the eval clients' test splits).
    metric_names: tuple[str, ...] = ()

    def client_statistics(self) -> dict[str, list] | None:
        """Per-client sizes and label counts as columns (written to ``partition.parquet``), or
        None when the partition is not materialised (e.g. data generated per client id)."""
        return None

    @abstractmethod
    def num_train_samples(self, client_ids: np.ndarray) -> np.ndarray:
        """Train-split sizes of the given clients, cheaply, without generating their data.
        The driver needs them for the cost model and the aggregation weights."""

    @abstractmethod
    def client_data(self, client_id: int) -> ClientData:
        """The client's data; deterministic in (seed, client id)."""

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """A fresh model. Initial global weights come from the driver, not from this call."""

    def local_train(
        self,
        model: torch.nn.Module,
        data: ClientData,
        *,
        epochs: int,
        lr: float,
        batch_size: int,
        mu: float,
        rng: np.random.Generator,
        correction: list[torch.Tensor] | None = None,
    ) -> TrainStats:
        """Train ``model`` in place on the client's train split. ``correction`` (one tensor per
        parameter) is added to every gradient step — SCAFFOLD's c − c_k.

        The default is :func:`fedray.training.local_sgd` (cross-entropy, FedProx's μ) on
        ``(x_train, y_train)``; override it for another local algorithm or loss."""
        return local_sgd(
            model,
            data.x_train,
            data.y_train,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            mu=mu,
            rng=rng,
            correction=correction,
        )

    def vectorizable(self) -> bool:
        """Whether ``local_train`` is exactly :func:`fedray.training.local_sgd` with the
        cross-entropy loss, so the engine may train blocks of clients batched
        (:mod:`fedray.execution.batched`, ``execution.vectorize``). Off unless a workload says so."""
        return False

    @abstractmethod
    def evaluate(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> dict[str, float]:
        """Metrics of ``model`` on stacked examples; must include ``loss`` and ``accuracy``."""
