"""DP-FedAvg (McMahan et al., ICLR 2018; fedray/privacy.py): clipping on the worker, seeded noise
and the fixed denominator on the driver, the accountant against dp_accounting called directly,
the config's refusals, and small Ray runs."""

from __future__ import annotations

import json
import math
import textwrap

import dp_accounting
import numpy as np
import pandas as pd
import pytest
import yaml
from dp_accounting.rdp import rdp_privacy_accountant as rdp

import fedray
from fedray.cli import main
from fedray.config import PrivacyConfig, config_from_dict
from fedray.errors import ConfigError, UserError
from fedray.execution.worker import ClientWorker, GroupJob, Task
from fedray.privacy import Accountant, add_noise, clip, epsilon_after
from fedray.results.schema import NONDETERMINISTIC_COLUMNS
from fedray.strategies import FedAvg
from fedray.training import flat_params

# ----------------------------------------------------------------------------- worker: clipping


@pytest.mark.parametrize("vectorize", ["on", "off"])
def test_worker_clips_decoded_updates_and_weighs_each_client_once(vectorize):
    # Prepare: the same eight clients, without and with clipping, at a norm between their norms.
    cfg = config_from_dict(
        {"workload": {"max_samples": 400, "eval_clients": 10}, "clients": {"num_clients": 40}}
    )
    cfg.seed, cfg.execution.data_cache_mb, cfg.execution.vectorize = 3, 16, vectorize
    plain = ClientWorker(cfg)
    params = flat_params(plain.model)
    tasks = [Task(c, 1) for c in range(8)]

    def run(worker, per_client=False):
        return worker.run_group(GroupJob(0, 1, tasks, [{"params": params}], per_client=per_client))

    raw = run(plain, per_client=True).aggregate.matrix()[0]
    norms = np.linalg.norm(raw.astype(np.float64), axis=1)
    clip_norm = float(np.median(norms))
    over = norms > clip_norm
    assert 0 < over.sum() < len(tasks)  # some are clipped, some are not

    # Execute
    private = cfg.model_copy(deep=True)
    private.privacy = PrivacyConfig(clip_norm=clip_norm, noise_multiplier=1.0)
    worker = ClientWorker(private)
    each, summed = run(worker, per_client=True), run(worker)
    updates = each.aggregate.matrix()[0]

    # Assert: every contribution within C; unclipped ones untouched, clipped ones scaled onto C.
    clipped_norms = np.linalg.norm(updates.astype(np.float64), axis=1)
    assert np.all(clipped_norms <= clip_norm * (1 + 1e-6))
    np.testing.assert_array_equal(updates[~over], raw[~over])
    np.testing.assert_allclose(clipped_norms[over], clip_norm, rtol=1e-6)
    np.testing.assert_allclose(
        updates[over], raw[over] * (clip_norm / norms[over, None]), rtol=1e-5, atol=1e-9
    )
    assert each.num_clipped == summed.num_clipped == int(over.sum())
    assert summed.aggregate.weight == len(tasks)  # weight 1 each, not n_k
    np.testing.assert_allclose(summed.aggregate.total, updates.astype(np.float64).sum(0))
    # without clipping nothing is counted and the weights stay n_k
    unclipped = run(plain)
    assert unclipped.num_clipped == 0
    assert unclipped.aggregate.weight == unclipped.num_samples.sum() > len(tasks)


def test_clip_is_a_no_op_within_the_norm_and_keeps_the_dtype():
    v = np.array([3.0, 4.0], dtype=np.float32)  # norm 5
    same, was = clip(v, 5.0)
    assert not was and same is v
    out, was = clip(v, 1.0)
    assert was and out.dtype == np.float32
    np.testing.assert_allclose(out, [0.6, 0.8], rtol=1e-6)


# ----------------------------------------------------------------------------- driver: noise


def test_noise_is_seeded_per_round_with_std_z_times_c():
    d, z, c = 400_000, 1.3, 0.25
    base = np.linspace(-1, 1, d)
    noisy = add_noise(base, seed=7, round_=4, noise_multiplier=z, clip_norm=c)
    again = add_noise(base, seed=7, round_=4, noise_multiplier=z, clip_norm=c)
    np.testing.assert_array_equal(noisy, again)
    other_round = add_noise(base, seed=7, round_=5, noise_multiplier=z, clip_norm=c)
    other_seed = add_noise(base, seed=8, round_=4, noise_multiplier=z, clip_norm=c)
    assert not np.array_equal(noisy, other_round) and not np.array_equal(noisy, other_seed)
    noise = noisy - base
    assert noise.dtype == np.float64
    # sample std of d normals has a relative standard error of 1/sqrt(2d) = 0.11%: 6 of those
    assert abs(noise.std() / (z * c) - 1) < 6 / math.sqrt(2 * d)
    assert abs(noise.mean()) < 6 * z * c / math.sqrt(d)
    # z = 0 clips only
    np.testing.assert_array_equal(
        add_noise(base, seed=7, round_=4, noise_multiplier=0.0, clip_norm=c), base
    )


