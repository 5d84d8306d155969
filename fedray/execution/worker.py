"""The code that runs inside one pool actor: local training of a group of virtual clients.

A worker is long-lived and executes many virtual clients one after another. Each client's update
Δ_k is encoded with the uplink codec — the payload's length is what the client uploads — and
decoded again, as the server would. For a linear aggregator the worker then returns the group's
pre-summed decoded update Σ n_k Δ̂_k (float64, summed in the group's fixed client order), so the
driver holds O(model) memory however many clients a round has, while bytes stay per client.
Client data is generated on demand from (seed, client id) and kept in a bounded LRU cache.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Task:
    """One client's local training. ``round`` keys the task's shuffling and codec draws (default:
    the group's round); ``model`` indexes the group's start models, so one call can carry clients
    dispatched with different model versions (asynchronous runs)."""

    client_id: int
    local_epochs: int
    round: int | None = None
    model: int = 0


@dataclass(frozen=True)
class GroupResult:
    group_index: int
    update_sum: np.ndarray  # Σ n_k (w_k − w^t), float64
    weight_sum: float  # Σ n_k
    client_ids: np.ndarray
    num_samples: np.ndarray
    train_loss: np.ndarray
    steps: np.ndarray
    bytes_up: np.ndarray  # real payload length per client
    residuals: dict[int, np.ndarray]  # new error-feedback residuals (empty without feedback)
    updates: np.ndarray | None = None  # [clients, d] decoded updates, when not pre-summed


class ClientWorker:
    """Executes groups of client tasks against a given global model. Wrapped as a Ray actor by
    :class:`fedray.execution.pool.WorkerPool`; usable directly in-process too."""

    def __init__(self, workload_cfg, client_cfg, uplink_cfg, seed: int, data_cache_mb: int = 256):
        import torch

        from fedray.compression import make_codec

        # One intra-op thread per actor: parallelism comes from the pool, and oversubscribed
        # BLAS threads make small-model training several times slower.
        torch.set_num_threads(1)
        from fedray.workloads import make_workload

        self.workload = make_workload(workload_cfg, seed)
        self.client_cfg = client_cfg
        self.seed = seed
        self.model = self.workload.build_model()
        self.segments = tuple(p.numel() for p in self.model.parameters())
        self.codec = make_codec(uplink_cfg)
        self._cache: OrderedDict[int, object] = OrderedDict()
        self._cache_bytes = 0
        self._cache_budget = data_cache_mb * 2**20

    def ready(self) -> bool:
        return True

    def _data(self, client_id: int):
        data = self._cache.get(client_id)
        if data is not None:
            self._cache.move_to_end(client_id)
            return data
        data = self.workload.client_data(client_id)
        size = data.nbytes
        if size <= self._cache_budget:
            self._cache[client_id] = data
            self._cache_bytes += size
            while self._cache_bytes > self._cache_budget:
                _, evicted = self._cache.popitem(last=False)
                self._cache_bytes -= evicted.nbytes
        return data

    def run_group(
        self,
        global_params: np.ndarray | list,
        group_index: int,
        round_: int,
        tasks: list[Task],
        mu: float,
        residuals: dict[int, np.ndarray] | None = None,
        presum: bool = True,
    ) -> GroupResult:
        """Train ``tasks`` from ``global_params``; ``residuals`` holds the error-feedback state of
        those clients that have one (the driver's client-state store owns it between rounds).
        With ``presum=False`` (robust aggregators, asynchronous runs) each client's decoded update
        is returned. ``global_params`` is one model, or a list of models (or object refs to them)
        that tasks pick by ``Task.model``."""
        import ray
        import torch

        from fedray import seeding
        from fedray.compression import encode_with_feedback
        from fedray.training import flat_params, load_flat_params

        models = global_params if isinstance(global_params, list) else [global_params]
        models = [ray.get(m) if isinstance(m, ray.ObjectRef) else m for m in models]
        bases = [np.asarray(m, dtype=np.float32) for m in models]
        # One private copy per start model, loaded per client.
        base_tensors = [torch.tensor(b) for b in bases]
        base = bases[0]
        update_sum = np.zeros(base.shape, dtype=np.float64)
        n = len(tasks)
        ids, samples = np.empty(n, np.int64), np.empty(n, np.int64)
        losses, steps = np.empty(n, np.float64), np.empty(n, np.int64)
        sizes = np.empty(n, np.int64)
        rows = None if presum else np.empty((n, base.size), dtype=np.float32)
        new_residuals: dict[int, np.ndarray] = {}
        residuals = residuals or {}
        weight_sum = 0.0
        for i, task in enumerate(tasks):
            load_flat_params(self.model, base_tensors[task.model])
            data = self._data(task.client_id)
            key = round_ if task.round is None else task.round
            rng = seeding.generator(self.seed, "shuffle", task.client_id, key)
            stats = self.workload.local_train(
                self.model,
                data,
                epochs=task.local_epochs,
                lr=self.client_cfg.lr,
                batch_size=self.client_cfg.batch_size,
                mu=mu,
                rng=rng,
            )
            update = flat_params(self.model) - bases[task.model]
            codec_rng = seeding.generator(self.seed, "codec", task.client_id, key)
            payload, residual = encode_with_feedback(
                self.codec, update, self.segments, codec_rng, residuals.get(task.client_id)
            )
            if residual is not None:
                new_residuals[task.client_id] = residual
            weight = len(data.x_train)
            decoded = self.codec.decode(payload, self.segments)
            if rows is not None:
                rows[i] = decoded
            else:
                update_sum += weight * decoded.astype(np.float64)
            weight_sum += weight
            ids[i], samples[i], losses[i], steps[i] = (
                task.client_id,
                weight,
                stats.loss,
                stats.steps,
            )
            sizes[i] = len(payload)
        return GroupResult(
            group_index,
            update_sum,
            weight_sum,
            ids,
            samples,
            losses,
            steps,
            sizes,
            new_residuals,
            rows,
        )
