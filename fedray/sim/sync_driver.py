"""The synchronous driver: select → cost model → deadline policy → dispatch → aggregate → record.

Per round: sample the cohort from (seed, round); plan the round in virtual time
(:mod:`fedray.sim.round_plan`); train only the accepted clients on the worker pool, in groups of
``execution.clients_per_task`` (:meth:`Config.group_size`) cut from the cohort in its seeded order,
or by size for vectorized blocks (:func:`make_groups`; never by worker count);
sum the groups' pre-summed updates in group order; take the strategy's server step; evaluate;
hand the rows to the recorder. The global model goes into Ray's object store once per round.

Bytes are real payload lengths: the global model is encoded once per round with the downlink
codec (clients train from the decoded model), and each update with the uplink codec on the
worker. All shipped codecs have data-independent payload sizes, so the upload time is known at
dispatch; the worker's real lengths are checked against it.
"""

from __future__ import annotations

import inspect
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import ray

from fedray.clients.state_store import ClientStateStore
from fedray.config import Config
from fedray.errors import UserError
from fedray.execution.batched import resolve_mode
from fedray.execution.worker import Task
from fedray.privacy import Accountant, add_noise
from fedray.sim.driver import Driver, DriverState, enough_updates, per_row_sum
from fedray.sim.links import close_residual_store
from fedray.sim.round_plan import DROPPED, PARTIAL, STRAGGLER, RoundPlan, plan_round
from fedray.sim.selection import select_clients
from fedray.workloads import Workload

# The cost of a client's steps inside a batched block, relative to the block's per-step cost
# (its chain): generating its data and its share of each step's arithmetic. Measured for
# Synthetic logreg, B=10: ~10 µs per block step, ~6 µs per client step for its data and ~1 µs
# for its rows of the step.
VECTORIZED_CLIENT_COST = 0.7


def block_cost(steps: np.ndarray) -> float:
    """Estimated time of a batched block, in per-step units: its longest client's chain plus
    each client's own share. Sequential execution costs the sum of the steps."""
    return float(steps.max(initial=0) + VECTORIZED_CLIENT_COST * steps.sum())


