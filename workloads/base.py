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
class ParameterLayout:
    """Which of a workload's parameters are not plain dense, federated tensors.

    Names are those of ``model.named_parameters()``.

    * ``private``: parameters each client keeps for itself — a recommender's user embedding,
      FedE's local relation embeddings. They are loaded from the client's state before its local
      training and stored back after it, never uploaded and never aggregated; the global model's
      values for them only seed clients that have no state yet (see ``init_private``).
    * ``row_tables``: embedding tables ``[rows, width]`` that all have the same number of rows and
      are indexed by one row id (item id, entity id). A client uploads only the rows that
      ``client_rows`` names — row ids plus those rows' values — and the server averages each row
      over the clients that sent it (FedE's per-entity aggregation, Chen et al. 2021, "FedE:
      Embedding Knowledge Graphs in Federated Setting", §3.2), so a rarely seen row is not
      shrunk towards zero by the clients that never touched it.
    * ``download_rows``: a client also *downloads* only its rows (and the shared parameters), as
      FedE's server sends each client the embeddings of its own entities. Off for a recommender,
      whose device ranks the whole catalogue and so downloads every item row.
    """

    private: tuple[str, ...] = ()
    row_tables: tuple[str, ...] = ()
    download_rows: bool = False

    @property
    def dense(self) -> bool:
        return not self.private and not self.row_tables


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
    # Number of classes of a classification task whose y_train holds class indices (label
    # flipping attacks need it); None for tasks without class labels.
    num_classes: int | None = None

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

    # ------------------------------------------------------------------ parameter layout

    def parameter_layout(self) -> ParameterLayout:
        """Private parameters and row-sparse tables (:class:`ParameterLayout`); default: every
        parameter is dense and federated."""
        return ParameterLayout()

    def client_rows(self, client_id: int, data: ClientData) -> np.ndarray:
        """Sorted unique row ids of the ``row_tables`` that this client's local training may
        change; its upload carries exactly these rows. Called on the worker with the client's
        data. Only for layouts with row tables."""
        raise NotImplementedError(f"{self.name} declares row tables but not client_rows")

    def num_client_rows(self, client_ids: np.ndarray) -> np.ndarray:
        """``len(client_rows(c, ...))`` for each client, computed on the driver before training
        (upload sizes feed the cost model at dispatch); the engine checks it against the
        workers' real row sets. Only for layouts with row tables."""
        raise NotImplementedError(f"{self.name} declares row tables but not num_client_rows")

    def init_private(self, client_id: int, initial: np.ndarray) -> np.ndarray:
        """The client's private parameters before its first local training: one flat float32
        vector over the ``private`` parameters in model order. ``initial`` holds the global
        model's initial values for them; the default gives every client those."""
        return initial

    def evaluate_client(self, model: torch.nn.Module, data: ClientData) -> dict[str, float]:
        """Metrics on one client's test split, with the client's private parameters loaded into
        ``model``. Workloads with private parameters are evaluated client by client through this
        hook (metrics averaged with weights ``len(data.y_test)``); override it to adapt private
        parameters locally before scoring (e.g. fold-in of a user embedding)."""
        return self.evaluate(model, data.x_test, data.y_test)

    def train_flops_per_sample(self) -> float | None:
        """Forward + backward FLOPs of one training example, measured once (``summary.json``'s
        ``train_flops_per_sample``); None where the workload does not measure it."""
        return None

    def save_artifacts(self, folder) -> list[str]:
        """Write what a user needs beside the run's tables to reuse its results (a tokenizer
        trained on the federation's text, ...) into ``folder``; the names written."""
        return []

    def train_memory_bytes(self, batch_size: int) -> int | None:
        """Bytes a device needs to train one client at ``batch_size`` — weights, trainable
        parameters' gradients and the activations kept for the backward pass — measured once
        (``summary.json``'s ``train_memory_bytes``; devices with less ``memory_gb`` are
        ineligible); None where the workload does not measure it."""
        return None

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
