"""Vectorized client execution (fedray/execution/batched.py) against the sequential path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import fedray
from fedray.config import config_from_dict
from fedray.errors import ConfigError, UserError
from fedray.execution import batched
from fedray.execution.batched import dense_shapes, resolve_mode
from fedray.execution.transforms import RESIDUAL
from fedray.execution.worker import ClientWorker, GroupJob, Task
from fedray.results.schema import NONDETERMINISTIC_COLUMNS
from fedray.sim.evaluation import initial_params
from fedray.workloads import make_workload
from fedray.workloads.synthetic import Synthetic


def synthetic_cfg(**options):
    return config_from_dict({"workload": {"name": "synthetic", **options}}).workload


def test_dense_stacks_are_recognised_and_other_models_are_not():
    assert dense_shapes(nn.Linear(60, 10)) == [(10, 60)]
    mlp = nn.Sequential(nn.Linear(60, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    assert dense_shapes(mlp) == [(8, 60), (4, 8), (3, 4)]
    assert dense_shapes(nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3))) is None
    assert dense_shapes(nn.Sequential(nn.Linear(6, 4), nn.ReLU())) is None
    assert dense_shapes(nn.Linear(6, 3, bias=False)) is None
    assert dense_shapes(nn.Conv1d(1, 1, 3)) is None


@pytest.mark.parametrize(
    ("model", "codec", "mu"),
    [
        ("logreg", {"name": "topk", "fraction": 0.2, "error_feedback": True}, 0.5),
        ("mlp", {"name": "fp16"}, 0.1),
    ],
)
def test_a_vectorized_group_equals_client_by_client_training(model, codec, mu):
    # Prepare: clients of very different sizes, with 1-3 epochs as the partial policy gives them,
    # some carrying an error-feedback residual from an earlier round.
    workload_cfg = synthetic_cfg(model=model, hidden=12, max_samples=400)

    def worker(vectorize):
        cfg = config_from_dict(
            {
                "seed": 5,
                "workload": workload_cfg.model_dump(),
                "strategy": {"name": "fedprox", "mu": mu},
                "client": {"lr": 0.05, "batch_size": 8, "local_epochs": 3},
                "compression": {"uplink": codec},
                "execution": {"data_cache_mb": 0, "vectorize": vectorize},
            }
        )
        return ClientWorker(cfg)

    sequential, vectorized = worker("off"), worker("on")
    assert vectorized.vectorized and not sequential.vectorized
    start = initial_params(Synthetic(workload_cfg, 5), 5)  # seeded, so the test is repeatable
    tasks = [Task(c, e) for c, e in [(3, 3), (8, 1), (11, 2), (19, 3), (23, 1), (31, 2)]]
    sizes = Synthetic(workload_cfg, 5).num_train_samples([t.client_id for t in tasks])
    assert len(set(sizes.tolist())) == len(tasks)
    states = {}
    if codec.get("error_feedback"):
        rng = np.random.default_rng(0)
        states = {
            3: {RESIDUAL: rng.normal(0, 0.01, start.size).astype(np.float32)},
            19: {RESIDUAL: np.zeros_like(start)},
        }

    # Execute
    job = GroupJob(0, 2, tasks, [{"params": start}], states)
    seq, vec = sequential.run_group(job), vectorized.run_group(job)
    rows = worker("on").run_group(
        GroupJob(0, 2, tasks, [{"params": start}], states, per_client=True)
    )

    # Assert: same clients, steps and bytes exactly; updates, losses and residuals to float
    # tolerance (fp16 may round a last bit differently: one fp16 ulp is ~1e-3 relative).
    np.testing.assert_array_equal(vec.client_ids, seq.client_ids)
    np.testing.assert_array_equal(vec.steps, seq.steps)
    np.testing.assert_array_equal(vec.num_samples, sizes)
    np.testing.assert_array_equal(vec.bytes_up, seq.bytes_up)
    vec_sum, seq_sum = vec.aggregate.total, seq.aggregate.total
    assert vec.aggregate.weight == seq.aggregate.weight
    assert np.abs(seq_sum).max() > 1.0  # the clients really moved
    np.testing.assert_allclose(vec_sum, seq_sum, rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(vec.train_loss, seq.train_loss, rtol=1e-5)
    assert sorted(vec.states) == sorted(seq.states) == ([3, 8, 11, 19, 23, 31] if states else [])
    for cid in vec.states:
        np.testing.assert_allclose(vec.states[cid][RESIDUAL], seq.states[cid][RESIDUAL], atol=1e-4)
    updates, _ = rows.aggregate.matrix()
    weighted = (updates.astype(np.float64) * sizes[:, None]).sum(0)
    np.testing.assert_allclose(weighted, vec_sum, rtol=1e-6, atol=1e-6)


def _torch_sgd(x, y, start, *, seed, epochs, lr, batch_size):
    """Reference: one client's minibatch SGD in torch, batches in _schedule's shuffled order."""
    model = nn.Linear(x.shape[1], 10)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(start[:-10].reshape(10, -1)))
        model.bias.copy_(torch.from_numpy(start[-10:]))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for at in range(0, len(y), batch_size):
            batch = order[at : at + batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(
                model(torch.from_numpy(x[batch])), torch.from_numpy(y[batch])
            )
            loss.backward()
            opt.step()
            losses.append(loss.item())
    params = [model.weight.detach().numpy().ravel(), model.bias.detach().numpy()]
    return np.concatenate(params), np.mean(losses)


@pytest.mark.parametrize(
    ("logit_scale", "passes"),
    [(1.0, [False]), (6.0, [False]), (8.0, [False, True]), (300.0, [False, True])],
)
def test_a_block_whose_logits_overflow_without_the_shift_is_retrained_with_it(
    monkeypatch, logit_scale, passes
):
    # Prepare: three clients of different sizes. At scale 6 the logits reach ~57, large but in
    # range without the shift (the losses then subtract large, close terms). At scale 8 they
    # reach ~76: Σ exp(z) stays finite, but lr / (|batch| Σ exp(z)) falls below float32's
    # smallest normal number, and at scale 300 (~1e3) exp() overflows; both must be retrained
    # with the shift.
    rng = np.random.default_rng(0)
    data = [
        (rng.normal(0, logit_scale, (n, 6)).astype(np.float32), rng.integers(0, 10, n))
        for n in (23, 9, 40)
    ]
    start = rng.normal(0, 1, 70).astype(np.float32)
    seen = []
    real_sgd = batched._sgd

    def counting_sgd(*args, stable):
        seen.append(stable)
        return real_sgd(*args, stable=stable)

    monkeypatch.setattr(batched, "_sgd", counting_sgd)
    lr = 1e-4 / logit_scale
    jobs = [
        batched.ClientJob(x, y, 2, np.random.default_rng(7 + i), start)
        for i, (x, y) in enumerate(data)
    ]

    # Execute
    block = batched.train_block([(10, 6)], jobs, lr=lr, batch_size=5)

    # Assert: one pass when the logits stay in range, a second (stable) one when they do not;
    # either way each client's model and mean loss are what torch's own SGD computes.
    assert seen == passes
    for i, (x, y) in enumerate(data):
        expected, mean_loss = _torch_sgd(x, y, start, seed=7 + i, epochs=2, lr=lr, batch_size=5)
        assert np.all(np.isfinite(block.params[i]))
        # Compared as updates: with the small lr these large logits need, the parameters hardly
        # move, and a tolerance on them would hide a wrong step.
        moved = expected - start
        np.testing.assert_allclose(
            block.params[i] - start, moved, rtol=1e-3, atol=1e-3 * np.abs(moved).max()
        )
        np.testing.assert_allclose(block.loss[i], mean_loss, rtol=1e-5)


def test_a_client_in_range_gets_the_same_update_whoever_shares_its_block():
    # Prepare: two ordinary clients and one whose logits overflow without the shift. The retry
    # with the shift rounds differently, so it must touch the overflowing client only: async
    # groups (and resumed runs) put clients in different blocks, and tables must not change.
    rng = np.random.default_rng(1)
    start = rng.normal(0, 1, 70).astype(np.float32)

    def job(n, scale, seed):
        x = rng.normal(0, scale, (n, 6)).astype(np.float32)
        return x, rng.integers(0, 10, n), seed

    calm, calm2, wild = job(23, 1.0, 3), job(31, 1.0, 4), job(17, 300.0, 5)

    def train(*specs):
        jobs = [
            batched.ClientJob(x, y, 2, np.random.default_rng(seed), start) for x, y, seed in specs
        ]
        return batched.train_block([(10, 6)], jobs, lr=1e-5, batch_size=5)

    # Execute
    together = train(calm, wild, calm2)
    apart = [train(calm), train(wild), train(calm2)]

    # Assert: bit-identical, parameters and losses, alone or together
    for i, alone in enumerate(apart):
        np.testing.assert_array_equal(together.params[i], alone.params[0])
        assert together.loss[i] == alone.loss[0]
    assert np.all(np.isfinite(together.params))


def test_vectorize_can_be_forced_and_fails_in_one_line_where_unsupported():
    class TanhSynthetic(Synthetic):
        def build_model(self):
            return nn.Sequential(nn.Linear(60, 8), nn.Tanh(), nn.Linear(8, 10))

    synthetic = make_workload(synthetic_cfg(), 0)
    assert resolve_mode("auto", synthetic) and resolve_mode("on", synthetic)
    assert not resolve_mode("off", synthetic)
    tanh = TanhSynthetic(synthetic_cfg(), 0)
    assert not resolve_mode("auto", tanh)
    with pytest.raises(UserError, match=r"execution.vectorize=on.*set execution.vectorize") as err:
        resolve_mode("on", tanh)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="execution.vectorize"):
        config_from_dict({"execution": {"vectorize": "always"}})


def test_vectorized_runs_are_deterministic_and_match_sequential_runs(ray_session, small_config):
    # Mixed sizes, the partial policy (clients cut to 1-2 of 3 epochs), FedProx and a codec.
    small_config.update(rounds=3, clients_per_round=8, deadline_s=6.0, stragglers="partial")
    small_config["strategy"] = {"name": "fedprox", "mu": 0.1}
    small_config["client"]["local_epochs"] = 3
    small_config["clients"]["profile"] = {"speed": {"dist": "lognormal", "median": 150, "sigma": 1}}
    small_config["compression"] = {"uplink": "fp16"}
    small_config["execution"]["clients_per_task"] = 3

    def run(name, **execution):
        cfg = {
            **small_config,
            "execution": {**small_config["execution"], **execution},
            "output": {**small_config["output"], "name": name},
        }
        return fedray.run(config_from_dict(cfg), progress=False)

    one = run("v1", vectorize="on", num_workers=1)
    two = run("v2", vectorize="on", num_workers=2)
    seq = run("s2", vectorize="off", num_workers=2)
    assert one.rounds["num_partial"].sum() > 0 and one.rounds["num_completed"].sum() > 0
    cols = [c for c in one.rounds.columns if c not in NONDETERMINISTIC_COLUMNS]
    pd.testing.assert_frame_equal(one.rounds[cols], two.rounds[cols], check_exact=True)
    pd.testing.assert_frame_equal(one.clients, two.clients, check_exact=True)
    pd.testing.assert_frame_equal(one.rounds[cols], seq.rounds[cols], check_exact=False, rtol=1e-4)
    pd.testing.assert_frame_equal(one.clients, seq.clients, check_exact=False, rtol=1e-4)
