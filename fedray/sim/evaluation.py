"""Driver-side evaluation and the run's initial model, shared by the sync and async drivers."""

from __future__ import annotations

import numpy as np
import torch

from fedray import seeding
from fedray.execution.layout import FlatLayout
from fedray.training import flat_params, load_flat_params
from fedray.workloads import Workload


def per_client(workload: Workload) -> bool:
    """Whether the workload is evaluated client by client (private parameters, or its own
    ``evaluate_client``) rather than on the stacked splits."""
    overridden = type(workload).evaluate_client is not Workload.evaluate_client
    return overridden or bool(workload.parameter_layout().private)


class Evaluator:
    """Global evaluation on a fixed, seeded set of clients' splits, run on the driver.

    Dense workloads are scored once on the eval clients' stacked test and train splits. Workloads
    with private parameters are scored client by client, each with its own private parameters
    loaded (the driver's stored ones, or ``init_private`` for a client that never trained),
    through ``Workload.evaluate_client``; metrics are averaged with weights ``len(y_test)``, and
    the global-train columns are NaN (a client's train split need not be rankable like its
    test split)."""

    def __init__(self, workload: Workload, seed: int, num_clients: int, eval_clients: int):
        rng = seeding.generator(seed, "eval")
        ids = np.sort(rng.choice(num_clients, size=min(eval_clients, num_clients), replace=False))
        parts = [workload.client_data(int(i)) for i in ids]
        self.client_ids = ids
        self.workload = workload
        self.model = workload.build_model()
        self.per_client = per_client(workload)
        if self.per_client:
            self.parts = parts
            self.flat = FlatLayout.of(self.model, workload.parameter_layout())
            return
        self.x_test = torch.cat([p.x_test for p in parts])
        self.y_test = torch.cat([p.y_test for p in parts])
        self.x_train = torch.cat([p.x_train for p in parts])
        self.y_train = torch.cat([p.y_train for p in parts])

    def __call__(self, params: np.ndarray, privates: dict | None = None) -> dict[str, float]:
        """Loss and accuracy on the test and train splits, plus ``eval_<name>`` for each of the
        workload's ``metric_names`` (test split only; the columns ``rounds_schema`` adds).
        ``privates``: the eval clients' stored private parameters, by client id."""
        if self.per_client:
            return self._per_client(params, privates or {})
        load_flat_params(self.model, params)
        test = self.workload.evaluate(self.model, self.x_test, self.y_test)
        train = self.workload.evaluate(self.model, self.x_train, self.y_train)
        return {
            "eval_loss": test["loss"],
            "eval_accuracy": test["accuracy"],
            "global_train_loss": train["loss"],
            "global_train_accuracy": train["accuracy"],
            **{f"eval_{name}": float(test[name]) for name in self.workload.metric_names},
        }

    def _per_client(self, params: np.ndarray, privates: dict) -> dict[str, float]:
        index = self.flat.private_index
        start = np.array(params, dtype=np.float32)
        names = ("loss", "accuracy", *self.workload.metric_names)
        scores: dict[str, list[float]] = {name: [] for name in names}
        weights = []
        for cid, data in zip(self.client_ids, self.parts, strict=True):
            if index.size:
                private = privates.get(int(cid))
                if private is None:
                    private = self.workload.init_private(int(cid), params[index].copy())
                start[index] = np.asarray(private, dtype=np.float32).reshape(-1)
            load_flat_params(self.model, start)
            metrics = self.workload.evaluate_client(self.model, data)
            for name in names:
                scores[name].append(float(metrics[name]))
            weights.append(len(data.y_test))
        mean = {name: _weighted_mean(values, weights) for name, values in scores.items()}
        return {
            "eval_loss": mean["loss"],
            "eval_accuracy": mean["accuracy"],
            "global_train_loss": float("nan"),
            "global_train_accuracy": float("nan"),
            **{f"eval_{name}": mean[name] for name in self.workload.metric_names},
        }


def _weighted_mean(values: list[float], weights: list[float]) -> float:
    v, w = np.asarray(values, np.float64), np.asarray(weights, np.float64)
    ok = np.isfinite(v) & (w > 0)
    return float(np.average(v[ok], weights=w[ok])) if ok.any() else float("nan")


def initial_params(workload: Workload, seed: int) -> np.ndarray:
    # torch's initialisers draw from its global RNG; fork it so the run's seed decides the
    # initial model without leaking into (or depending on) anything else in the process.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.purpose_code("init") ^ seed)
        return flat_params(workload.build_model())
