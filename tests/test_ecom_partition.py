"""Seeded partitioners: natural, Dirichlet label skew, power-law quantity skew, statistics."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.workloads.ecommerce import partition as part


def covers_everything_once(parts, n):
    joined = np.concatenate(parts)
    return len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))


def test_natural_is_one_client_per_group():
    groups = np.array([2, 0, 1, 0, 2, 2])
    parts = part.natural(groups)
    assert [p.tolist() for p in parts] == [[1, 3], [2], [0, 4, 5]]


def test_dirichlet_small_alpha_skews_labels_large_alpha_does_not():
    labels = np.repeat(np.arange(10), 300)

    def mean_majority(alpha):
        parts = part.dirichlet(labels, 20, alpha, np.random.default_rng(0))
        assert covers_everything_once(parts, len(labels))
        stats = part.statistics(
            parts, np.array([len(p) for p in parts]), labels, list("abcdefghij")
        )
        return np.mean(stats["majority_fraction"]), np.mean(stats["num_labels"])

    skewed, few_labels = mean_majority(0.1)
    flat, all_labels = mean_majority(100.0)
    assert skewed > 0.5 and few_labels < 5  # Dir(0.1): a client holds mostly one or two classes
    assert flat < 0.2 and all_labels == 10  # Dir(100): close to the uniform 1/10


def test_dirichlet_is_seeded_and_refuses_impossible_splits():
    labels = np.repeat(np.arange(4), 50)
    a = part.dirichlet(labels, 8, 0.5, np.random.default_rng(3))
    b = part.dirichlet(labels, 8, 0.5, np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(part.PartitionError, match="lower clients.num_clients to at most 100"):
        part.dirichlet(labels, 150, 0.5, np.random.default_rng(0))


def test_power_law_sizes_follow_rank_to_the_minus_exponent():
    n, k, s = 20_000, 50, 1.2
    parts = part.power_law(n, k, s, np.random.default_rng(1), min_size=2)
    assert covers_everything_once(parts, n)
    sizes = np.sort([len(p) for p in parts])[::-1]
    assert sizes.min() >= 2
    # size(rank r) - min_size ∝ r^-s: log-log slope of the sorted sizes is -s
    ranks = np.arange(1, k + 1)
    slope = np.polyfit(np.log(ranks[1:]), np.log(sizes[1:] - 2), 1)[0]
    assert slope == pytest.approx(-s, abs=0.05)
    # exponent 0 is an equal split
    equal = part.power_law(n, k, 0.0, np.random.default_rng(1))
    assert max(len(p) for p in equal) - min(len(p) for p in equal) <= k


def test_statistics_columns_are_per_client_counts():
    labels = np.array([0, 0, 1, 2, 2, 2])
    parts = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    stats = part.statistics(parts, np.array([2, 2]), labels, ["a", "b", "c"])
    assert stats["label_counts"] == [[2, 1, 0], [0, 0, 3]]
    assert stats["num_test"] == [1, 1] and stats["num_labels"] == [2, 1]
    assert stats["majority_fraction"] == pytest.approx([2 / 3, 1.0])