# ----------------------------------------------------------------------------- accountant


def reference_epsilon(rounds, z, n, m, delta):
    """dp_accounting's own composition of `rounds` rounds, through its public API."""
    accountant = rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        n, m, dp_accounting.GaussianDpEvent(z / 2)
    )
    return accountant.compose(event, rounds).get_epsilon(delta)


@pytest.mark.parametrize(("rounds", "z", "n", "m"), [(1, 1.0, 1000, 100), (30, 0.8, 500, 20)])
def test_epsilon_matches_dp_accounting(rounds, z, n, m):
    expected = reference_epsilon(rounds, z, n, m, 1e-5)
    got = epsilon_after(rounds, noise_multiplier=z, num_clients=n, sample_size=m, delta=1e-5)
    assert got == pytest.approx(expected, rel=1e-12)
    acc = Accountant(noise_multiplier=z, num_clients=n, sample_size=m, delta=1e-5)
    assert acc.epsilon(rounds) == pytest.approx(expected, rel=1e-12)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    def eps(rounds, z):
        return epsilon_after(
            rounds, noise_multiplier=z, num_clients=1000, sample_size=50, delta=1e-5
        )

    by_round = [eps(r, 1.0) for r in (1, 5, 20, 50)]
    assert all(0 < a < b < math.inf for a, b in zip(by_round, by_round[1:], strict=False))
    by_noise = [eps(20, z) for z in (0.5, 1.0, 2.0, 4.0)]
    assert all(a > b > 0 for a, b in zip(by_noise, by_noise[1:], strict=False))
    assert eps(3, 0.0) == math.inf and eps(0, 1.0) == 0.0


# ----------------------------------------------------------------------------- config


BASE = {"clients_per_round": 5, "clients": {"num_clients": 50}}
PRIVACY = {"clip_norm": 0.5, "noise_multiplier": 1.0}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"mode": "async", "clients": {"num_clients": 15}},
            "privacy in asynchronous runs needs clients.num_clients >= concurrency + buffer size",
        ),
        (
            {"mode": "async", "privacy": {**PRIVACY, "sampling": "poisson"}},
            "privacy.sampling poisson samples synchronous rounds",
        ),
        (
            {"privacy": {**PRIVACY, "kind": "local"}, "secure_aggregation": {}},
            "privacy.kind local noises every upload on its device",
        ),
        (
            {"mode": "async", "privacy": {**PRIVACY, "adaptive_clipping": {}}},
            "privacy.adaptive_clipping needs central DP in synchronous rounds",
        ),
        (
            {"privacy": {**PRIVACY, "noise_multiplier": 1.0, "adaptive_clipping": {}}},
            "privacy.adaptive_clipping.count_noise_multiplier=0.25 must exceed noise_multiplier",
        ),
        (
            {"strategy": {"name": "robust", "rule": "median"}},
            "privacy cannot be combined with strategy robust",
        ),
        ({"strategy": {"name": "scaffold"}}, "privacy cannot be combined with strategy scaffold"),
        (
            {"mode": "async", "strategy": {"name": "fedasync"}},
            "privacy cannot be combined with strategy fedasync",
        ),
        (
            {"clients": {"num_clients": 50, "profile": {"availability": 0.8}}},
            "set clients.profile.availability (and every tier's) to 1",
        ),
        (
            {"privacy": {**PRIVACY, "epsilon": 3}},
            "unknown key 'privacy.epsilon'; accepted keys here: clip_norm, noise_multiplier, delta",
        ),
        ({"privacy": {"clip_norm": 0.0, "noise_multiplier": 1.0}}, "privacy.clip_norm = 0.0"),
        ({"privacy": {"clip_norm": 1.0, "noise_multiplier": -1}}, "privacy.noise_multiplier = -1"),
        ({"privacy": {**PRIVACY, "delta": 1.0}}, "privacy.delta = 1.0"),
        ({"privacy": {"clip_norm": 1.0}}, "privacy.noise_multiplier: Field required"),
    ],
)
def test_unsupported_privacy_is_a_one_line_error_exit_2(tmp_path, capsys, extra, message):
    data = {**BASE, "privacy": PRIVACY, **extra}
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_privacy_is_off_by_default_and_validates_when_supported():
    assert config_from_dict(BASE).privacy is None
    cfg = config_from_dict({**BASE, "privacy": PRIVACY, "strategy": {"name": "fedadam"}})
    assert cfg.privacy.delta == 1e-5 and cfg.privacy.clip_norm == 0.5


