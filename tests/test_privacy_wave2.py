"""DP beyond synchronous central DP-FedAvg (fedray/privacy.py, fedray/execution/transforms.py):
DP-FedBuff in asynchronous runs (Huba et al., MLSys 2022), local DP, and adaptive clipping by
quantile (Andrew et al., NeurIPS 2021). Real Ray runs on small Synthetic federations; resume of
both stateful cases is in tests/test_faults.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import fedray
from fedray.config import PrivacyConfig, config_from_dict
from fedray.execution.worker import ClientWorker, GroupJob, Task
from fedray.privacy import adaptive_noise_multiplier, epsilon_after, next_clip_norm
from fedray.results.schema import NONDETERMINISTIC_COLUMNS
from fedray.strategies import FedAvg
from fedray.training import flat_params


def _run(config: dict, name: str, workers: int | None = None):
    cfg = {**config, "output": {**config["output"], "name": name}}
    if workers is not None:
        cfg["execution"] = {**cfg["execution"], "num_workers": workers}
    return fedray.run(config_from_dict(cfg), progress=False)


def _same_tables(a, b) -> None:
    cols = [c for c in a.rounds.columns if c not in NONDETERMINISTIC_COLUMNS]
    pd.testing.assert_frame_equal(a.rounds[cols], b.rounds[cols], check_exact=True)
    pd.testing.assert_frame_equal(a.clients, b.clients, check_exact=True)


# ----------------------------------------------------------------------------- DP-FedBuff


def test_async_dp_fedbuff_noises_each_buffer_and_accounts_per_server_step(
    ray_session, small_config, monkeypatch
):
    # Prepare: FedBuff with K = 4 and 8 clients in flight among 40; sample weighting asked for,
    # which DP overrides (every client counts once).
    small_config.update(rounds=8, mode="async")
    small_config["asynchronous"] = {"concurrency": 8, "buffer_size": 4, "weighting": "samples"}
    small_config["privacy"] = {"clip_norm": 0.4, "noise_multiplier": 0.8}
    weights, seen_totals = [], []
    server_step = FedAvg.server_step

    def spy(self, state, aggregate):
        weights.append(aggregate.weight)
        seen_totals.append(aggregate.total.copy())
        return server_step(self, state, aggregate)

    monkeypatch.setattr(FedAvg, "server_step", spy)

    # Execute
    one = _run(small_config, "w1", workers=1)
    two = _run(small_config, "w2", workers=2)

    # Assert: ε finite, growing, and the async accountant's (one Gaussian per server step)
    rounds = one.rounds
    eps = rounds["dp_epsilon"].to_numpy()
    assert np.all(np.isfinite(eps)) and np.all(np.diff(eps) > 0)
    expected = [
        epsilon_after(r, noise_multiplier=0.8, num_clients=40, sample_size=6, delta=1e-5,
                      sampling="async")
        for r in rounds["round"]
    ]  # fmt: skip
    np.testing.assert_allclose(eps, expected, rtol=1e-12)
    assert eps[0] == pytest.approx(
        epsilon_after(
            1, noise_multiplier=0.8, num_clients=1, sample_size=1, delta=1e-5, sampling="async"
        )
    )  # fmt: skip  (no amplification: independent of N and K)
    # the fixed denominator K, whatever the weighting: weight 1 per update
    assert set(weights) == {4.0}
    # each client at most once per buffer: the completed events of a step have distinct clients
    done = one.clients[one.clients.status == "completed"]
    assert (done.groupby("round").client_id.nunique() == done.groupby("round").size()).all()
    assert (done.groupby("round").size() == 4).all()
    # noise really was added: the noised sum is far beyond K clipped updates of norm ≤ C
    dim = seen_totals[0].size
    assert np.linalg.norm(seen_totals[0]) > 4 * 0.4 + 0.5 * 0.8 * 0.4 * math.sqrt(dim)
    privacy = one.summary["privacy"]
    assert privacy["sampling"] == "async" and "server step" in privacy["accountant"]
    _same_tables(one, two)


def test_async_privacy_refuses_fedasync_and_too_few_clients():
    base = {"mode": "async", "privacy": {"clip_norm": 1.0, "noise_multiplier": 1.0}}
    with pytest.raises(Exception, match="privacy cannot be combined with strategy fedasync"):
        config_from_dict({**base, "strategy": {"name": "fedasync"}})
    with pytest.raises(Exception, match=r"num_clients >= concurrency \+ buffer size \(10 \+ 10\)"):
        config_from_dict({**base, "clients": {"num_clients": 19}})
    config_from_dict({**base, "clients": {"num_clients": 20}})  # enough


# ----------------------------------------------------------------------------- local DP


def test_local_dp_noises_each_clipped_update_on_the_client(small_config):
    cfg = config_from_dict(small_config)
    cfg.execution.vectorize = "off"
    tasks = [Task(c, 1) for c in range(4)]
    params = flat_params(ClientWorker(cfg).model)  # one start model for every worker

    def uploads(privacy):
        c = cfg.model_copy(deep=True)
        c.privacy = privacy
        worker = ClientWorker(c)
        job = GroupJob(0, 1, tasks, [{"params": params}], per_client=True)
        return worker.run_group(job).aggregate.matrix()[0].astype(np.float64)

    central = uploads(PrivacyConfig(clip_norm=0.2, noise_multiplier=0.0))
    local = uploads(PrivacyConfig(clip_norm=0.2, noise_multiplier=2.0, kind="local"))
    again = uploads(PrivacyConfig(clip_norm=0.2, noise_multiplier=2.0, kind="local"))
    noise = local - central
    np.testing.assert_array_equal(local, again)  # seeded per (client, round)
    # each client's noise is N(0, (zC)²) per coordinate: std 0.4, independent across clients
    assert noise.std() == pytest.approx(0.4, rel=0.1)
    assert abs(np.corrcoef(noise[0], noise[1])[0, 1]) < 0.2


def test_local_dp_runs_allow_robust_rules_and_report_the_local_bound(ray_session, small_config):
    small_config.update(rounds=3, strategy={"name": "robust", "rule": "median"})
    small_config["privacy"] = {"clip_norm": 0.5, "noise_multiplier": 4.0, "kind": "local"}
    result = _run(small_config, "local")
    eps = result.rounds["dp_epsilon"].to_numpy()
    expected = [
        epsilon_after(r, noise_multiplier=4.0, num_clients=1, sample_size=1, delta=1e-5,
                      sampling="local")
        for r in (1, 2, 3)
    ]  # fmt: skip
    np.testing.assert_allclose(eps, expected, rtol=1e-12)
    assert result.summary["privacy"]["kind"] == "local"


# ----------------------------------------------------------------------------- adaptive clipping


def test_adaptive_noise_multiplier_keeps_the_pair_as_private_as_z():
    z, sigma_b = 1.0, 1.5
    z_delta = adaptive_noise_multiplier(z, sigma_b)
    # Andrew et al.: z = (z_Δ⁻² + (2σ_b)⁻²)^(−1/2)
    assert (z_delta**-2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(z)
    assert z_delta > z and adaptive_noise_multiplier(0.0, sigma_b) == 0.0


def test_clip_norm_moves_geometrically_towards_the_quantile():
    step = {"cohort": 10, "target_quantile": 0.5, "learning_rate": 0.2, "count_noise": 0.0,
            "seed": 0, "round_": 1}  # fmt: skip
    # all 10 unclipped (Σ (b − ½) = 5): b̃ = 1 > γ, C shrinks by exp(−0.2 · 0.5)
    assert next_clip_norm(1.0, 5.0, **step) == pytest.approx(math.exp(-0.1), rel=1e-7)
    # all clipped: C grows; exactly at the quantile: C stays
    assert next_clip_norm(1.0, -5.0, **step) == pytest.approx(math.exp(0.1), rel=1e-7)
    assert next_clip_norm(1.0, 0.0, **step) == 1.0
    noisy = {**step, "count_noise": 1.0}
    assert next_clip_norm(1.0, 0.0, **noisy) == next_clip_norm(1.0, 0.0, **noisy) != 1.0


def test_adaptive_clipping_tracks_the_update_norms_quantile(ray_session, small_config):
    # Prepare: C starts 100× too large; clipping only (z = 0) so the recursion is exact.
    small_config.update(rounds=12, clients_per_round=10)
    small_config["privacy"] = {
        "clip_norm": 20.0,
        "noise_multiplier": 0.0,
        "adaptive_clipping": {"target_quantile": 0.5, "learning_rate": 1.0},
    }
    result = _run(small_config, "adaptive", workers=2)
    rounds = result.rounds
    c = rounds["dp_clip_norm"].to_numpy()
    unclipped = 1 - rounds["dp_clipped_fraction"].to_numpy()  # every client arrives: K = 10
    # the paper's recursion, round by round, from the tables alone
    np.testing.assert_allclose(c[1:], c[:-1] * np.exp(-(unclipped[:-1] - 0.5)), rtol=1e-6)
    assert c[0] == 20.0 and c[-1] < 2.0  # came down by an order of magnitude
    assert rounds["dp_clipped_fraction"].iloc[-3:].mean() > 0.1  # now bites on some clients
    assert result.summary["privacy"]["adaptive_clipping"] is True
    same = _run(small_config, "adaptive-1", workers=1)
    _same_tables(result, same)


def test_adaptive_clients_clip_to_the_c_they_received_not_the_initial_one(small_config):
    # A C that adaptation raised above privacy.clip_norm must bound the uploads, on the client
    # and in the server's re-check alike.
    cfg = config_from_dict(small_config)
    cfg.execution.vectorize = "off"
    tasks = [Task(c, 1) for c in range(6)]
    params = flat_params(ClientWorker(cfg).model)
    raw_cfg = cfg.model_copy(deep=True)
    raw = ClientWorker(raw_cfg).run_group(
        GroupJob(0, 1, tasks, [{"params": params}], per_client=True)
    )
    norms = np.linalg.norm(raw.aggregate.matrix()[0].astype(np.float64), axis=1)
    initial, received = float(norms.min()) / 4, float(np.median(norms))
    private = cfg.model_copy(deep=True)
    private.privacy = PrivacyConfig(
        clip_norm=initial, noise_multiplier=0.0, adaptive_clipping={"target_quantile": 0.5}
    )
    model = {"params": params, "dp.clip_norm": np.array([received], np.float32)}
    out = ClientWorker(private).run_group(GroupJob(0, 1, tasks, [model], per_client=True))
    clipped = np.linalg.norm(out.aggregate.matrix()[0].astype(np.float64), axis=1)
    assert np.all(clipped <= received * (1 + 1e-6)) and clipped.max() > 2 * initial
    np.testing.assert_allclose(clipped, np.minimum(norms, received), rtol=1e-5)
    assert out.num_clipped == int((norms > received).sum())
