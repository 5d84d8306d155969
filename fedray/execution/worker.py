"""The code that runs inside one pool actor: local training of a group of virtual clients.

A worker is long-lived and executes many virtual clients. For each client of a
:class:`GroupJob` it asks the strategy how to train (``client_plan``), trains — one client after
another through the workload's ``local_train``, or where the model allows it
(``execution.vectorize``) the whole group as one batched computation
(:mod:`fedray.execution.batched`); both give the same updates to float tolerance — asks the
strategy what to upload (``client_update``), and delivers the message through the run's client
transforms (:mod:`fedray.execution.transforms`: row-sparse packing, DP clipping, the uplink codec
with error feedback), exactly as the server would receive it. The payload's length is what the
client uploads. Received updates go into the strategy's aggregate — a pre-sum for linear rules,
summed in the group's fixed client order, so the driver holds O(model) memory however many
clients a round has — or, for asynchronous runs, one row per client (``per_client``).

Everything a client remembers between tasks travels with the job as its client-state entries
(``job.states``) and comes back updated (``GroupResult.states``); the driver's client-state store
owns it between tasks. A poisoned update (NaN/inf, or a norm above ``robustness.max_update_norm``)
is quarantined: never aggregated, the client's state left as it was. Client data is generated on
demand from (seed, client id) and kept in a bounded LRU cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from fedray.errors import UserError
from fedray.strategies.aggregate import Aggregate

PRIVATE = "private"  # the client-state entry of a client's private parameters

# What a cached client costs beyond its tensors' bytes: the tensor and Python objects, and the
# heap fragmentation of keeping small long-lived objects between training's allocations.
# Measured with ecom_rec (2 KB of tensors per user): 32 MB of counted cache held 16k users and
# grew an actor by ~500 MB (~28 KB each); Synthetic's ~100 KB clients barely notice it.
CACHE_ENTRY_OVERHEAD = 16 * 1024


def _cached_size(data) -> int:
    return data.nbytes + CACHE_ENTRY_OVERHEAD


@dataclass(frozen=True)
class Task:
    """One client's local training. ``round`` keys the task's shuffling and codec draws (default:
    the job's round); ``model`` indexes the job's models, so one call can carry clients
    dispatched with different model versions (asynchronous runs)."""

    client_id: int
    local_epochs: int
    round: int | None = None
    model: int = 0


@dataclass(frozen=True)
class GroupJob:
    """One actor call. ``models``: what clients receive — dicts ``{"params": x, **downlink}``,
    or object refs to them; ``states``: the stored client-state entries of those clients that
    have any."""

    index: int
    round: int
    tasks: list[Task]
    models: list
    states: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    per_client: bool = False  # one aggregate row per client (async), not the strategy's kind


@dataclass(frozen=True)
class GroupResult:
    index: int
    aggregate: Aggregate
    client_ids: np.ndarray
    num_samples: np.ndarray
    train_loss: np.ndarray
    steps: np.ndarray
    bytes_up: np.ndarray  # real wire length per client (every payload it uploaded)
    quarantined: np.ndarray  # bool per client: its update was withheld from the aggregate
    clipped: np.ndarray  # bool per client: DP clipping scaled its update down
    row: np.ndarray  # per client, its row in a per-client aggregate (-1: quarantined)
    states: dict[int, dict[str, np.ndarray]]  # new client-state entries

    @property
    def num_clipped(self) -> int:
        return int(self.clipped.sum())


class _Columns:
    """A group's per-client columns, filled client by client."""

    def __init__(self, n: int):
        self.ids, self.samples = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.steps, self.bytes_up = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.losses, self.row = np.zeros(n), np.full(n, -1, np.int64)
        self.quarantined, self.clipped = np.zeros(n, bool), np.zeros(n, bool)

    def trained(self, i: int, client_id: int, done) -> None:
        self.ids[i], self.samples[i] = client_id, done.local.num_samples
        self.steps[i], self.losses[i] = done.local.steps, done.loss

    def result(self, index: int, aggregate: Aggregate, states: dict) -> GroupResult:
        return GroupResult(
            index, aggregate, self.ids, self.samples, self.losses, self.steps, self.bytes_up,
            self.quarantined, self.clipped, self.row, states,
        )  # fmt: skip


@dataclass(frozen=True)
class _Trained:
    task: Task
    plan: object  # the strategy's ClientTask
    local: object  # LocalResult
    loss: float
    rows: np.ndarray | None = None  # row-table rows this client uploads
    private: np.ndarray | None = None  # its private parameters after training


class ClientWorker:
    """Executes :class:`GroupJob` s of a run (one :class:`~fedray.config.Config`). Wrapped as a Ray
    actor by :class:`fedray.execution.pool.WorkerPool`; usable directly in-process too."""

    def __init__(self, cfg):
        import torch

        from fedray.execution import batched
        from fedray.execution.layout import FlatLayout
        from fedray.execution.transforms import Pipeline
        from fedray.strategies import make_strategy
        from fedray.workloads import make_workload

        # One intra-op thread per actor: parallelism comes from the pool, and oversubscribed
        # BLAS threads make small-model training several times slower.
        torch.set_num_threads(1)
        self.cfg, self.seed, self.client_cfg = cfg, cfg.seed, cfg.client
        self.workload = make_workload(cfg.workload, cfg.seed)
        self.model = self.workload.build_model()
        self.segments = tuple(p.numel() for p in self.model.parameters())
        self.flat = FlatLayout.of(self.model, self.workload.parameter_layout())
        # Batched training handles dense models only (resolve_mode says why when forced on).
        vectorize = cfg.execution.vectorize
        dense = self.flat.dense or vectorize == "on"
        self.vectorized = dense and batched.resolve_mode(vectorize, self.workload, self.model)
        self.strategy = make_strategy(cfg)
        self.pipeline = Pipeline.of(
            cfg,
            self.flat,
            self.segments,
            self.workload.name,
            getattr(self.workload, "num_classes", None),
        )
        self.robustness = cfg.robustness
        self._cache: OrderedDict[int, object] = OrderedDict()
        self._cache_bytes = 0
        self._cache_budget = cfg.execution.data_cache_mb * 2**20

    def ready(self) -> bool:
        return True

    def pid(self) -> int:
        import os

        return os.getpid()

    def _data(self, client_id: int):
        data = self._cache.get(client_id)
        if data is not None:
            self._cache.move_to_end(client_id)
            return data
        data = self.workload.client_data(client_id)
        size = _cached_size(data)
        if size <= self._cache_budget:
            self._cache[client_id] = data
            self._cache_bytes += size
            while self._cache_bytes > self._cache_budget:
                _, evicted = self._cache.popitem(last=False)
                self._cache_bytes -= _cached_size(evicted)
        return data

    # ------------------------------------------------------------------ a group

    def run_group(self, job: GroupJob) -> GroupResult:
        """Train, upload and aggregate every client of ``job``."""
        received = [self._receive(m) for m in job.models]
        plans = [
            self.strategy.client_plan(received[t.model], job.states.get(t.client_id, {}))
            for t in job.tasks
        ]
        train = self._train_vectorized if self.vectorized else self._train_each
        aggregate = (
            Aggregate.stacked()
            if job.per_client
            else self.pipeline.new_aggregate(self.strategy.new_aggregate())
        )
        out, states = _Columns(len(job.tasks)), {}
        for i, done in enumerate(train(received, job, plans)):
            cid, key = (
                done.task.client_id,
                job.round if done.task.round is None else done.task.round,
            )
            out.trained(i, cid, done)
            message = self.strategy.client_update(done.plan, done.local)
            if not self._acceptable(cid, message.update, done.private):
                out.quarantined[i], out.bytes_up[i] = True, -1
                continue
            up = self.pipeline.deliver(
                message,
                cid,
                key,
                job.states.get(cid, {}),
                rows=done.rows,
                received=received[done.task.model],
            )
            out.bytes_up[i], out.clipped[i] = up.nbytes, up.clipped
            if not self._acceptable(cid, up.update, None):
                out.quarantined[i] = True
                continue
            out.row[i] = aggregate.count
            aggregate.add(up.update, up.weight, index=up.index, extras=up.extras, member=cid)
            new = {**message.state, **up.new_state}
            if done.private is not None:
                new[PRIVATE] = done.private
            if new:
                states[cid] = new
        return out.result(job.index, aggregate, states)

    def _receive(self, model) -> dict:
        import ray

        received = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        # model arrays as float32; integer ones (secure aggregation's member ids) as they are
        return {
            k: np.asarray(v) if np.asarray(v).dtype.kind in "iu" else np.asarray(v, np.float32)
            for k, v in received.items()
        }

    def _acceptable(self, client_id: int, update: np.ndarray, private) -> bool:
        """Whether an update may reach the aggregate (``robustness``): finite, and within
        ``max_update_norm``. A diverged client stops the run under ``nonfinite: error``."""
        finite = np.all(np.isfinite(update)) and (private is None or np.all(np.isfinite(private)))
        if not finite and self.robustness.nonfinite == "error":
            raise UserError(
                f"workload {self.workload.name}: local training of client {client_id} diverged "
                "(NaN or inf parameters); lower client.lr, or set robustness.nonfinite: "
                "quarantine to leave such clients out"
            )
        bound = self.robustness.max_update_norm
        if finite and bound is not None:
            return float(np.linalg.norm(np.asarray(update, dtype=np.float64))) <= bound
        return bool(finite)

    # ------------------------------------------------------------------ training

    def _train_each(self, received, job: GroupJob, plans) -> Iterator[_Trained]:
        """One client after another through the workload's own ``local_train``."""
        import torch

        from fedray import seeding
        from fedray.strategies import LocalResult
        from fedray.training import flat_params, load_flat_params, split_like

        bases = [r["params"] for r in received]
        base_tensors = [torch.tensor(b) for b in bases]  # private copies, loaded per client
        private_index = self.flat.private_index
        for task, plan in zip(job.tasks, plans, strict=True):
            key = job.round if task.round is None else task.round
            data = self.pipeline.prepare(self._data(task.client_id), task.client_id, key)
            start, private = bases[task.model], None
            if private_index.size:
                private = job.states.get(task.client_id, {}).get(PRIVATE)
                if private is None:  # first participation
                    initial = start[private_index].copy()
                    private = self.workload.init_private(task.client_id, initial)
                start = start.copy()
                start[private_index] = np.asarray(private, dtype=np.float32).reshape(-1)
                load_flat_params(self.model, start)
            else:
                load_flat_params(self.model, base_tensors[task.model])
            rng = seeding.generator(self.seed, "shuffle", task.client_id, key)
            options = {}
            if plan.correction is not None:
                options["correction"] = split_like(self.model, plan.correction)
            stats = self.workload.local_train(
                self.model,
                data,
                epochs=task.local_epochs,
                lr=self.client_cfg.lr,
                batch_size=self.client_cfg.batch_size,
                mu=plan.mu,
                rng=rng,
                **options,
            )
            trained = flat_params(self.model)
            update = trained - start
            rows = None
            if self.flat.tables:
                rows = self.flat.check_rows(
                    self.workload.client_rows(task.client_id, data), self.workload.name
                )
            if private is not None:
                private = trained[private_index]
                update[private_index] = 0.0
            local = LocalResult(update, len(data.x_train), stats.steps, self.client_cfg.lr)
            yield _Trained(task, plan, local, stats.loss, rows, private)

    def _train_vectorized(self, received, job: GroupJob, plans) -> Iterator[_Trained]:
        """The whole group as one block (:func:`fedray.execution.batched.train_block`)."""
        from fedray import seeding
        from fedray.execution.batched import dense_shapes, job_from, train_block
        from fedray.strategies import LocalResult

        mus = {plan.mu for plan in plans}
        if len(mus) > 1:
            raise ValueError(f"a batched block trains with one proximal mu, got {sorted(mus)}")
        jobs = []
        for task, plan in zip(job.tasks, plans, strict=True):
            key = job.round if task.round is None else task.round
            jobs.append(
                job_from(
                    self.pipeline.prepare(self._data(task.client_id), task.client_id, key),
                    epochs=task.local_epochs,
                    rng=seeding.generator(self.seed, "shuffle", task.client_id, key),
                    start=received[task.model]["params"],
                    correction=plan.correction,
                )
            )
        block = train_block(
            dense_shapes(self.model),
            jobs,
            lr=self.client_cfg.lr,
            batch_size=self.client_cfg.batch_size,
            mu=mus.pop() if mus else 0.0,
        )
        for i, (task, plan) in enumerate(zip(job.tasks, plans, strict=True)):
            update = block.params[i] - received[task.model]["params"]
            local = LocalResult(update, len(jobs[i].y), int(block.steps[i]), self.client_cfg.lr)
            yield _Trained(task, plan, local, float(block.loss[i]))
