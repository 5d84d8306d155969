"""Poisson client sampling for DP-FedAvg (``privacy.sampling: poisson``): the accountant matches
the established check values, cohorts have the binomial sizes Poisson sampling implies, and a
private run is the same for any number of workers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fedray
from fedray.clients.profiles import ProfileModel
from fedray.config import ProfileConfig, config_from_dict
from fedray.errors import ConfigError
from fedray.privacy import Accountant, epsilon_after
from fedray.results.schema import NONDETERMINISTIC_COLUMNS
from fedray.sim.selection import select_poisson


@pytest.mark.parametrize(
    "num_clients, sample_size, z, steps, expected",
    [
        # Opacus's RDP test value (q = 0.04, σ = 1.5, 2250 steps, δ = 1e-5): 7.3291;
        # dp_accounting's RDP with its default orders gives 7.32933
        (2500, 100, 1.5, 2250, 7.3291),
        # TF Privacy's MNIST setting: N = 60000, B = 150, z = 1.3, 15 epochs = 6000 steps;
        # TF Privacy reports "ε ≈ 0.72"; the same RDP computation gives 0.72422
        (60000, 150, 1.3, 6000, 0.72422),
    ],
)
def test_poisson_accounting_matches_the_established_check_values(
    num_clients, sample_size, z, steps, expected
):
    eps = epsilon_after(
        steps,
        noise_multiplier=z,
        num_clients=num_clients,
        sample_size=sample_size,
        delta=1e-5,
        sampling="poisson",
    )
    assert eps == pytest.approx(expected, rel=1e-3)


def test_poisson_and_fixed_size_sampling_are_accounted_apart():
    common = dict(noise_multiplier=1.0, num_clients=1000, sample_size=100, delta=1e-5)
    fixed, poisson = Accountant(**common), Accountant(**common, sampling="poisson")
    # without replacement under replace-one is the larger bound (fedray.privacy's docstring)
    assert fixed.epsilon(50) > 5 * poisson.epsilon(50) > 0
    assert poisson.name == "rdp, poisson sampled, add/remove-one"


def test_poisson_cohorts_have_binomial_sizes_and_are_seeded():
    profiles = ProfileModel(ProfileConfig(), seed=0)
    n, rate, rounds = 5000, 0.02, 400
    sizes = []
    for r in range(1, rounds + 1):
        cohort = select_poisson(seed=1, round_=r, num_clients=n, rate=rate, profiles=profiles)
        assert len(np.unique(cohort)) == len(cohort) and cohort.max(initial=0) < n
        sizes.append(len(cohort))
    again = select_poisson(seed=1, round_=7, num_clients=n, rate=rate, profiles=profiles)
    first = select_poisson(seed=1, round_=7, num_clients=n, rate=rate, profiles=profiles)
    np.testing.assert_array_equal(again, first)
    # Fixed-seed statistical check: mean N q = 100 and variance N q (1 - q) = 98 within 4 sigma
    sizes = np.asarray(sizes, dtype=np.float64)
    assert abs(sizes.mean() - n * rate) < 4 * np.sqrt(n * rate * (1 - rate) / rounds)
    assert 0.7 * n * rate * (1 - rate) < sizes.var() < 1.3 * n * rate * (1 - rate)
    # and every client is equally likely: membership over many rounds is uniform-ish
    counts = np.bincount(
        np.concatenate(
            [
                select_poisson(seed=2, round_=r, num_clients=50, rate=0.2, profiles=profiles)
                for r in range(1, 2001)
            ]
        ),
        minlength=50,
    )
    assert counts.sum() > 0 and counts.min() > 320 and counts.max() < 480  # mean 400, sd 18


def test_poisson_sampling_refuses_over_selection():
    with pytest.raises(ConfigError, match="over_selection does not apply"):
        config_from_dict(
            {
                "over_selection": 1.5,
                "privacy": {"clip_norm": 1.0, "noise_multiplier": 1.0, "sampling": "poisson"},
            }
        )


def test_a_poisson_private_run_is_the_same_for_any_worker_count(ray_session, small_config):
    small_config.update(rounds=4, clients_per_round=6)
    small_config["privacy"] = {"clip_norm": 0.3, "noise_multiplier": 1.1, "sampling": "poisson"}

    def run(name, workers):
        cfg = {
            **small_config,
            "execution": {**small_config["execution"], "num_workers": workers},
            "output": {**small_config["output"], "name": name, "checkpoint_every": 0},
        }
        return fedray.run(config_from_dict(cfg), progress=False)

    one, two = run("p1", 1), run("p2", 2)
    for table in ("rounds", "clients"):
        a = getattr(one, table).drop(columns=list(NONDETERMINISTIC_COLUMNS), errors="ignore")
        b = getattr(two, table).drop(columns=list(NONDETERMINISTIC_COLUMNS), errors="ignore")
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    selected = one.rounds["num_selected"]
    assert selected.nunique() > 1 or selected.iloc[0] != 6  # sizes vary around K = 6
    expected = [
        epsilon_after(
            r, noise_multiplier=1.1, num_clients=40, sample_size=6, delta=1e-5, sampling="poisson"
        )
        for r in one.rounds["round"]
    ]
    np.testing.assert_allclose(one.rounds["dp_epsilon"], expected, rtol=1e-12)
    assert one.summary["privacy"]["sampling"] == "poisson"
