"""Golden vectors for macro F1 and conlleval-style entity F1, and a numpy reference for macro F1."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.workloads.ecommerce.metrics import entities, entity_f1, macro_f1


def test_macro_f1_golden_vector():
    # class 0: P=1/2 R=1/2 F=1/2; class 1: P=2/3 R=1 F=4/5; class 2: never predicted, F=0
    assert macro_f1([0, 0, 1, 1, 2], [0, 1, 1, 1, 0]) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert macro_f1([3, 3], [3, 3]) == 1.0


def reference_macro_f1(y_true, y_pred):
    """Per-class precision and recall by counting, classes present in either array."""
    scores = []
    for c in sorted(set(y_true) | set(y_pred)):
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred, strict=True))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred, strict=True))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return float(np.mean(scores))


def test_macro_f1_matches_a_counting_reference_on_random_labels():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y_true = rng.integers(0, 7, size=60)
        y_pred = np.where(rng.random(60) < 0.5, y_true, rng.integers(0, 9, size=60))
        assert macro_f1(y_true, y_pred) == pytest.approx(
            reference_macro_f1(y_true.tolist(), y_pred.tolist())
        )


def test_entities_follow_conlleval():
    assert entities(["B-BRAND", "I-BRAND", "O", "B-COLOR"]) == {("BRAND", 0, 2), ("COLOR", 3, 4)}
    assert entities(["O", "I-MODEL", "I-MODEL"]) == {("MODEL", 1, 3)}  # I- after O starts one
    assert entities(["B-A", "I-B"]) == {("A", 0, 1), ("B", 1, 2)}  # a type change splits
    assert entities(["B-A", "B-A"]) == {("A", 0, 1), ("A", 1, 2)}


def test_entity_f1_golden_vector():
    gold = [["B-BRAND", "I-BRAND", "O", "B-COLOR"], ["B-TYPE", "I-TYPE"]]
    pred = [["B-BRAND", "I-BRAND", "O", "B-SIZE"], ["B-TYPE", "O"]]
    # one of three gold entities found exactly (wrong type and wrong boundary don't count)
    precision, recall, f1 = entity_f1(gold, pred)
    assert (precision, recall, f1) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert entity_f1(gold, gold) == (1.0, 1.0, 1.0)
    assert entity_f1(gold, [["O"] * 4, ["O"] * 2]) == (0.0, 0.0, 0.0)
