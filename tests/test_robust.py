"""Robust aggregators against hand-computed values and independent pure-Python references."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from fedray.strategies.aggregate import Aggregate
from fedray.strategies.robust import (
    RobustAggregation,
    coordinate_median,
    krum,
    krum_scores,
    multi_krum,
    trimmed_mean,
)

# Five 1-D updates, three clustered and two far apart.
LINE = np.array([[0.0], [0.1], [0.2], [10.0], [-10.0]])


def reference_krum_scores(rows, f):
    """score(i) = sum of the max(1, n - f - 2) smallest squared distances to the other rows."""
    n = len(rows)
    scores = []
    for i in range(n):
        others = [rows[j].tolist() for j in range(n) if j != i]
        d = sorted(sum((a - b) ** 2 for a, b in zip(rows[i], o, strict=True)) for o in others)
        scores.append(sum(d[: max(1, n - f - 2)]))
    return np.array(scores)


def reference_trimmed_mean(rows, beta):
    cut = int(beta * len(rows))
    return np.array([statistics.fmean(sorted(c)[cut : len(rows) - cut]) for c in rows.T.tolist()])


def clustered_with_outlier(seed=0, n=9, d=5):
    rng = np.random.default_rng(seed)
    cluster = rng.normal(0.0, 0.1, size=(n, d))
    return cluster, np.vstack([cluster[:4], np.full((1, d), 1e6), cluster[4:]])


def test_krum_golden_vector():
    # Prepare: f = 1, so each score sums the n - f - 2 = 2 nearest squared distances:
    # 0 → 0.01 + 0.04, 0.1 → 0.01 + 0.01, 0.2 → 0.01 + 0.04, 10 → 9.8² + 9.9², -10 → 10² + 10.1²
    hand = [0.05, 0.02, 0.05, 96.04 + 98.01, 100.0 + 102.01]
    # Execute
    scores = krum_scores(LINE, f=1)
    chosen = krum(LINE, f=1)
    # Assert: Krum picks 0.1, the middle of the cluster
    np.testing.assert_allclose(scores, hand, rtol=1e-12)
    np.testing.assert_array_equal(chosen, [0.1])


def test_multi_krum_golden_vector():
    # Execute
    best_three = multi_krum(LINE, f=1, m=3)
    default_m = multi_krum(LINE, f=1)  # m = n - f = 4 drops only the worst score (-10)
    # Assert
    np.testing.assert_allclose(best_three, [np.mean([0.0, 0.1, 0.2])], rtol=1e-12)
    np.testing.assert_allclose(default_m, [np.mean([0.0, 0.1, 0.2, 10.0])], rtol=1e-12)
    np.testing.assert_array_equal(multi_krum(LINE, f=1, m=1), krum(LINE, f=1))


def test_krum_scores_match_reference():
    # Prepare
    rows = np.random.default_rng(3).normal(size=(8, 4))
    # Execute / Assert
    for f in (0, 1, 2):
        np.testing.assert_allclose(krum_scores(rows, f), reference_krum_scores(rows, f), rtol=1e-12)


def test_median_and_trimmed_mean_match_reference():
    # Prepare: odd and even row counts, so the median both picks and averages
    rng = np.random.default_rng(4)
    for n in (7, 8):
        rows = rng.normal(size=(n, 6))
        # Execute
        med = coordinate_median(rows)
        trimmed = {beta: trimmed_mean(rows, beta) for beta in (0.0, 0.2, 0.49)}
        # Assert
        np.testing.assert_allclose(med, [statistics.median(c) for c in rows.T], rtol=1e-12)
        for beta, got in trimmed.items():
            np.testing.assert_allclose(got, reference_trimmed_mean(rows, beta), rtol=1e-12)
    np.testing.assert_allclose(trimmed_mean(rows, 0.0), rows.mean(axis=0), rtol=1e-12)


def test_rules_are_permutation_invariant():
    # Prepare
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(9, 7))
    base = (coordinate_median(rows), trimmed_mean(rows, 0.2), krum(rows, 2))
    for _ in range(5):
        shuffled = rows[rng.permutation(len(rows))]
        # Execute
        again = (coordinate_median(shuffled), trimmed_mean(shuffled, 0.2), krum(shuffled, 2))
        # Assert: bit-identical, not merely close
        for a, b in zip(base, again, strict=True):
            np.testing.assert_array_equal(a, b)


def test_median_and_krum_ignore_one_huge_outlier():
    # Prepare
    cluster, rows = clustered_with_outlier()
    lo, hi = cluster.min(axis=0), cluster.max(axis=0)
    # Execute
    med, chosen, trimmed = coordinate_median(rows), krum(rows, f=1), trimmed_mean(rows, 0.1)
    # Assert
    assert np.all((lo <= med) & (med <= hi))
    assert np.all((lo <= trimmed) & (trimmed <= hi))
    assert any(np.array_equal(chosen, row) for row in cluster)
    assert np.abs(rows.mean(axis=0)).min() > 1e4  # the plain mean is dragged away


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: krum(LINE[:1], f=1), "at least 2 updates"),
        (lambda: krum_scores(LINE, f=-1), "integer >= 0"),
        (lambda: multi_krum(LINE, f=1, m=6), r"must be an integer in \[1, n=5\]"),
        (lambda: trimmed_mean(LINE, 0.5), r"must be in \[0, 0.5\)"),
        (lambda: coordinate_median(np.zeros(3)), r"\[n_clients, d\] matrix"),
        (lambda: coordinate_median(np.array([[np.nan]])), "NaN or inf"),
    ],
)
def test_functions_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_strategy_steps_with_the_rule_and_drops_zero_weight_rows():
    # Prepare
    state = RobustAggregation("krum", f=1).init(np.array([1.0], dtype=np.float32))
    krum_half = RobustAggregation("krum", f=1, server_lr=0.5)
    median = RobustAggregation("median")
    rows = np.vstack([LINE, [[5.0]]])
    weights = np.array([1.0, 2.0, 1.0, 1.0, 1.0, 0.0])  # the 5.0 row did no work
    # Execute
    stepped = krum_half.aggregate(state, LINE, np.ones(5))
    med = median.aggregate(state, rows, weights)
    silent = median.aggregate(state, rows, np.zeros(6))
    # Assert
    np.testing.assert_allclose(stepped.params, [1.0 + 0.5 * 0.1], rtol=1e-6)
    np.testing.assert_allclose(med.params, [1.0 + 0.1], rtol=1e-6)  # median of LINE, not of rows
    assert (stepped.version, med.version) == (1, 1)
    assert silent is state
    assert krum_half.new_aggregate().keep_rows  # workers return every update
    via_aggregate = median.server_step(state, Aggregate.of_rows(rows, weights))
    np.testing.assert_array_equal(via_aggregate.params, med.params)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(rule="mean"), "must be one of"),
        (dict(rule="trimmed_mean"), "needs beta"),
        (dict(rule="krum"), "needs f"),
        (dict(rule="median", f=1), "option f is not used by rule='median'"),
        (dict(rule="krum", f=1, m=2), "option m is not used by rule='krum'"),
        (dict(rule="trimmed_mean", beta=0.5), r"beta must be in \[0, 0.5\)"),
        (dict(rule="multi_krum", f=1, m=0), "m must be an integer >= 1"),
        (dict(rule="median", server_lr=0.0), "server_lr must be > 0"),
    ],
)
def test_strategy_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        RobustAggregation(**options)


def test_strategy_rejects_mismatched_shapes():
    strategy = RobustAggregation("median")
    state = strategy.init(np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError, match="weights"):
        strategy.aggregate(state, np.zeros((3, 2)), np.ones(2))
    with pytest.raises(ValueError, match="the model has 2"):
        strategy.aggregate(state, np.zeros((3, 5)), np.ones(3))


def test_issue_check_vectors():
    # Krum, f = 1 over 0.2, 0.7, 1.0: one nearest neighbour each -> scores 0.25, 0.09, 0.09
    rows = np.array([[0.2], [0.7], [1.0]])
    np.testing.assert_allclose(krum_scores(rows, f=1), [0.25, 0.09, 0.09])
    np.testing.assert_allclose(krum(rows, f=1), [0.7])
    np.testing.assert_allclose(coordinate_median(np.array([[0.2], [1.0], [0.5]])), [0.5])
    np.testing.assert_allclose(trimmed_mean(np.array([[0.5], [1.0], [2.0], [100.0]]), 0.25), [1.5])