def make_groups(
    plan: RoundPlan,
    num_samples: np.ndarray,
    clients_per_task: int,
    batch_size: int | None = None,
) -> tuple[list[list[Task]], list[float]]:
    """Cut the accepted clients into groups of at most ``clients_per_task``, each with its
    estimated cost for the pool's largest-first scheduling.

    Sequential execution (``batch_size`` None) cuts them in cohort order and costs a group
    Σ samples × epochs. Vectorized execution (the batch size given) orders them by work, largest
    first (ties in cohort order): a block runs as many steps as its longest client, so grouping
    similar clients cuts padded steps (Synthetic(1,1), K=100: ~50k block steps over 20 rounds in
    cohort order, ~25k by size). A group is also closed before its estimated time
    (:func:`block_cost`) passes the larger of the longest client's alone and the average
    group's: under heavy-tailed sizes the ten largest clients together were more than the rest
    of the round, one actor busy 130 ms while the other finished in 50. Either way the groups are
    a pure function of the round, never of the worker count."""
    index = np.flatnonzero(plan.accepted)
    work = num_samples * plan.local_epochs
    if batch_size is None:
        chunks = [index[i : i + clients_per_task] for i in range(0, len(index), clients_per_task)]
        costs = [float(work[c].sum()) for c in chunks]
    else:
        index = index[np.argsort(-work[index], kind="stable")]
        steps = -(-num_samples // batch_size) * plan.local_epochs
        chunks = _chunks_by_cost(steps[index], clients_per_task)
        chunks = [index[c] for c in chunks]
        costs = [block_cost(steps[c]) for c in chunks]
    groups = [[Task(int(plan.client_ids[i]), int(plan.local_epochs[i])) for i in c] for c in chunks]
    return groups, costs


def _chunks_by_cost(steps: np.ndarray, clients_per_task: int) -> list[np.ndarray]:
    """Positions 0..n-1 (``steps`` sorted descending) cut into runs of at most
    ``clients_per_task`` whose :func:`block_cost` stays within the cap."""
    n = len(steps)
    if n == 0:
        return []
    plain = [steps[i : i + clients_per_task] for i in range(0, n, clients_per_task)]
    cap = max(block_cost(steps[:1]), sum(block_cost(p) for p in plain) / len(plain))
    cap *= 1 + 1e-9  # equal-size clients fill a plain chunk exactly
    chunks, begin, chain, total = [], 0, float(steps[0]), 0.0
    for i in range(n):
        total += float(steps[i])
        full = i - begin >= clients_per_task
        if i > begin and (full or chain + VECTORIZED_CLIENT_COST * total > cap):
            chunks.append(np.arange(begin, i))
            begin, chain, total = i, float(steps[i]), float(steps[i])
    chunks.append(np.arange(begin, n))
    return chunks


def check_takes_correction(workload: Workload) -> None:
    """SCAFFOLD corrects every local gradient step, so the workload's training must take one."""
    if "correction" not in inspect.signature(workload.local_train).parameters:
        raise UserError(
            f"strategy scaffold needs a workload whose local_train takes a gradient correction; "
            f"{workload.name} does not — choose another strategy"
        )


class SyncDriver(Driver):
    def __init__(self, cfg: Config, workload: Workload, *args, **kwargs):
        super().__init__(cfg, workload, *args, **kwargs)
        self.vectorized = self.flat.dense and resolve_mode(cfg.execution.vectorize, workload)
        # SCAFFOLD: client control variates c_k, bounded in memory and spilled like residuals.
        # Every upload then carries Δy_k and Δc_k, every download x and c.
        self.controls, self.controls_dir, self.payloads = None, None, 1
        if getattr(self.strategy, "control_variates", False):
            check_takes_correction(workload)
            self.controls_dir = (
                None if self.state_dir is None else Path(self.state_dir) / "scaffold"
            )
            budget = cfg.execution.client_state_mb * 2**20
            self.controls, self.payloads = ClientStateStore(budget, self.controls_dir), 2
        # DP-FedAvg (fedray.privacy): the workers clip; the driver noises the sum and accounts.
        self.accountant = Accountant.of(cfg)

    def close(self) -> None:
        if self.controls is not None:
            close_residual_store(self.controls, self.controls_dir)
        super().close()

    def run(self) -> DriverState:
        wall_start = time.perf_counter()
        # Round r's evaluation runs on a driver thread while round r+1 trains: done in between,
        # it kept every actor idle (~10 ms a round for Synthetic, ~10% of a K=100 round).
        # Rows are still recorded in round order, each with its own model's metrics.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedray-eval") as thread:
            previous = None
            for _ in range(self.cfg.rounds):
                row, events, durations, params = self.step(wall_start)
                if previous is not None:
                    self._record(*previous)
                evaluation = None
                if params is not None:
                    evaluation = thread.submit(self.evaluate, params, self.eval_privates())
                previous = (row, events, durations, evaluation)
            if previous is not None:
                self._record(*previous)
        return self.state

    def _record(self, row: dict, events: dict, durations: np.ndarray, evaluation) -> None:
        if evaluation is not None:
            row.update(evaluation.result())
        self.record(row, events, durations)

    def step(self, wall_start: float) -> tuple[dict, dict, np.ndarray, np.ndarray | None]:
        """Train one round; returns its row (metrics still NaN), its client events, the
        accepted clients' durations, and the model to evaluate (None when not evaluated)."""
        cfg, state = self.cfg, self.state
        round_ = state.round + 1
        cohort = select_clients(
            seed=cfg.seed,
            round_=round_,
            num_clients=cfg.clients.num_clients,
            count=cfg.num_selected,
            profiles=self.profiles,
        )
        num_samples = self.workload.num_train_samples(cohort)
        start_params, model_bytes = self.links.broadcast(state.server.params, round_)
        if self.controls is not None:  # c goes down the same (deterministic) downlink codec
            start_control, control_bytes = self.links.broadcast(
                state.server.control.astype(np.float32), round_
            )
            model_bytes += control_bytes
        upload_bytes, upload_raw, download_bytes, download_raw = self.links.transfer_bytes(
            self.num_client_rows(cohort), len(cohort), model_bytes
        )
        if self.controls is not None:
            download_raw = download_raw * self.payloads
        plan = plan_round(
            seed=cfg.seed,
            round_=round_,
            client_ids=cohort,
            profiles=self.profiles.lookup(cohort),
            num_samples=num_samples,
            local_epochs=cfg.client.local_epochs,
            model_bytes=download_bytes,
            update_bytes=upload_bytes * self.payloads,
            clients_per_round=cfg.clients_per_round,
            deadline_s=cfg.deadline_s,
            policy=cfg.stragglers,
        )
        groups, costs = make_groups(
            plan,
            num_samples,
            cfg.group_size(self.vectorized),
            cfg.client.batch_size if self.vectorized else None,
        )

        losses = np.full(len(cohort), np.nan)
        num_clipped = 0
        if groups:
            params_ref = ray.put(start_params)
            residuals = None
            if self.residuals is not None:
                residuals = [
                    {
                        t.client_id: r
                        for t in g
                        if (r := self.residuals.get(t.client_id)) is not None
                    }
                    for g in groups
                ]
            linear = self.strategy.linear
            extras = [{"privates": self.group_privates(g)} for g in groups]
            if self.controls is not None:
                control_ref = ray.put(start_control)
                for g, extra in zip(groups, extras, strict=True):
                    extra["control"] = control_ref
                    extra["client_controls"] = {
                        t.client_id: c
                        for t in g
                        if (c := self.controls.get(t.client_id)) is not None
                    }
            results = self.pool.run_groups(
                params_ref,
                round_,
                groups,
                costs,
                self.strategy.client_mu,
                residuals,
                linear,
                extras,
            )
            del params_ref
            update_sum = np.zeros(state.server.params.shape, dtype=np.float64)
            weight_sum = 0.0
            control_sum = np.zeros(state.server.params.shape, dtype=np.float64)
            coverage = np.zeros_like(update_sum) if self.flat.tables else None
            position = {int(c): i for i, c in enumerate(cohort)}
            for result in results:  # group order: the sum is the same for any number of workers
                update_sum += result.update_sum
                weight_sum += result.weight_sum
                num_clipped += result.num_clipped
                at = [position[int(cid)] for cid in result.client_ids]
                losses[at] = result.train_loss
                self.links.check_uploads(result.bytes_up, upload_bytes[at] * self.payloads)
                if coverage is not None:
                    coverage += result.coverage
                if self.privates is not None:
                    for cid, private in sorted(result.privates.items()):
                        self.privates.put(cid, private)
                if self.residuals is not None:
                    for cid, residual in sorted(result.residuals.items()):
                        self.residuals.put(cid, residual)
                if self.controls is not None:
                    control_sum += result.control_sum
                    for cid, c_k in sorted(result.controls.items()):
                        self.controls.put(cid, c_k)
            if self.controls is not None:
                state.server = self.strategy.apply(
                    state.server,
                    update_sum,
                    weight_sum,
                    control_sum=control_sum,
                    num_clients=cfg.clients.num_clients,
                )
            elif linear:
                if cfg.privacy is not None:
                    # McMahan et al. 2018: noise the sum of clipped updates and divide it by the
                    # fixed expected cohort size K, not the number that arrived (eq. 4).
                    p = cfg.privacy
                    update_sum = add_noise(
                        update_sum,
                        seed=cfg.seed,
                        round_=round_,
                        noise_multiplier=p.noise_multiplier,
                        clip_norm=p.clip_norm,
                    )
                    weight_sum = float(cfg.clients_per_round)
                if coverage is not None:
                    update_sum = per_row_sum(update_sum, coverage, weight_sum)
                state.server = self.strategy.apply(state.server, update_sum, weight_sum)
            else:
                # Robust rules see every update, stacked in the fixed group/cohort order.
                updates = np.concatenate([r.updates for r in results])
                weights = np.concatenate([r.num_samples for r in results]).astype(np.float64)
                if enough_updates(self.strategy, len(updates)):
                    state.server = self.strategy.aggregate(state.server, updates, weights)

        dispatch, dispatch_version = state.sim_time_s, state.server.version
        state.sim_time_s += plan.duration_s
        state.round = round_
        bytes_up, bytes_down = int(plan.bytes_up.sum()), int(plan.bytes_down.sum())
        bytes_up_raw = int(upload_raw[plan.accepted].sum()) * self.payloads
        bytes_down_raw = int(np.round(plan.bytes_down * (download_raw / download_bytes)).sum())
        state.cum_bytes_up += bytes_up
        state.cum_bytes_down += bytes_down

        metrics = {
            "eval_loss": np.nan,
            "eval_accuracy": np.nan,
            "global_train_loss": np.nan,
            "global_train_accuracy": np.nan,
        }
        evaluate = round_ % cfg.eval_every == 0 or round_ == cfg.rounds

        accepted = plan.accepted
        weights = num_samples[accepted]
        dp_epsilon = dp_clipped = np.nan
        if self.accountant is not None:
            # Every round counts, even one in which no client was accepted (conservative).
            dp_epsilon = self.accountant.epsilon(round_)
            trained = int(accepted.sum())
            dp_clipped = num_clipped / trained if trained else np.nan
        train_loss = (
            float(np.average(losses[accepted], weights=weights)) if weights.sum() > 0 else np.nan
        )
        row = {
            "round": round_,
            "sim_time_s": state.sim_time_s,
            "round_duration_s": plan.duration_s,
            "wall_time_s": time.perf_counter() - wall_start,
            "model_version": state.server.version,
            "num_selected": len(cohort),
            "num_completed": int(accepted.sum()),
            "num_partial": int((plan.status == PARTIAL).sum()),
            "num_dropped": int((plan.status == DROPPED).sum()),
            "num_stragglers": int((plan.status == STRAGGLER).sum()),
            "num_stale": 0,
            "num_aggregated": int(accepted.sum()),
            "staleness_mean": 0.0 if accepted.any() else np.nan,
            "staleness_max": 0,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "bytes_up_raw": bytes_up_raw,
            "bytes_down_raw": bytes_down_raw,
            "compression_ratio": bytes_up_raw / bytes_up if bytes_up else np.nan,
            "cum_bytes_up": state.cum_bytes_up,
            "cum_bytes_down": state.cum_bytes_down,
            "train_loss": train_loss,
            **metrics,
            "dp_epsilon": dp_epsilon,
            "dp_clipped_fraction": dp_clipped,
        }
        events = {
            "round": np.full(len(cohort), round_, dtype=np.int64),
            "client_id": plan.client_ids,
            "status": plan.status.astype(str),
            "model_version": np.full(len(cohort), dispatch_version, dtype=np.int64),
            "staleness": np.where(accepted, 0, -1).astype(np.int64),
            "dispatch_time_s": np.full(len(cohort), dispatch),
            "finish_time_s": dispatch + plan.finish_s,
            "download_s": plan.times.download_s,
            "compute_s": plan.times.compute_s,
            "upload_s": plan.times.upload_s,
            "num_samples": num_samples,
            "local_epochs": plan.local_epochs,
            "bytes_up": plan.bytes_up,
            "bytes_down": plan.bytes_down,
            "train_loss": losses,
        }
        return row, events, plan.finish_s[accepted], state.server.params if evaluate else None
