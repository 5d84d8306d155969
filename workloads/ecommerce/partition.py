"""Seeded partitioners: which examples each client holds, and the per-client statistics.

Plain numpy over arrays of labels/groups; every function takes its ``numpy.random.Generator``,
so a partition is a pure function of (seed, data). Each returns one sorted index array per client.

* :func:`natural` — one client per platform or shop: the silos as the world made them.
* :func:`dirichlet` — label skew: for each class c, p_c ~ Dir(α·1_N) splits c's examples over the
  N clients (Hsu, Qi, Brown 2019, "Measuring the Effects of Non-Identical Data Distribution for
  Federated Visual Classification"; resampled until every client has ``min_size`` examples, as
  in Yurochkin et al. 2019's reference code). Small α: few classes per client; large α: IID.
* :func:`power_law` — quantity skew with IID labels: the client of rank r holds a share ∝ r^(−s)
  (Zipf), ranks shuffled over clients (Li et al. 2022, "Federated Learning on Non-IID Data Silos:
  An Experimental Study", quantity-based skew).
* :func:`iid` — a uniform random split into near-equal parts.
"""

from __future__ import annotations

import numpy as np


class PartitionError(ValueError):
    """The data cannot be split as asked (e.g. fewer examples than clients × min_size)."""


def natural(groups: np.ndarray) -> list[np.ndarray]:
    """One client per distinct group value, in increasing group order."""
    groups = np.asarray(groups)
    return [np.flatnonzero(groups == g) for g in np.unique(groups)]


def iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    _check_size(n, num_clients, 1)
    return [np.sort(p) for p in np.array_split(rng.permutation(n), num_clients)]


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 2,
    max_tries: int = 200,
) -> list[np.ndarray]:
    labels = np.asarray(labels)
    _check_size(len(labels), num_clients, min_size)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise PartitionError(
        f"Dirichlet(alpha={alpha:g}) left a client with fewer than {min_size} examples in "
        f"{max_tries} draws; raise workload.partition.alpha or lower clients.num_clients"
    )


def power_law(
    n: int, num_clients: int, exponent: float, rng: np.random.Generator, min_size: int = 2
) -> list[np.ndarray]:
    _check_size(n, num_clients, min_size)
    share = np.arange(1, num_clients + 1, dtype=np.float64) ** -exponent
    spare = n - num_clients * min_size
    sizes = min_size + np.floor(share / share.sum() * spare).astype(np.int64)
    sizes[0] += n - sizes.sum()  # rounding remainder to the largest client
    sizes = sizes[rng.permutation(num_clients)]  # which client gets which rank
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(p) for p in np.split(rng.permutation(n), cuts)]


def _check_size(n: int, num_clients: int, min_size: int) -> None:
    if n < num_clients * min_size:
        raise PartitionError(
            f"{n} examples cannot give {num_clients} clients {min_size} each; lower "
            f"clients.num_clients to at most {n // min_size} or use more data"
        )


def statistics(
    parts: list[np.ndarray], num_train: np.ndarray, labels: np.ndarray, label_names: list[str]
) -> dict[str, list]:
    """Per-client sizes and label counts, as columns for ``partition.parquet``.

    ``label_counts[k][c]`` counts client k's examples of class ``label_names[c]`` (train + test);
    ``majority_fraction`` is the share of its most common class (1/C for balanced IID, 1 when
    a client holds a single class).
    """
    counts = np.stack([np.bincount(labels[p], minlength=len(label_names)) for p in parts])
    sizes = counts.sum(axis=1)
    return {
        "client_id": list(range(len(parts))),
        "num_examples": sizes.tolist(),
        "num_train": [int(v) for v in num_train],
        "num_test": (sizes - np.asarray(num_train)).tolist(),
        "num_labels": (counts > 0).sum(axis=1).tolist(),
        "majority_fraction": (counts.max(axis=1) / np.maximum(sizes, 1)).tolist(),
        "label_counts": counts.tolist(),
        "label_names": [list(label_names)] * len(parts),
    }
