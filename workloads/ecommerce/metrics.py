"""Macro F1 over classes and entity-level micro F1 over BIO sequences.

Macro F1 follows scikit-learn's ``f1_score(average="macro")``: the unweighted mean of per-class F1
over the classes present in the gold or predicted labels, with F1 = 0 where precision and recall
are both 0. Entity F1 follows the CoNLL-2000 ``conlleval`` script (Tjong Kim Sang & Buchholz 2000):
an entity counts only if its type and both boundaries match exactly; an ``I-X`` that does not
continue an ``X`` entity starts a new one.
"""

from __future__ import annotations

import numpy as np


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return float("nan")
    classes = np.union1d(y_true, y_pred)
    k = np.searchsorted(classes, y_true) * len(classes) + np.searchsorted(classes, y_pred)
    confusion = np.bincount(k, minlength=len(classes) ** 2).reshape(len(classes), -1)
    tp = np.diag(confusion).astype(np.float64)
    gold, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    # F1 = 2TP / (|gold| + |predicted|); both are ≥ 1 for a class present in either
    return float(np.mean(2 * tp / (gold + predicted)))


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, start, end-exclusive) spans of a BIO tag sequence, conlleval-style."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and kind == label
        if start is not None and not continues:
            spans.add((kind, start, i))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and not continues):
            start, kind = i, label
    return spans


def entity_f1(gold: list[list[str]], predicted: list[list[str]]) -> tuple[float, float, float]:
    """Micro-averaged (precision, recall, F1) of exact entity matches over all sentences."""
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, predicted, strict=True):
        eg, ep = entities(g), entities(p)
        tp += len(eg & ep)
        n_gold += len(eg)
        n_pred += len(ep)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1
