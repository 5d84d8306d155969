"""The code that runs inside one pool actor: local training of a group of virtual clients.

A worker is long-lived and executes many virtual clients. It trains a group either one client
after another (the workload's ``local_train``), or — where the workload's model allows it
(``execution.vectorize``) — all at once as one batched computation
(:mod:`fedray.execution.batched`); both give the same updates to float tolerance.

Each client's update Δ_k is then encoded with the uplink codec — the payload's length is what the
client uploads — and decoded again, as the server would. For a linear aggregator the worker
returns the group's pre-summed decoded update Σ n_k Δ̂_k (float64, summed in the group's fixed
client order), so the driver holds O(model) memory however many clients a round has, while bytes
stay per client. With SCAFFOLD control variates the worker also uploads, encodes and pre-sums
each client's control-variate change Δc_k (see :mod:`fedray.strategies.scaffold`).

Workloads with a :class:`~fedray.workloads.base.ParameterLayout` train from the global model with
the client's private parameters loaded (returned, never uploaded), and upload only their row-table
rows plus the shared parameters (:mod:`fedray.execution.layout`); the group then also returns the
per-coordinate weight Σ n_k over the clients that uploaded each coordinate, for per-row averaging.
With ``clip_norm`` set (user-level DP-FedAvg, McMahan et al. 2018; :mod:`fedray.privacy`) each
decoded update — what the server would sum — is clipped to that L2 norm and weighted 1, not n_k.
Client data is generated on demand from (seed, client id) and kept in a bounded LRU cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from fedray.errors import UserError

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
    bytes_up: np.ndarray  # real payload length per client (both payloads under SCAFFOLD)
    residuals: dict[int, np.ndarray]  # new error-feedback residuals (empty without feedback)
    updates: np.ndarray | None = None  # [clients, d] decoded updates, when not pre-summed
    control_sum: np.ndarray | None = None  # SCAFFOLD: Σ decoded Δc_k (unweighted), float64
    controls: dict[int, np.ndarray] = field(default_factory=dict)  # SCAFFOLD: new c_k
    coverage: np.ndarray | None = None  # row tables: Σ n_k over the clients uploading each coord
    privates: dict[int, np.ndarray] = field(default_factory=dict)  # new private parameters
    num_rows: np.ndarray | None = None  # row tables: rows each client uploaded
    row_ids: list[np.ndarray] | None = None  # row tables, not pre-summed: each client's rows
    num_clipped: int = 0  # DP-FedAvg: clients whose decoded update was scaled down to clip_norm

    def rows_of(self, i: int) -> np.ndarray | None:
        """The row ids client ``i`` of the group uploaded (None without row tables)."""
        return None if self.row_ids is None else self.row_ids[i]


@dataclass(frozen=True)
class _Trained:
    task: Task
    num_samples: int
    update: np.ndarray  # float32 w_k − w^t
    loss: float
    steps: int
    rows: np.ndarray | None = None  # row-table rows this client uploads
    private: np.ndarray | None = None  # its private parameters after training


class ClientWorker:
    """Executes groups of client tasks against a given global model. Wrapped as a Ray actor by
    :class:`fedray.execution.pool.WorkerPool`; usable directly in-process too."""

    def __init__(
        self,
        workload_cfg,
        client_cfg,
        uplink_cfg,
        seed: int,
        data_cache_mb: int = 256,
        vectorize: str = "auto",
        clip_norm: float | None = None,
    ):
        import torch

        from fedray.compression import make_codec
        from fedray.execution import batched
        from fedray.execution.layout import FlatLayout

        # One intra-op thread per actor: parallelism comes from the pool, and oversubscribed
        # BLAS threads make small-model training several times slower.
        torch.set_num_threads(1)
        from fedray.workloads import make_workload

        self.workload = make_workload(workload_cfg, seed)
        self.client_cfg = client_cfg
        self.seed = seed
        self.model = self.workload.build_model()
        self.segments = tuple(p.numel() for p in self.model.parameters())
        self.flat = FlatLayout.of(self.model, self.workload.parameter_layout())
        self._private = np.zeros(self.flat.size, dtype=bool)  # coordinates never uploaded
        self._private[self.flat.private_index] = True
        # Batched training handles dense models only (resolve_mode says why when forced on).
        dense = self.flat.dense or vectorize == "on"
        self.vectorized = dense and batched.resolve_mode(vectorize, self.workload, self.model)
        self.codec = make_codec(uplink_cfg)
        self.clip_norm = clip_norm
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
        size = _cached_size(data)
        if size <= self._cache_budget:
            self._cache[client_id] = data
            self._cache_bytes += size
            while self._cache_bytes > self._cache_budget:
                _, evicted = self._cache.popitem(last=False)
                self._cache_bytes -= _cached_size(evicted)
        return data

    # ------------------------------------------------------------------ training

    def _train_each(
        self, bases, round_, tasks, mu, corrections, privates=None
    ) -> Iterator[_Trained]:
        """One client after another through the workload's own ``local_train``."""
        import torch

        from fedray import seeding
        from fedray.training import flat_params, load_flat_params, split_like

        base_tensors = [torch.tensor(b) for b in bases]  # private copies, loaded per client
        private_index = self.flat.private_index
        for task in tasks:
            data = self._data(task.client_id)
            start, private = bases[task.model], None
            if private_index.size:
                private = (privates or {}).get(task.client_id)
                if private is None:  # first participation
                    initial = start[private_index].copy()
                    private = self.workload.init_private(task.client_id, initial)
                start = start.copy()
                start[private_index] = np.asarray(private, dtype=np.float32).reshape(-1)
                load_flat_params(self.model, start)
            else:
                load_flat_params(self.model, base_tensors[task.model])
            key = round_ if task.round is None else task.round
            rng = seeding.generator(self.seed, "shuffle", task.client_id, key)
            options = {}
            if corrections is not None:
                options["correction"] = split_like(self.model, corrections[task.client_id])
            stats = self.workload.local_train(
                self.model,
                data,
                epochs=task.local_epochs,
                lr=self.client_cfg.lr,
                batch_size=self.client_cfg.batch_size,
                mu=mu,
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
            yield _Trained(task, len(data.x_train), update, stats.loss, stats.steps, rows, private)

    def _train_vectorized(self, bases, round_, tasks, mu, corrections) -> Iterator[_Trained]:
        """The whole group as one block (:func:`fedray.execution.batched.train_block`)."""
        from fedray import seeding
        from fedray.execution.batched import dense_shapes, job_from, train_block

        jobs = []
        for task in tasks:
            key = round_ if task.round is None else task.round
            jobs.append(
                job_from(
                    self._data(task.client_id),
                    epochs=task.local_epochs,
                    rng=seeding.generator(self.seed, "shuffle", task.client_id, key),
                    start=bases[task.model],
                    correction=None if corrections is None else corrections[task.client_id],
                )
            )
        block = train_block(
            dense_shapes(self.model),
            jobs,
            lr=self.client_cfg.lr,
            batch_size=self.client_cfg.batch_size,
            mu=mu,
        )
        for i, task in enumerate(tasks):
            update = block.params[i] - bases[task.model]
            yield _Trained(task, len(jobs[i].y), update, float(block.loss[i]), int(block.steps[i]))

    # ------------------------------------------------------------------ a group

    def run_group(
        self,
        global_params: np.ndarray | list,
        group_index: int,
        round_: int,
        tasks: list[Task],
        mu: float,
        residuals: dict[int, np.ndarray] | None = None,
        presum: bool = True,
        *,
        control: np.ndarray | None = None,
        client_controls: dict[int, np.ndarray] | None = None,
        privates: dict[int, np.ndarray] | None = None,
    ) -> GroupResult:
        """Train ``tasks`` from ``global_params``; ``residuals`` holds the error-feedback state of
        those clients that have one (the driver's client-state store owns it between rounds).
        With ``presum=False`` (robust aggregators, asynchronous runs) each client's decoded update
        is returned. ``global_params`` is one model, or a list of models (or object refs to them)
        that tasks pick by ``Task.model``.

        ``control`` (SCAFFOLD's server variate c) turns on control variates: each client trains
        with the gradient correction c − c_k, where c_k comes from ``client_controls`` (zeros if
        absent), and uploads Δc_k = −c − Δy_k / (K_k η_l) (option II) next to its update.

        ``privates`` holds the stored private parameters of those clients that have them (see
        :class:`~fedray.workloads.base.ParameterLayout`); the others start from the workload's
        ``init_private``."""
        import ray

        from fedray import seeding
        from fedray.compression import encode_with_feedback
        from fedray.execution.layout import pack_upload
        from fedray.privacy import clip

        models = global_params if isinstance(global_params, list) else [global_params]
        models = [ray.get(m) if isinstance(m, ray.ObjectRef) else m for m in models]
        bases = [np.asarray(m, dtype=np.float32) for m in models]
        base = bases[0]
        corrections = old_controls = None
        if control is not None:
            control = np.asarray(control, dtype=np.float32)
            zero = np.zeros_like(control)
            client_controls = client_controls or {}
            old_controls = {t.client_id: client_controls.get(t.client_id, zero) for t in tasks}
            corrections = {cid: control - c_k for cid, c_k in old_controls.items()}

        update_sum = np.zeros(base.shape, dtype=np.float64)
        control_sum = None if control is None else np.zeros(base.shape, dtype=np.float64)
        n = len(tasks)
        ids, samples = np.empty(n, np.int64), np.empty(n, np.int64)
        losses, steps = np.empty(n, np.float64), np.empty(n, np.int64)
        sizes = np.empty(n, np.int64)
        rows = None if presum else np.empty((n, base.size), dtype=np.float32)
        new_residuals: dict[int, np.ndarray] = {}
        new_controls: dict[int, np.ndarray] = {}
        residuals = residuals or {}
        weight_sum = 0.0
        num_clipped = 0
        flat = self.flat
        coverage = np.zeros(base.shape, dtype=np.float64) if flat.tables else None
        num_rows = np.empty(n, np.int64) if flat.tables else None
        row_ids = [] if flat.tables and not presum else None
        new_privates: dict[int, np.ndarray] = {}
        if self.vectorized:
            trained = self._train_vectorized(bases, round_, tasks, mu, corrections)
        else:
            trained = self._train_each(bases, round_, tasks, mu, corrections, privates)
        for i, done in enumerate(trained):
            task = done.task
            key = round_ if task.round is None else task.round
            codec_rng = seeding.generator(self.seed, "codec", task.client_id, key)
            if flat.dense:
                index, segments, update = None, self.segments, done.update
            else:
                index = flat.upload_index(done.rows)
                segments = flat.upload_segments(0 if done.rows is None else len(done.rows))
                update = self._compact(done.update, index, task.client_id, done.private)
            payload, residual = encode_with_feedback(
                self.codec, update, segments, codec_rng, residuals.get(task.client_id)
            )
            if residual is not None:
                new_residuals[task.client_id] = residual
            decoded = self.codec.decode(payload, segments)
            if index is not None:
                decoded = self._scatter(decoded, index, base.size)
                new_privates[task.client_id] = done.private
                if coverage is not None:
                    coverage[index] += done.num_samples
                    num_rows[i] = len(done.rows)
                if row_ids is not None:
                    row_ids.append(done.rows)
            weight = done.num_samples
            if self.clip_norm is not None:
                # DP-FedAvg bounds each user's influence on the sum: clip what the server
                # receives, and count every user once whatever its sample count.
                decoded, clipped = clip(decoded, self.clip_norm)
                num_clipped += clipped
                weight = 1.0
            if rows is not None:
                rows[i] = decoded
            else:
                update_sum += weight * decoded.astype(np.float64)
            weight_sum += weight
            sizes[i] = len(pack_upload(done.rows, payload))
            if control is not None:
                # Option II of the paper: c_k⁺ = c_k − c + (x − y_k) / (K η_l). The client keeps
                # the exact c_k⁺; the server only sees the change through the codec.
                c_old = old_controls[task.client_id]
                scale = 1.0 / (max(done.steps, 1) * self.client_cfg.lr)
                c_new = (c_old - control - done.update * scale).astype(np.float32)
                new_controls[task.client_id] = c_new
                control_rng = seeding.generator(self.seed, "codec.control", task.client_id, key)
                control_payload = self.codec.encode(c_new - c_old, self.segments, control_rng)
                control_sum += self.codec.decode(control_payload, self.segments)
                sizes[i] += len(control_payload)
            ids[i], samples[i], losses[i], steps[i] = (
                task.client_id,
                done.num_samples,
                done.loss,
                done.steps,
            )
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
            control_sum,
            new_controls,
            coverage,
            {c: p for c, p in new_privates.items() if p is not None},
            num_rows,
            row_ids,
            num_clipped,
        )

    def _compact(
        self, update: np.ndarray, index: np.ndarray, client_id: int, private: np.ndarray | None
    ) -> np.ndarray:
        """The coordinates a client uploads; anything else its training changed is a workload
        bug (a row outside ``client_rows`` would silently never reach the server)."""
        finite = np.all(np.isfinite(update)) and (private is None or np.all(np.isfinite(private)))
        if not finite:
            raise UserError(
                f"workload {self.workload.name}: local training of client {client_id} diverged "
                "(NaN or inf parameters); lower client.lr"
            )
        outside = ~self._private
        outside[index] = False
        if np.any(update[outside] != 0):
            changed = int(np.count_nonzero(update[outside]))
            raise RuntimeError(
                f"workload {self.workload.name}: local training of client {client_id} changed "
                f"{changed} parameters outside its client_rows; client_rows must name every row "
                "its training touches"
            )
        return update[index]

    @staticmethod
    def _scatter(values: np.ndarray, index: np.ndarray, size: int) -> np.ndarray:
        full = np.zeros(size, dtype=np.float32)
        full[index] = values
        return full
