"""The actor pool: results in group order, equal to in-process execution, and survival of a
dead actor."""

from __future__ import annotations

import numpy as np

from fedray.config import config_from_dict
from fedray.execution.pool import WorkerPool
from fedray.execution.worker import ClientWorker, Task
from fedray.training import flat_params


def test_pool_matches_in_process_and_survives_a_dead_actor(ray_session):
    import ray

    cfg = config_from_dict({"workload": {"max_samples": 150}})
    args = (cfg.workload, cfg.client, cfg.compression.uplink, 9, 16)
    local = ClientWorker(*args)
    params = flat_params(local.workload.build_model())
    groups = [[Task(c, 1), Task(c + 1, 2)] for c in range(0, 12, 2)]
    expected = [local.run_group(params, i, 1, g, 0.0) for i, g in enumerate(groups)]

    pool = WorkerPool(2, cpus_per_worker=1, gpus_per_worker=0, worker_args=args)
    try:
        pool.wait_ready()
        ray.kill(pool.actors[0])  # a worker dies before the round; its groups are retried
        ref = ray.put(params)
        got = pool.run_groups(ref, 1, groups, costs=[1, 5, 2, 4, 3, 6], mu=0.0)
        assert [r.group_index for r in got] == list(range(len(groups)))
        for want, have in zip(expected, got, strict=True):
            np.testing.assert_array_equal(want.update_sum, have.update_sum)
            np.testing.assert_array_equal(want.client_ids, have.client_ids)
        assert pool.size == 2
    finally:
        pool.shutdown()
