"""The actor pool: results in group order, equal to in-process execution, and survival of a
dead actor."""

from __future__ import annotations

import numpy as np

from fedray.config import config_from_dict
from fedray.execution.pool import WorkerPool
from fedray.execution.worker import ClientWorker, GroupJob, Task
from fedray.training import flat_params


def test_pool_matches_in_process_and_survives_a_dead_actor(ray_session):
    import ray

    cfg = config_from_dict(
        {"seed": 9, "workload": {"max_samples": 150}, "execution": {"data_cache_mb": 16}}
    )
    local = ClientWorker(cfg)
    params = flat_params(local.workload.build_model())
    groups = [[Task(c, 1), Task(c + 1, 2)] for c in range(0, 12, 2)]
    expected = [
        local.run_group(GroupJob(i, 1, g, [{"params": params}])) for i, g in enumerate(groups)
    ]

    pool = WorkerPool(2, cpus_per_worker=1, gpus_per_worker=0, cfg=cfg)
    try:
        pool.wait_ready()
        ray.kill(pool.actors[0])  # a worker dies before the round; its groups are retried
        ref = ray.put({"params": params})
        jobs = [GroupJob(i, 1, g, [ref]) for i, g in enumerate(groups)]
        got = pool.run_groups(jobs, costs=[1, 5, 2, 4, 3, 6])
        assert [r.index for r in got] == list(range(len(groups)))
        for want, have in zip(expected, got, strict=True):
            np.testing.assert_array_equal(want.aggregate.total, have.aggregate.total)
            np.testing.assert_array_equal(want.client_ids, have.client_ids)
        assert pool.size == 2 and pool.restarts == 1
    finally:
        pool.shutdown()
