"""How a synchronous round's clients are cut into the groups the worker pool executes."""

from __future__ import annotations

import numpy as np

from fedray.sim.round_plan import COMPLETED, DROPPED, RoundPlan
from fedray.sim.sync_driver import VECTORIZED_CLIENT_COST, block_cost, make_groups


def plan_of(num_samples, epochs=1, status=None) -> RoundPlan:
    n = len(num_samples)
    status = np.array(status or [COMPLETED] * n, dtype=object)
    zeros = np.zeros(n)
    return RoundPlan(
        client_ids=np.arange(100, 100 + n),
        status=status,
        local_epochs=np.full(n, epochs),
        times=None,
        finish_s=zeros,
        bytes_down=zeros,
        bytes_up=zeros,
        duration_s=0.0,
    )


def ids_of(groups):
    return [[t.client_id for t in g] for g in groups]


def test_sequential_groups_follow_the_cohort_and_cost_their_samples():
    samples = np.array([5, 50, 7, 900, 30])
    plan = plan_of(samples, epochs=2, status=[COMPLETED, COMPLETED, DROPPED, COMPLETED, COMPLETED])

    groups, costs = make_groups(plan, samples, clients_per_task=2)

    assert ids_of(groups) == [[100, 101], [103, 104]]  # the dropped client trains nowhere
    assert costs == [2 * 55.0, 2 * 930.0]


def test_equal_clients_fill_whole_groups_by_size():
    samples = np.full(40, 100)

    groups, costs = make_groups(plan_of(samples), samples, clients_per_task=10, batch_size=10)

    assert [len(g) for g in groups] == [10, 10, 10, 10]
    assert ids_of(groups)[0] == list(range(100, 110))  # ties keep the cohort order
    assert costs == [block_cost(np.full(10, 10))] * 4 == [10 + VECTORIZED_CLIENT_COST * 100] * 4


def test_a_dominant_client_trains_alone_and_no_block_outgrows_it():
    # A heavy-tailed round like Synthetic(1,1)'s: one client with 3154 steps, one with 1829.
    rng = np.random.default_rng(0)
    samples = np.concatenate([[31534, 18290, 6900, 3870], rng.integers(50, 600, 96)])
    rng.shuffle(samples)

    groups, costs = make_groups(plan_of(samples), samples, clients_per_task=10, batch_size=10)

    steps = {100 + i: -(-int(n) // 10) for i, n in enumerate(samples)}
    members = ids_of(groups)
    assert sorted(c for g in members for c in g) == list(range(100, 200))  # each client once
    assert all(len(g) <= 10 for g in members)
    heaviest = max(steps, key=steps.get)
    assert members[0] == [heaviest]  # its chain alone is the round's floor
    # The second-largest client leads its own block, so two actors can run the two chains.
    assert max(steps[c] for c in members[1]) == sorted(steps.values())[-2]
    assert max(costs) == costs[0] == block_cost(np.array([steps[heaviest]]))
    for g, cost in zip(members, costs, strict=True):
        assert cost == block_cost(np.array([steps[c] for c in g]))
        # Largest first within and across groups: similar clients share a block.
        sizes = [steps[c] for c in g]
        assert sizes == sorted(sizes, reverse=True)
    firsts = [steps[g[0]] for g in members]
    assert firsts == sorted(firsts, reverse=True)


def test_groups_count_epochs_and_depend_only_on_the_round():
    samples = np.array([400, 35, 35, 1000, 35, 35])
    plan = plan_of(samples, epochs=3)

    first = make_groups(plan, samples, clients_per_task=4, batch_size=10)
    second = make_groups(plan, samples, clients_per_task=4, batch_size=10)

    assert ids_of(first[0]) == ids_of(second[0]) and first[1] == second[1]
    assert ids_of(first[0])[0] == [103]  # 300 steps alone: 510 units, above the average block
    assert first[1][0] == block_cost(np.array([300]))
