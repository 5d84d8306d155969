"""SCAFFOLD (Karimireddy et al. 2020): golden vectors against a numpy reference, the per-client
variate store, determinism across workers, and the benefit on non-IID data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fedray
from fedray.clients.state_store import ClientStateStore
from fedray.config import ClientTrainingConfig, config_from_dict
from fedray.errors import ConfigError
from fedray.execution.worker import ClientWorker, GroupJob, Task
from fedray.results.schema import NONDETERMINISTIC_COLUMNS
from fedray.sim.evaluation import initial_params
from fedray.strategies import Scaffold, ScaffoldState, make_strategy
from fedray.strategies.aggregate import Aggregate
from fedray.strategies.scaffold import CONTROL
from fedray.workloads import make_workload


def test_server_step_by_hand():
    # Prepare: x = (1, 2), c = (0.5, 0); two clients with n = 1 and 3 samples, N = 3 registered.
    state = ScaffoldState(np.array([1.0, 2.0], np.float32), np.array([0.5, 0.0]))
    dy = {1: np.array([0.2, 0.4]), 3: np.array([-0.4, 0.0])}
    dc = [np.array([0.1, -0.2]), np.array([0.2, -0.4])]
    update_sum = sum(n * d for n, d in dy.items())

    # Execute
    summed = Aggregate.of_sum(update_sum, 4.0, control=dc[0] + dc[1])
    new = Scaffold(num_clients=3, server_lr=1.0).server_step(state, summed)
    half = Scaffold(num_clients=3, server_lr=0.5).server_step(state, summed)

    # Assert: x + η_g (0.2 − 1.2, 0.4) / 4 and c + (0.3, −0.6) / 3
    np.testing.assert_allclose(new.params, [0.75, 2.1], rtol=1e-6)
    np.testing.assert_allclose(half.params, [0.875, 2.05], rtol=1e-6)
    np.testing.assert_allclose(new.control, [0.6, -0.2], rtol=1e-12)
    assert new.version == 1
    nobody = Aggregate.of_sum(update_sum, 0.0, control=dc[0])
    assert Scaffold(num_clients=3).server_step(state, nobody) is state


def reference_round(x, c, clients, controls, *, lr, steps, server_lr, num_clients):
    """SCAFFOLD, Algorithm 1 with option II, for multinomial logistic regression with full-batch
    gradients, in float64 numpy: returns (x⁺, c⁺, {client: c_k⁺})."""

    def grad(w, xs, ys):
        weight, bias = w[:600].reshape(10, 60), w[600:]
        logits = xs @ weight.T + bias
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(ys)), ys] -= 1.0
        p /= len(ys)
        return np.concatenate([(p.T @ xs).ravel(), p.sum(0)])

    dy_sum, n_sum, dc_sum, new_controls = 0.0, 0, 0.0, {}
    for cid, (xs, ys) in clients.items():
        c_k = controls.get(cid, np.zeros_like(x))
        y = x.copy()
        for _ in range(steps):
            y = y - lr * (grad(y, xs, ys) - c_k + c)
        new_controls[cid] = c_k - c + (x - y) / (steps * lr)
        dy_sum = dy_sum + len(ys) * (y - x)
        n_sum += len(ys)
        dc_sum = dc_sum + (new_controls[cid] - c_k)
    return x + server_lr * dy_sum / n_sum, c + dc_sum / num_clients, new_controls


@pytest.mark.parametrize("vectorize", ["off", "on"])
def test_a_round_equals_the_numpy_reference(vectorize):
    # Prepare: two clients of 4-5 examples, a batch larger than that (so each epoch is one
    # full-batch step whatever the shuffle) and 2 epochs: K = 2 local steps. Client 3 has a
    # variate from an earlier round, client 8 has none yet (zeros).
    cfg = config_from_dict({"workload": {"name": "synthetic", "min_samples": 4, "max_samples": 6}})
    cfg.strategy.name, cfg.clients.num_clients = "scaffold", 10
    cfg.client = ClientTrainingConfig(lr=0.1, batch_size=10, local_epochs=2)
    cfg.execution.data_cache_mb, cfg.execution.vectorize = 0, vectorize
    worker = ClientWorker(cfg)
    workload = make_workload(cfg.workload, 0)
    x = initial_params(workload, 0)
    rng = np.random.default_rng(1)
    c = rng.normal(0, 0.1, x.size).astype(np.float32)
    controls = {3: rng.normal(0, 0.1, x.size).astype(np.float32)}
    data = {cid: workload.client_data(cid) for cid in (3, 8)}
    clients = {
        cid: (d.x_train.numpy().astype(np.float64), d.y_train.numpy()) for cid, d in data.items()
    }
    x_ref, c_ref, controls_ref = reference_round(
        x.astype(np.float64),
        c.astype(np.float64),
        clients,
        {k: v.astype(np.float64) for k, v in controls.items()},
        lr=0.1,
        steps=2,
        server_lr=0.7,
        num_clients=10,
    )

    # Execute
    states = {cid: {CONTROL: c_k} for cid, c_k in controls.items()}
    job = GroupJob(0, 1, [Task(3, 2), Task(8, 2)], [{"params": x, "control": c}], states)
    result = worker.run_group(job)
    strategy = Scaffold(num_clients=10, server_lr=0.7)
    state = strategy.server_step(ScaffoldState(x, c.astype(np.float64)), result.aggregate)

    # Assert
    np.testing.assert_array_equal(result.steps, [2, 2])
    assert set(result.bytes_up) == {2 * (1 + 4 * x.size)}  # Δy and Δc, raw float32 each
    np.testing.assert_allclose(state.params, x_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.control, c_ref, rtol=1e-4, atol=1e-6)
    for cid in (3, 8):
        np.testing.assert_allclose(
            result.states[cid][CONTROL], controls_ref[cid], rtol=1e-4, atol=1e-5
        )
    assert np.abs(state.params - x).max() > 1e-2 and np.abs(state.control - c).max() > 1e-3


def test_variates_of_ten_thousand_clients_stay_within_the_budget(tmp_path):
    # Prepare: variates as the driver keeps them (float32, one per client that took part),
    # 10k clients against an in-memory budget of 16 variates.
    d, n = 610, 10_000
    budget = 16 * 4 * d
    base = np.random.default_rng(0).standard_normal(d).astype(np.float32)

    def variate(cid):
        return np.roll(base, cid) * np.float32(1 + cid % 7)

    # Execute: every client takes part once; then the first and a middle one come back
    with ClientStateStore(budget, tmp_path / "scaffold") as store:
        assert store.get(0) is None  # created lazily: no state before a client's first round
        peak = 0
        for cid in range(n):
            store.put(cid, variate(cid))
            peak = max(peak, store.memory_bytes)
        spilled = len(list((tmp_path / "scaffold").glob("*.npy")))
        back = {cid: store.get(cid).copy() for cid in (0, 4321, n - 1)}

        # Assert: bounded memory, the rest on disk, values bit for bit
        assert peak <= budget and store.memory_bytes <= budget
        assert spilled >= n - 16 and len(store) == n
        for cid, value in back.items():
            np.testing.assert_array_equal(value, variate(cid))
    assert not (tmp_path / "scaffold").exists() or not any((tmp_path / "scaffold").iterdir())


def base_config(small_config, **changes):
    small_config.update(rounds=4, clients_per_round=8)
    small_config["clients"]["num_clients"] = 12  # clients come back, so variates are reused
    small_config["strategy"] = {"name": "scaffold"}
    small_config["execution"]["clients_per_task"] = 3
    small_config.update(changes)
    return small_config


def run(cfg: dict, name: str, **execution):
    cfg = {
        **cfg,
        "execution": {**cfg["execution"], **execution},
        "output": {**cfg["output"], "name": name},
    }
    return fedray.run(config_from_dict(cfg), progress=False)


def test_runs_are_identical_for_one_and_two_workers_and_through_the_disk(ray_session, small_config):
    cfg = base_config(small_config)
    one = run(cfg, "w1", num_workers=1, client_state_mb=0)  # every variate spills and reloads
    two = run(cfg, "w2", num_workers=2, client_state_mb=0)
    memory = run(cfg, "mem", num_workers=2)
    cols = [c for c in one.rounds.columns if c not in NONDETERMINISTIC_COLUMNS]
    for other in (two, memory):
        pd.testing.assert_frame_equal(one.rounds[cols], other.rounds[cols], check_exact=True)
        pd.testing.assert_frame_equal(one.clients, other.clients, check_exact=True)
    assert not (one.path / ".client_state").exists()  # spill files removed at the end
    # Two payloads per upload and per download, all counted.
    d = 60 * 10 + 10
    done = one.clients.status == "completed"
    assert set(one.clients.loc[done, "bytes_up"]) == {2 * (1 + 4 * d)}
    assert set(one.clients["bytes_down"]) == {2 * (1 + 4 * d)}
    np.testing.assert_allclose(one.rounds["compression_ratio"], 1.0)


def test_scaffold_beats_fedavg_on_non_iid_synthetic(ray_session, small_config):
    # Synthetic(1, 1): every client has its own model and inputs. 20 rounds of 10 of 30 clients.
    small_config.update(seed=1, rounds=20, clients_per_round=10)
    small_config["workload"].update(alpha=1.0, beta=1.0, eval_clients=30, max_samples=300)
    small_config["clients"] = {"num_clients": 30}
    small_config["client"].update(lr=0.05, local_epochs=2)
    small_config["execution"]["clients_per_task"] = 5
    small_config["output"]["tensorboard"] = False
    avg = run({**small_config, "strategy": {"name": "fedavg"}}, "fedavg")
    scaffold = run({**small_config, "strategy": {"name": "scaffold"}}, "scaffold")
    last_avg, last_scaffold = avg.rounds.iloc[-1], scaffold.rounds.iloc[-1]
    assert last_scaffold["global_train_loss"] < last_avg["global_train_loss"]
    assert last_scaffold["eval_accuracy"] >= last_avg["eval_accuracy"]
    # the same clients paid twice the upload time's transfer part for the variates
    done = avg.clients.status == "completed"
    assert (scaffold.clients.loc[done, "upload_s"] > avg.clients.loc[done, "upload_s"]).all()


def test_scaffold_is_a_synchronous_strategy_with_server_lr_only():
    assert make_strategy(config_from_dict({"strategy": {"name": "scaffold"}})) == Scaffold(
        num_clients=1000
    )
    with pytest.raises(ConfigError, match="scaffold.s control variates assume synchronous rounds"):
        config_from_dict({"mode": "async", "strategy": {"name": "scaffold"}})
    with pytest.raises(ConfigError, match="strategy.mu is not an option of scaffold"):
        config_from_dict({"strategy": {"name": "scaffold", "mu": 0.1}})
