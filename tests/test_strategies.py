"""FedAvg / FedProx numerics against an independent numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedray import seeding
from fedray.config import config_from_dict
from fedray.execution.worker import ClientWorker, GroupJob, Task
from fedray.sim.evaluation import initial_params
from fedray.strategies import FedAvg, FedProx
from fedray.strategies.aggregate import Aggregate
from fedray.training import flat_params, load_flat_params, local_sgd


def test_fedavg_golden_vector():
    # Prepare: global 1.0, two clients with updates +1 (n=1) and -2 (n=3)
    strategy = FedAvg(server_lr=1.0)
    state = strategy.init(np.array([1.0, 0.0], dtype=np.float32))
    update_sum = 1 * np.array([1.0, 2.0]) + 3 * np.array([-2.0, 2.0])
    # Execute
    new = strategy.server_step(state, Aggregate.of_sum(update_sum, 4.0))
    # Assert: x + mean update = [1 + (1 - 6)/4, 0 + 8/4]
    np.testing.assert_allclose(new.params, [-0.25, 2.0])
    assert new.version == 1


def test_fedavg_equals_weighted_average_of_models_and_server_lr_scales():
    rng = np.random.default_rng(0)
    x = rng.normal(size=5).astype(np.float32)
    models = rng.normal(size=(4, 5))
    n = np.array([3.0, 1.0, 7.0, 2.0])
    update_sum = ((models - x) * n[:, None]).sum(axis=0)
    avg = FedAvg().server_step(FedAvg().init(x), Aggregate.of_sum(update_sum, n.sum()))
    np.testing.assert_allclose(avg.params, np.average(models, axis=0, weights=n), rtol=1e-6)
    half = FedAvg(server_lr=0.5).server_step(
        FedAvg().init(x), Aggregate.of_sum(update_sum, n.sum())
    )
    np.testing.assert_allclose(
        half.params, x + 0.5 * (np.average(models, axis=0, weights=n) - x), rtol=1e-6
    )


def test_no_reports_keeps_the_model():
    state = FedProx(mu=0.1).init(np.ones(3, dtype=np.float32))
    assert FedProx(mu=0.1).server_step(state, Aggregate.of_sum(np.zeros(3), 0.0)) is state


def numpy_local_sgd(w, b, x, y, *, epochs, lr, batch_size, mu, rng):
    """Softmax regression SGD with the FedProx gradient μ(w − w_t), written independently."""
    w, b = w.astype(np.float64).copy(), b.astype(np.float64).copy()
    w0, b0 = w.copy(), b.copy()
    onehot = np.eye(w.shape[0])[y]
    for _ in range(epochs):
        order = rng.permutation(len(x))
        xs, ys = x[order], onehot[order]
        for s in range(0, len(x), batch_size):
            xb, yb = xs[s : s + batch_size], ys[s : s + batch_size]
            logits = xb @ w.T + b
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            g = (p - yb) / len(xb)
            gw, gb = g.T @ xb + mu * (w - w0), g.sum(axis=0) + mu * (b - b0)
            w, b = w - lr * gw, b - lr * gb
    return w, b


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_local_sgd_matches_numpy(mu):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(23, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=23)
    model = torch.nn.Linear(6, 3)
    w0, b0 = model.weight.detach().numpy().copy(), model.bias.detach().numpy().copy()
    local_sgd(
        model,
        torch.from_numpy(x),
        torch.from_numpy(y),
        epochs=3,
        lr=0.3,
        batch_size=5,
        mu=mu,
        rng=np.random.default_rng(42),
    )
    w, b = numpy_local_sgd(
        w0, b0, x, y, epochs=3, lr=0.3, batch_size=5, mu=mu, rng=np.random.default_rng(42)
    )
    np.testing.assert_allclose(model.weight.detach().numpy(), w, atol=1e-5)
    np.testing.assert_allclose(model.bias.detach().numpy(), b, atol=1e-5)


def test_proximal_term_pulls_towards_the_global_model():
    rng = np.random.default_rng(2)
    x, y = (
        torch.from_numpy(rng.normal(size=(50, 6)).astype(np.float32)),
        torch.from_numpy(rng.integers(0, 3, 50)),
    )
    drift = {}
    for mu in (0.0, 1.0):
        model = torch.nn.Linear(6, 3)
        torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)
        local_sgd(model, x, y, epochs=5, lr=0.1, batch_size=10, mu=mu, rng=np.random.default_rng(0))
        drift[mu] = np.linalg.norm(flat_params(model))
    assert drift[1.0] < drift[0.0]


def test_worker_presum_equals_fedavg_of_independent_clients():
    cfg = config_from_dict(
        {"workload": {"max_samples": 200}, "client": {"lr": 0.05, "local_epochs": 2}}
    )
    # Client by client, so the worker runs the reference's own torch steps: a client with lr 0.05
    # can be chaotic (a 1e-7 nudge of client 11's start moves its model by 1e-2), so batched
    # training, which rounds differently, is compared where that cannot happen
    # (tests/test_vectorized.py). The start is seeded, so the test is the same in any order.
    cfg.seed, cfg.execution.vectorize = 5, "off"
    worker = ClientWorker(cfg)
    global_params = initial_params(worker.workload, 5)
    handed_in = global_params.copy()  # as a worker receives it from the object store: read-only
    handed_in.setflags(write=False)
    tasks = [Task(3, 2), Task(11, 2), Task(7, 1)]
    result = worker.run_group(GroupJob(0, 4, tasks, [{"params": handed_in}]))
    new = FedAvg().server_step(FedAvg().init(global_params), result.aggregate)

    models, weights = [], []
    for task in tasks:  # independent reference: train each client alone, then np.average
        model = worker.workload.build_model()
        load_flat_params(model, global_params)
        data = worker.workload.client_data(task.client_id)
        local_sgd(
            model,
            data.x_train,
            data.y_train,
            epochs=task.local_epochs,
            lr=0.05,
            batch_size=10,
            rng=seeding.generator(5, "shuffle", task.client_id, 4),
        )
        models.append(flat_params(model))
        weights.append(len(data.x_train))
    np.testing.assert_allclose(new.params, np.average(models, axis=0, weights=weights), atol=1e-6)
    assert list(result.num_samples) == weights
    np.testing.assert_array_equal(handed_in, global_params)  # never written through
