"""Aggregation conventions users compare against (issue 19): FedOpt's three bias-correction
conventions and Multi-Krum's two weightings, each computed by hand-written numpy from its
formula over 3 rounds of seeded updates and compared at float32 rounding.

The strategies keep the model in float32 (and moments in float64), so the references do too:
there is no float64 model path to test."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.config import config_from_dict
from fedray.errors import ConfigError
from fedray.strategies import FedAdagrad, FedAdam, FedYogi, RobustAggregation
from fedray.strategies.aggregate import Aggregate
from fedray.strategies.robust import krum_scores, multi_krum

ETA, B1, B2, TAU = 0.05, 0.9, 0.99, 1e-3


def seeded_rounds(d: int = 7, rounds: int = 3):
    rng = np.random.default_rng(19)
    x0 = rng.normal(size=d).astype(np.float32)
    deltas = [rng.normal(scale=0.1, size=d) for _ in range(rounds)]
    return x0, deltas


def reference(x0, deltas, second_moment, mode, v0=TAU**2, corrects_v=True):
    """The conventions by their formulas (module docstring of fedray.strategies.fedopt)."""
    x, m, v = x0.copy(), np.zeros(x0.size), np.full(x0.size, v0)
    for t, delta in enumerate(deltas, start=1):
        m = B1 * m + (1 - B1) * delta
        v = second_moment(v, delta)
        m_hat, v_hat, lr = m, v, ETA
        if mode == "moments":  # Adam, Kingma & Ba 2015, Algorithm 1
            m_hat = m / (1 - B1**t)
            v_hat = v / (1 - B2**t) if corrects_v else v
        elif mode == "step":  # Flower: eta * sqrt(1 - beta2^(t+1)) / (1 - beta1^(t+1))
            lr = ETA * np.sqrt(1 - B2 ** (t + 1)) / (1 - B1 ** (t + 1))
        x = (x.astype(np.float64) + lr * m_hat / (np.sqrt(v_hat) + TAU)).astype(np.float32)
    return x


SECOND_MOMENTS = {
    "fedadam": (FedAdam, lambda v, d: B2 * v + (1 - B2) * d * d, True),
    "fedyogi": (FedYogi, lambda v, d: v - (1 - B2) * d * d * np.sign(v - d * d), True),
    "fedadagrad": (FedAdagrad, lambda v, d: v + d * d, False),
}


@pytest.mark.parametrize("mode", ["none", "moments", "step"])
@pytest.mark.parametrize("name", list(SECOND_MOMENTS))
def test_fedopt_bias_corrections_match_their_formulas(name, mode):
    cls, second_moment, corrects_v = SECOND_MOMENTS[name]
    if mode == "step" and not corrects_v:
        with pytest.raises(ValueError, match="no second-moment decay"):
            cls(server_lr=ETA, bias_correction=mode)
        return
    # Prepare
    x0, deltas = seeded_rounds()
    strategy = cls(server_lr=ETA, beta1=B1, beta2=B2, tau=TAU, bias_correction=mode)
    # Execute: 3 rounds, each one client of weight 2 with update Δ (mean Δ)
    state = strategy.init(x0)
    for delta in deltas:
        state = strategy.server_step(state, Aggregate.of_sum(2.0 * delta, 2.0))
    # Assert
    expected = reference(x0, deltas, second_moment, mode, corrects_v=corrects_v)
    np.testing.assert_allclose(state.params, expected, rtol=1e-6, atol=1e-7)
    assert state.version == 3


def test_the_conventions_differ_and_flower_starts_from_zero():
    x0, deltas = seeded_rounds()
    finals = {}
    for mode in ("none", "moments", "step"):
        strategy = FedAdam(server_lr=ETA, tau=1e-9, initial_accumulator=0.0, bias_correction=mode)
        state = strategy.init(x0)
        for delta in deltas:
            state = strategy.server_step(state, Aggregate.of_sum(delta, 1.0))
        finals[mode] = state.params
    assert not np.allclose(finals["none"], finals["step"], rtol=1e-4)
    assert not np.allclose(finals["moments"], finals["step"], rtol=1e-4)
    # Flower's FedAdam (v_0 = 0, tau 1e-9), first round by hand: m = 0.1 Δ, v = 0.01 Δ²,
    # η_1 = η sqrt(1 - 0.99²) / (1 - 0.9²), step ≈ η_1 · 0.1 Δ / (0.1 |Δ|) = η_1 sign(Δ)
    strategy = FedAdam(server_lr=ETA, tau=1e-9, initial_accumulator=0.0, bias_correction="step")
    one = strategy.server_step(strategy.init(x0), Aggregate.of_sum(deltas[0], 1.0))
    eta_1 = ETA * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    np.testing.assert_allclose(one.params - x0, eta_1 * np.sign(deltas[0]), rtol=1e-5)


def test_bias_correction_keys_and_their_old_boolean_spelling():
    def strategy(value):
        cfg = config_from_dict({"strategy": {"name": "fedadam", "bias_correction": value}})
        return cfg.strategy.bias_correction

    assert strategy(True) == "moments" and strategy(False) == "none"
    assert strategy("step") == "step"
    assert FedAdam(bias_correction=True).bias_correction == "moments"
    with pytest.raises(ConfigError, match="bias_correction"):
        config_from_dict({"strategy": {"name": "fedadam", "bias_correction": "adam"}})
    with pytest.raises(ConfigError, match="no second-moment decay"):
        config_from_dict({"strategy": {"name": "fedadagrad", "bias_correction": "step"}})


def krum_inputs():
    rng = np.random.default_rng(7)
    honest = rng.normal(0.0, 0.1, size=(8, 5)) + 1.0
    byzantine = rng.normal(0.0, 0.1, size=(2, 5)) - 20.0
    updates = np.vstack([honest, byzantine])
    weights = rng.integers(10, 500, size=10).astype(np.float64)
    return updates, weights


def test_multi_krum_weightings_against_np_average():
    updates, weights = krum_inputs()
    f, m = 2, 5
    chosen = np.sort(np.argsort(krum_scores(updates, f), kind="stable")[:m])
    assert (chosen < 8).all()  # Krum's choice leaves the Byzantine rows out
    uniform = multi_krum(updates, f, m)
    weighted = multi_krum(updates, f, m, weights)
    np.testing.assert_allclose(uniform, updates[chosen].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        weighted, np.average(updates[chosen], axis=0, weights=weights[chosen]), rtol=1e-12
    )
    assert not np.allclose(uniform, weighted)


@pytest.mark.parametrize("weighting", [None, "uniform", "num_samples"])
def test_multi_krum_strategy_steps_by_its_weighting_over_three_rounds(weighting):
    updates, weights = krum_inputs()
    strategy = RobustAggregation("multi_krum", f=2, m=5, server_lr=0.5, weighting=weighting)
    x = np.zeros(5, dtype=np.float32)
    state = strategy.init(x)
    for r in range(3):
        rows = updates * (r + 1)
        state = strategy.server_step(state, Aggregate.of_rows(rows, weights))
        chosen = np.sort(np.argsort(krum_scores(rows, 2), kind="stable")[:5])
        step = (
            np.average(rows[chosen], axis=0, weights=weights[chosen])
            if weighting == "num_samples"
            else rows[chosen].mean(axis=0)
        )
        x = (x.astype(np.float64) + 0.5 * step).astype(np.float32)
    np.testing.assert_allclose(state.params, x, rtol=1e-6)


def test_weighting_belongs_to_multi_krum():
    with pytest.raises(ValueError, match="weighting is not used by rule='krum'"):
        RobustAggregation("krum", f=1, weighting="num_samples")
    with pytest.raises(ConfigError, match="weighting is not used by rule='median'"):
        config_from_dict({"strategy": {"name": "robust", "rule": "median", "weighting": "uniform"}})
    cfg = config_from_dict(
        {"strategy": {"name": "robust", "rule": "multi_krum", "f": 1, "weighting": "num_samples"}}
    )
    assert cfg.strategy.weighting == "num_samples"
