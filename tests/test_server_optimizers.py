"""FedAvgM and FedAdagrad / FedAdam / FedYogi against hand-computed steps and a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.strategies.aggregate import Aggregate
from fedray.strategies.fedavg import FedAvg
from fedray.strategies.fedavgm import FedAvgM
from fedray.strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi

VARIANTS = {"adagrad": FedAdagrad, "adam": FedAdam, "yogi": FedYogi}


def run_rounds(strategy, x0, rounds):
    """Apply (update_sum, weight_sum) pairs in order; returns every state, the initial one first."""
    states = [strategy.init(np.asarray(x0, dtype=np.float32))]
    for update_sum, weight_sum in rounds:
        states.append(
            strategy.server_step(
                states[-1], Aggregate.of_sum(np.asarray(update_sum, float), weight_sum)
            )
        )
    return states


# ---------------------------------------------------------------------------------------- FedAvgM


def test_fedavgm_two_rounds_golden():
    # Prepare: η = 0.5, β = 0.9; round 1 mean update [0.2, -0.1] (weight 4), round 2 [-0.4, -0.1]
    strategy = FedAvgM(server_lr=0.5, momentum=0.9)
    rounds = [([0.8, -0.4], 4.0), ([-0.4, -0.1], 1.0)]
    # Execute
    _, first, second = run_rounds(strategy, [1.0, 0.0], rounds)
    # Assert: v1 = Δ1 = [0.2, -0.1], x1 = x0 + 0.5 v1 = [1.1, -0.05]
    np.testing.assert_allclose(first.velocity, [0.2, -0.1], rtol=1e-12)
    np.testing.assert_allclose(first.params, [1.1, -0.05], rtol=1e-6)
    # v2 = 0.9 v1 + Δ2 = [0.18 - 0.4, -0.09 - 0.1], x2 = x1 + 0.5 v2 = [1.1 - 0.11, -0.05 - 0.095]
    np.testing.assert_allclose(second.velocity, [-0.22, -0.19], rtol=1e-12)
    np.testing.assert_allclose(second.params, [0.99, -0.145], rtol=1e-6)
    assert (first.version, second.version) == (1, 2)
    assert second.params.dtype == np.float32 and second.velocity.dtype == np.float64


def test_fedavgm_without_momentum_is_fedavg():
    # Prepare
    rng = np.random.default_rng(0)
    rounds = [(rng.normal(size=6), float(w)) for w in (3, 5, 2)]
    x0 = rng.normal(size=6)
    # Execute
    with_m = run_rounds(FedAvgM(server_lr=0.7, momentum=0.0), x0, rounds)[-1]
    plain = run_rounds(FedAvg(server_lr=0.7), x0, rounds)[-1]
    # Assert
    np.testing.assert_allclose(with_m.params, plain.params, rtol=1e-6)


def test_fedavgm_no_reports_keeps_state_and_does_not_mutate():
    # Prepare
    strategy = FedAvgM()
    state = run_rounds(strategy, [1.0, 2.0], [([1.0, 1.0], 2.0)])[-1]
    params, velocity = state.params.copy(), state.velocity.copy()
    # Execute
    same = strategy.server_step(state, Aggregate.of_sum(np.zeros(2), 0.0))
    strategy.server_step(state, Aggregate.of_sum(np.ones(2), 1.0))
    # Assert
    assert same is state
    np.testing.assert_array_equal(state.params, params)
    np.testing.assert_array_equal(state.velocity, velocity)


# ------------------------------------------------------------------- FedAdagrad / FedAdam / FedYogi


def test_fedadagrad_check_vector():
    # Prepare: x0 = 0.1, two clients reach 0.2 and 1.0 with equal weight, so Δ = 0.6 - 0.1 = 0.5.
    # 0.15 needs m_1 = Δ and v_1 = Δ² = 0.25: x1 = 0.1 + 0.1 · 0.5 / (0.5 + 0.5). That holds with
    # β1 = 0 and v_{-1} = 0 (Flower's FedAdagrad defaults), or with v_{-1} = 0 and bias correction
    # (m̂_1 = m_1 / (1 - β1) = Δ for any β1). It does not hold with the paper's β1 = 0.9 and
    # v_{-1} = τ².
    x0 = np.array([0.1], dtype=np.float32)
    update_sum = (0.2 - 0.1) * 1 + (1.0 - 0.1) * 1  # Σ n_k Δ_k with n_k = 1
    flower = FedAdagrad(server_lr=0.1, tau=0.5, beta1=0.0, initial_accumulator=0.0)
    corrected = FedAdagrad(server_lr=0.1, tau=0.5, initial_accumulator=0.0, bias_correction=True)
    paper = FedAdagrad(server_lr=0.1, tau=0.5)
    # Execute
    steps = [
        s.server_step(s.init(x0), Aggregate.of_sum(np.array([update_sum]), 2.0))
        for s in (flower, corrected, paper)
    ]
    # Assert
    np.testing.assert_allclose(steps[0].params, [0.15], rtol=1e-6)
    np.testing.assert_allclose(steps[1].params, [0.15], rtol=1e-6)
    # paper: m1 = 0.1 · 0.5 = 0.05, v1 = 0.25 + 0.25 = 0.5
    np.testing.assert_allclose(
        steps[2].params, [0.1 + 0.1 * 0.05 / (np.sqrt(0.5) + 0.5)], rtol=1e-6
    )


# Two rounds on x0 = [0.1, 0.0] with η = 0.1, β1 = 0.5, β2 = 0.75, τ = 0.5, v_{-1} = τ² = 0.25:
# Δ1 = [1.0, 0.2] / 2 = [0.5, 0.1] and Δ2 = [-3.0, 0.6] / 3 = [-1.0, 0.2], so
# m1 = 0.5 Δ1 = [0.25, 0.05] and m2 = 0.5 m1 + 0.5 Δ2 = [-0.375, 0.125].
# Yogi's first coordinate starts with v = Δ1² = 0.25 (sign 0: v stays), then v < Δ2² (v grows);
# its second coordinate has v > Δ² in both rounds (v shrinks).
HAND_V = {
    # v1 = v0 + Δ1²,  v2 = v1 + Δ2²
    "adagrad": ([0.25 + 0.25, 0.25 + 0.01], [0.5 + 1.0, 0.26 + 0.04]),
    # v1 = 0.75 v0 + 0.25 Δ1²,  v2 = 0.75 v1 + 0.25 Δ2²
    "adam": ([0.1875 + 0.0625, 0.1875 + 0.0025], [0.1875 + 0.25, 0.1425 + 0.01]),
    # v1 = v0 - 0.25 Δ1² sign(v0 - Δ1²),  v2 = v1 - 0.25 Δ2² sign(v1 - Δ2²)
    "yogi": ([0.25 - 0.0, 0.25 - 0.0025], [0.25 + 0.25, 0.2475 - 0.01]),
}


@pytest.mark.parametrize("rule", sorted(VARIANTS))
def test_fedopt_two_rounds_golden(rule):
    # Prepare
    strategy = VARIANTS[rule](server_lr=0.1, beta1=0.5, beta2=0.75, tau=0.5)
    rounds = [([1.0, 0.2], 2.0), ([-3.0, 0.6], 3.0)]
    v1, v2 = (np.array(v) for v in HAND_V[rule])
    x1 = np.array([0.1, 0.0]) + 0.1 * np.array([0.25, 0.05]) / (np.sqrt(v1) + 0.5)
    x2 = x1 + 0.1 * np.array([-0.375, 0.125]) / (np.sqrt(v2) + 0.5)
    # Execute
    _, first, second = run_rounds(strategy, [0.1, 0.0], rounds)
    # Assert
    np.testing.assert_allclose(first.m, [0.25, 0.05], rtol=1e-12)
    np.testing.assert_allclose(second.m, [-0.375, 0.125], rtol=1e-12)
    np.testing.assert_allclose(first.v, v1, rtol=1e-12)
    np.testing.assert_allclose(second.v, v2, rtol=1e-12)
    np.testing.assert_allclose(first.params, x1, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(second.params, x2, rtol=1e-6, atol=1e-8)
    assert (first.version, second.version) == (1, 2)
    assert second.params.dtype == np.float32 and second.v.dtype == np.float64


@pytest.mark.parametrize("rule", sorted(VARIANTS))
def test_bias_correction_first_step(rule):
    # Prepare: v_{-1} = 0, β1 = 0.9, β2 = 0.99, Δ = [0.5, -2.0]
    delta, eta, tau = np.array([0.5, -2.0]), 0.1, 1e-3
    options = dict(server_lr=eta, tau=tau, initial_accumulator=0.0)
    plain, corrected = (VARIANTS[rule](**options, bias_correction=bc) for bc in (False, True))
    x0 = np.zeros(2, dtype=np.float32)
    # Execute
    x_plain = plain.server_step(plain.init(x0), Aggregate.of_sum(delta, 1.0)).params
    x_corr = corrected.server_step(corrected.init(x0), Aggregate.of_sum(delta, 1.0)).params
    # Assert: corrected, m̂1 = Δ and v̂1 = Δ² for every variant (Adagrad's v1 = Δ² needs none)
    np.testing.assert_allclose(x_corr, eta * delta / (np.abs(delta) + tau), rtol=1e-6)
    # uncorrected: m1 = 0.1 Δ; v1 = Δ² for Adagrad, 0.01 Δ² for Adam and Yogi
    v1 = delta**2 if rule == "adagrad" else 0.01 * delta**2
    np.testing.assert_allclose(x_plain, eta * 0.1 * delta / (np.sqrt(v1) + tau), rtol=1e-6)


def reference_fedopt(rule, x0, rounds, *, eta, beta1, beta2, tau, v0, bias_correction):
    """Algorithm 2 of Reddi et al., written out independently of fedray, one coordinate at a time."""
    x = [float(c) for c in x0]
    m, v, t = [0.0] * len(x), [v0] * len(x), 0
    for update_sum, weight_sum in rounds:
        if weight_sum <= 0:
            continue
        t += 1
        for j in range(len(x)):
            g = update_sum[j] / weight_sum
            m[j] = beta1 * m[j] + (1 - beta1) * g
            if rule == "adagrad":
                v[j] = v[j] + g * g
            elif rule == "adam":
                v[j] = beta2 * v[j] + (1 - beta2) * g * g
            else:
                v[j] = v[j] - (1 - beta2) * g * g * np.sign(v[j] - g * g)
            m_hat, v_hat = m[j], v[j]
            if bias_correction:
                m_hat = m[j] / (1 - beta1**t)
                if rule != "adagrad":
                    v_hat = v[j] / (1 - beta2**t)
            x[j] = float(np.float32(x[j] + eta * m_hat / (np.sqrt(v_hat) + tau)))
    return np.array(x)


@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("rule", sorted(VARIANTS))
def test_fedopt_matches_reference_with_a_silent_round(rule, bias_correction):
    # Prepare: five rounds, the third with nobody reporting (t must not advance)
    rng = np.random.default_rng(7)
    x0 = rng.normal(size=4).astype(np.float32)
    weights = [3.0, 1.0, 0.0, 4.0, 2.0]
    rounds = [(rng.normal(size=4) * w, w) for w in weights]
    options = dict(eta=0.05, beta1=0.8, beta2=0.9, tau=0.01, v0=0.01**2)
    strategy = VARIANTS[rule](
        server_lr=0.05, beta1=0.8, beta2=0.9, tau=0.01, bias_correction=bias_correction
    )
    # Execute
    states = run_rounds(strategy, x0, rounds)
    expected = reference_fedopt(rule, x0, rounds, **options, bias_correction=bias_correction)
    # Assert
    assert states[3] is states[2]
    assert states[-1].version == 4
    np.testing.assert_allclose(states[-1].params, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("rule", sorted(VARIANTS))
def test_fedopt_no_reports_keeps_state_and_does_not_mutate(rule):
    # Prepare
    strategy = VARIANTS[rule]()
    state = run_rounds(strategy, [1.0, -1.0], [([0.3, -0.2], 2.0)])[-1]
    saved = (state.params.copy(), state.m.copy(), state.v.copy())
    # Execute
    same = strategy.server_step(state, Aggregate.of_sum(np.zeros(2), 0.0))
    strategy.server_step(state, Aggregate.of_sum(np.array([1.0, 1.0]), 1.0))
    # Assert
    assert same is state and same.version == 1
    for before, after in zip(saved, (state.params, state.m, state.v), strict=True):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(beta1=1.0), "beta1 must be in"),
        (dict(beta2=-0.1), "beta2 must be in"),
        (dict(tau=0.0), "tau must be > 0"),
        (dict(server_lr=0.0), "server_lr must be > 0"),
        (dict(initial_accumulator=-1.0), "initial_accumulator must be >= 0"),
    ],
)
def test_fedopt_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        FedAdam(**options)


def test_fedopt_defaults_and_bare_base():
    assert FedYogi().init(np.zeros(3)).v.tolist() == [1e-6] * 3  # v_{-1} = τ² by default
    assert not FedAdam().new_aggregate().keep_rows  # a sum: workers pre-sum
    with pytest.raises(TypeError, match="FedAdagrad, FedAdam or FedYogi"):
        FedOpt()
    with pytest.raises(ValueError, match="momentum must be in"):
        FedAvgM(momentum=1.0)
