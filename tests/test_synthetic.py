"""The Synthetic(α, β) workload: determinism, split, and the paper's generative model."""

from __future__ import annotations

import numpy as np

from fedray.config import config_from_dict
from fedray.workloads import make_workload
from fedray.workloads.synthetic import NUM_CLASSES, NUM_FEATURES


def workload(**overrides):
    return make_workload(config_from_dict({"workload": overrides}).workload, seed=11)


def test_client_data_is_a_pure_function_of_seed_and_id():
    a, b = workload().client_data(42), workload().client_data(42)
    assert np.array_equal(a.x_train.numpy(), b.x_train.numpy())
    assert not np.array_equal(a.x_train.numpy()[:5], workload().client_data(43).x_train.numpy()[:5])


def test_split_sizes_match_num_train_samples():
    w = workload()
    ids = np.arange(30)
    counts = w.num_train_samples(ids)
    for cid, n_train in zip(ids, counts, strict=True):
        data = w.client_data(int(cid))
        total = len(data.x_train) + len(data.x_test)
        assert len(data.x_train) == n_train == int(np.floor(0.9 * total))
        assert data.x_train.shape[1] == NUM_FEATURES and len(data.x_test) >= 1


def test_sample_counts_follow_the_power_law():
    n = workload().num_samples(np.arange(50_000))
    assert n.min() >= 50
    # 50 + lognormal(4, 2): median 50 + e^4
    assert abs(np.median(n) - (50 + np.floor(np.exp(4.0)))) <= 2
    assert abs(np.std(np.log(n - 50 + 0.5)) - 2.0) < 0.1


def test_labels_are_the_argmax_of_a_linear_model():
    w = workload(alpha=0.0, beta=0.0)
    x, y = w.client_arrays(5)
    assert set(np.unique(y)) <= set(range(NUM_CLASSES))
    # A client's labels are exactly separable by its own (W, b): a linear model fits them.
    import torch

    model = torch.nn.Linear(NUM_FEATURES, NUM_CLASSES)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    assert (model(xt).argmax(1) == yt).float().mean() > 0.9


def test_iid_variant_shares_one_model():
    w = workload(iid=True)
    x1, _ = w.client_arrays(1)
    x2, _ = w.client_arrays(2)
    # same input distribution: means are close to 0 for every client
    assert abs(x1.mean()) < 0.3 and abs(x2.mean()) < 0.3


def test_mlp_option():
    model = workload(model="mlp", hidden=32).build_model()
    assert sum(p.numel() for p in model.parameters()) == 60 * 32 + 32 + 32 * 10 + 10
