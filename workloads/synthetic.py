"""Synthetic(α, β), the heterogeneous benchmark of the FedProx paper.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in Heterogeneous Networks",
MLSys 2020, Section 5.1. For client k (60 features, 10 classes):

    u_k ~ N(0, α),  B_k ~ N(0, β)
    W_k ~ N(u_k, 1) ∈ R^{60×10},  b_k ~ N(u_k, 1) ∈ R^{10},  v_k ~ N(B_k, 1) ∈ R^{60}
    x ~ N(v_k, Σ),  Σ = diag((j+1)^−1.2),  y = argmax(x·W_k + b_k)

α controls how much the local models differ, β how much the local inputs differ; the second
argument of N(·,·) is a standard deviation, as in the paper's generator. Sample counts follow
``50 + int(lognormal(4, 2))`` (the paper's power law). The IID variant shares one (W, b) drawn
N(0, 1) and x ~ N(0, Σ) across clients.

A client's data is a pure function of (seed, client id), generated where it is used, so a
million registered clients cost nothing until sampled. Each client keeps a 90/10 train/test split.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedray import seeding
from fedray.training import evaluate_classifier
from fedray.workloads.base import ClientData, Workload

NUM_FEATURES = 60
NUM_CLASSES = 10
TRAIN_FRACTION = 0.9
_COV_DIAG_SQRT = np.power(np.arange(1, NUM_FEATURES + 1, dtype=np.float64), -1.2) ** 0.5


class Synthetic(Workload):
    name = "synthetic"
    num_classes = NUM_CLASSES

    def __init__(self, cfg, seed: int):
        self.cfg = cfg
        self.seed = seed
        if cfg.iid:
            rng = seeding.generator(seed, "synthetic.global_model")
            self._shared_w = rng.normal(0.0, 1.0, (NUM_FEATURES, NUM_CLASSES))
            self._shared_b = rng.normal(0.0, 1.0, NUM_CLASSES)

    # ------------------------------------------------------------------ data

    def num_samples(self, client_ids) -> np.ndarray:
        """Total samples per client (train + test): min_samples + int(lognormal(4, 2))."""
        z = seeding.normal(self.seed, "synthetic.size", client_ids)
        counts = self.cfg.min_samples + np.floor(np.exp(4.0 + 2.0 * z)).astype(np.int64)
        if self.cfg.max_samples is not None:
            counts = np.minimum(counts, self.cfg.max_samples)
        return counts

    def num_train_samples(self, client_ids) -> np.ndarray:
        return np.floor(self.num_samples(client_ids) * TRAIN_FRACTION).astype(np.int64)

    def client_arrays(self, client_id: int) -> tuple[np.ndarray, np.ndarray]:
        """All of a client's examples (x float32 [n, 60], y int64 [n]), train split first."""
        n = int(self.num_samples([client_id])[0])
        rng = seeding.generator(self.seed, "synthetic.data", client_id)
        if self.cfg.iid:
            w, b, v = self._shared_w, self._shared_b, np.zeros(NUM_FEATURES)
        else:
            u_k = rng.normal(0.0, self.cfg.alpha)
            b_k = rng.normal(0.0, self.cfg.beta)
            w = rng.normal(u_k, 1.0, (NUM_FEATURES, NUM_CLASSES))
            b = rng.normal(u_k, 1.0, NUM_CLASSES)
            v = rng.normal(b_k, 1.0, NUM_FEATURES)
        # In place (same values bit for bit: IEEE addition commutes): generating data is about
        # half of a vectorized client's cost, and the temporaries were ~40% of generating it.
        x = rng.standard_normal((n, NUM_FEATURES))
        x *= _COV_DIAG_SQRT
        x += v
        y = np.argmax(x @ w + b, axis=1)
        return x.astype(np.float32), y.astype(np.int64)

    def client_data(self, client_id: int) -> ClientData:
        x, y = self.client_arrays(client_id)
        n_train = int(np.floor(len(x) * TRAIN_FRACTION))
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        return ClientData(xt[:n_train], yt[:n_train], xt[n_train:], yt[n_train:])

    # ------------------------------------------------------------------ model

    def build_model(self) -> nn.Module:
        if self.cfg.model == "mlp":
            return nn.Sequential(
                nn.Linear(NUM_FEATURES, self.cfg.hidden),
                nn.ReLU(),
                nn.Linear(self.cfg.hidden, NUM_CLASSES),
            )
        return nn.Linear(NUM_FEATURES, NUM_CLASSES)  # multinomial logistic regression

    def vectorizable(self) -> bool:
        return True  # local_sgd with cross-entropy; logreg and the MLP are dense ReLU stacks

    def evaluate(self, model, x, y) -> dict[str, float]:
        loss, accuracy = evaluate_classifier(model, x, y)
        return {"loss": loss, "accuracy": accuracy}
