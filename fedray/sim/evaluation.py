"""Driver-side evaluation and the run's initial model, shared by the sync and async drivers."""

from __future__ import annotations

import numpy as np
import torch

from fedray import seeding
from fedray.training import flat_params, load_flat_params
from fedray.workloads import Workload


class Evaluator:
    """Global evaluation on a fixed, seeded set of clients' splits, run on the driver."""

    def __init__(self, workload: Workload, seed: int, num_clients: int, eval_clients: int):
        rng = seeding.generator(seed, "eval")
        ids = np.sort(rng.choice(num_clients, size=min(eval_clients, num_clients), replace=False))
        parts = [workload.client_data(int(i)) for i in ids]
        self.client_ids = ids
        self.x_test = torch.cat([p.x_test for p in parts])
        self.y_test = torch.cat([p.y_test for p in parts])
        self.x_train = torch.cat([p.x_train for p in parts])
        self.y_train = torch.cat([p.y_train for p in parts])
        self.workload = workload
        self.model = workload.build_model()

    def __call__(self, params: np.ndarray) -> dict[str, float]:
        """Loss and accuracy on the test and train splits, plus ``eval_<name>`` for each of the
        workload's ``metric_names`` (test split only; the columns ``rounds_schema`` adds)."""
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


def initial_params(workload: Workload, seed: int) -> np.ndarray:
    # torch's initialisers draw from its global RNG; fork it so the run's seed decides the
    # initial model without leaking into (or depending on) anything else in the process.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.purpose_code("init") ^ seed)
        return flat_params(workload.build_model())
