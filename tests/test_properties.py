"""Property tests (hypothesis) for aggregation invariants."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedray.strategies import FedAvg
from fedray.strategies.aggregate import Aggregate
from fedray.strategies.robust import coordinate_median, trimmed_mean

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
updates = st.integers(2, 8).flatmap(lambda n: arrays(np.float64, (n, 3), elements=finite))


@settings(max_examples=60, deadline=None)
@given(updates, st.randoms(use_true_random=False))
def test_robust_rules_are_permutation_invariant(rows, rnd):
    order = list(range(len(rows)))
    rnd.shuffle(order)
    np.testing.assert_array_equal(coordinate_median(rows), coordinate_median(rows[order]))
    np.testing.assert_allclose(
        trimmed_mean(rows, 0.25), trimmed_mean(rows[order], 0.25), rtol=1e-12
    )


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, 4, elements=finite),
    st.lists(st.integers(1, 500), min_size=1, max_size=6),
)
def test_identical_client_models_are_what_fedavg_returns(global_params, sizes):
    # Every client ends at the same model w: FedAvg with η = 1 returns w whatever the weights.
    w = (global_params + 1.5).astype(np.float32)
    n = np.array(sizes, dtype=np.float64)
    update_sum = ((w - global_params).astype(np.float64)[None, :] * n[:, None]).sum(axis=0)
    new = FedAvg().server_step(FedAvg().init(global_params), Aggregate.of_sum(update_sum, n.sum()))
    np.testing.assert_allclose(new.params, w, rtol=1e-6, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, 5, elements=finite), st.lists(st.integers(1, 500), min_size=1, max_size=6)
)
def test_zero_updates_leave_fedavg_unchanged(global_params, sizes):
    state = FedAvg(server_lr=0.7).init(global_params)
    new = FedAvg(server_lr=0.7).server_step(state, Aggregate.of_sum(np.zeros(5), float(sum(sizes))))
    np.testing.assert_array_equal(new.params, global_params)