def test_a_workload_with_a_parameter_layout_is_refused_at_run_start(ray_session, tmp_path):
    cfg = config_from_dict(
        {
            "rounds": 1,
            "clients_per_round": 4,
            "workload": {
                "name": "ecom_rec",
                "world": {"cache_dir": str(tmp_path / "cache")},
                "eval_clients": 4,
            },
            "clients": {"num_clients": 20},
            "privacy": PRIVACY,
            "output": {"root": str(tmp_path / "results"), "name": "rec"},
        }
    )
    with pytest.raises(UserError) as caught:
        fedray.run(cfg, progress=False)
    text = str(caught.value)
    assert "privacy needs a dense model" in text and "ecom_rec" in text and "\n" not in text


def test_a_trace_with_partial_availability_is_refused_at_run_start(ray_session, tmp_path):
    trace = tmp_path / "devices.csv"
    trace.write_text(textwrap.dedent("speed,availability\n100,1.0\n80,0.5\n"))
    cfg = config_from_dict(
        {
            **BASE,
            "rounds": 1,
            "clients": {"num_clients": 50, "profile": {"trace": str(trace)}},
            "privacy": PRIVACY,
            "output": {"root": str(tmp_path / "results"), "name": "trace"},
        }
    )
    with pytest.raises(UserError, match="availability column is below 1"):
        fedray.run(cfg, progress=False)


# ----------------------------------------------------------------------------- runs


def test_private_runs_account_clip_and_match_for_any_worker_count(
    ray_session, small_config, monkeypatch
):
    # Dropout leaves some rounds short of K: the denominator must stay K all the same.
    small_config.update(rounds=4, clients_per_round=6)
    small_config["clients"]["profile"] = {"dropout": 0.3}
    small_config["privacy"] = {"clip_norm": 0.3, "noise_multiplier": 1.1, "delta": 1e-4}
    seen = []
    server_step = FedAvg.server_step

    def spy(self, state, aggregate):
        seen.append(aggregate.weight)
        return server_step(self, state, aggregate)

    monkeypatch.setattr(FedAvg, "server_step", spy)

    def run(name, workers):
        cfg = {
            **small_config,
            "execution": {**small_config["execution"], "num_workers": workers},
            "output": {**small_config["output"], "name": name},
        }
        return fedray.run(config_from_dict(cfg), progress=False)

    one, two = run("w1", 1), run("w2", 2)

    rounds = one.rounds
    assert (rounds["num_completed"] < 6).any()  # dropout really cut a round short
    assert seen and set(seen) == {6.0}  # Σ over the survivors / K, the fixed denominator
    eps = rounds["dp_epsilon"].to_numpy()
    assert np.all(np.isfinite(eps)) and np.all(np.diff(eps) > 0)
    expected = [
        epsilon_after(r, noise_multiplier=1.1, num_clients=40, sample_size=6, delta=1e-4)
        for r in rounds["round"]
    ]
    np.testing.assert_allclose(eps, expected, rtol=1e-12)
    clipped = rounds["dp_clipped_fraction"].to_numpy()
    assert np.all((clipped >= 0) & (clipped <= 1)) and clipped.max() > 0

    privacy = one.summary["privacy"]
    assert privacy["epsilon"] == pytest.approx(eps[-1], rel=1e-12)
    assert privacy["delta"] == 1e-4 and privacy["noise_multiplier"] == 1.1
    assert privacy["clip_norm"] == 0.3 and privacy["sample_rate"] == pytest.approx(6 / 40)
    assert "without replacement" in privacy["accountant"]

    cols = [c for c in rounds.columns if c not in NONDETERMINISTIC_COLUMNS]
    pd.testing.assert_frame_equal(rounds[cols], two.rounds[cols], check_exact=True)
    pd.testing.assert_frame_equal(one.clients, two.clients, check_exact=True)


def test_non_private_runs_record_nan_and_no_privacy_block(ray_session, small_config):
    small_config["rounds"] = 1
    result = fedray.run(config_from_dict(small_config), progress=False)
    assert result.rounds["dp_epsilon"].isna().all()
    assert result.rounds["dp_clipped_fraction"].isna().all()
    assert result.summary.get("privacy") is None


def test_the_cli_reports_the_guarantee_next_to_the_accuracy(
    ray_session, small_config, tmp_path, capsys
):
    small_config.update(rounds=2)
    small_config["privacy"] = {"clip_norm": 0.3, "noise_multiplier": 1.1, "delta": 1e-4}
    path = tmp_path / "private.yaml"
    path.write_text(yaml.safe_dump(small_config))

    code = main(["run", str(path), "--quiet"])

    out = capsys.readouterr().out.strip().splitlines()[-1]
    eps = epsilon_after(2, noise_multiplier=1.1, num_clients=40, sample_size=6, delta=1e-4)
    assert code == 0
    assert f", ε {eps:.3g} at δ 0.0001 -> " in out and out.startswith("fedray: 2 rounds")
