"""The synchronous driver: select → cost model → deadline policy → dispatch → aggregate → record.

Per round: sample the cohort from (seed, round); plan the round in virtual time
(:mod:`fedray.sim.round_plan`); train only the accepted clients on the worker pool, in groups of
``execution.clients_per_task`` (:meth:`Config.group_size`) cut from the cohort in its seeded order,
or by size for vectorized blocks (:func:`make_groups`; never by worker count);
merge the groups' aggregates in group order; let the server-side transforms finish the sum
(DP noise, secure aggregation's unmasking); take the strategy's server step; evaluate; hand the rows to the recorder. The global model goes into Ray's object store once per round.

Bytes are real payload lengths: the global model is encoded once per round with the downlink
codec (clients train from the decoded model), and each update with the uplink codec on the
worker. All shipped codecs have data-independent payload sizes, so the upload time is known at
dispatch; the worker's real lengths are checked against it.
"""

from __future__ import annotations

import inspect
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import ray

from fedray.config import Config
from fedray.errors import UserError
from fedray.execution.batched import resolve_mode
from fedray.execution.worker import GroupJob, Task
from fedray.privacy import Accountant
from fedray.secagg.costs import Overhead, round_overhead
from fedray.secagg.transform import MEMBERS, SecureAggregation
from fedray.sim.conditions import MAX_IDLE_S, Work, price
from fedray.sim.driver import Driver, DriverState
from fedray.sim.links import Transfers
from fedray.sim.recorder import QUARANTINED, Tally, round_row
from fedray.sim.round_plan import (
    DEPLETED,
    DROPPED,
    OFFLINE,
    PARTIAL,
    STRAGGLER,
    RoundPlan,
    plan_round,
)
from fedray.sim.selection import select_clients, select_poisson
from fedray.strategies import Scaffold
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
        if isinstance(self.strategy, Scaffold):
            check_takes_correction(workload)
        # Each side channel of the strategy goes both ways (SCAFFOLD: c down, Δc up), each a
        # payload of the model's size; the workers' real upload lengths are checked against it.
        self.payloads = 1 + len(self.strategy.downlink(self.state.server))
        # DP-FedAvg (fedray.privacy): the clients clip; the driver noises the sum and accounts.
        self.accountant = Accountant.of(cfg)
        # Secure aggregation (fedray.secagg): its key rounds and unmasking cost bytes and time.
        self.secagg = next(
            (t for t in self.pipeline.transforms if isinstance(t, SecureAggregation)), None
        )

    def run(self) -> DriverState:
        wall_start = time.perf_counter()
        # Round r's evaluation runs on a driver thread while round r+1 trains: done in between,
        # it kept every actor idle (~10 ms a round for Synthetic, ~10% of a K=100 round).
        # Rows are still recorded in round order, each with its own model's metrics; a
        # checkpoint waits for its round's row.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedray-eval") as thread:
            previous = None
            while self.state.round < self.cfg.rounds:
                row, events, durations, params = self.step(wall_start)
                if previous is not None:
                    self._record(*previous)
                evaluation = None
                if params is not None:
                    evaluation = thread.submit(self.evaluate, params, self.eval_privates())
                previous = (row, events, durations, evaluation)
                if self._checkpoint_due():
                    self._record(*previous)
                    previous = None
                    self.after_step()
            if previous is not None:
                self._record(*previous)
        return self.state

    def _checkpoint_due(self) -> bool:
        every = self.checkpoint_every
        return self.run_path is not None and (
            bool(every and self.state.round % every == 0) or self.stop_requested() is not None
        )

    def _record(self, row: dict, events: dict, durations: np.ndarray, evaluation) -> None:
        if evaluation is not None:
            row.update(evaluation.result())
        self.record(row, events, durations)

    def step(self, wall_start: float) -> tuple[dict, dict, np.ndarray, np.ndarray | None]:
        """Train one round; returns its row (metrics still NaN), its client events, the
        aggregated clients' durations, and the model to evaluate (None when not evaluated)."""
        cfg, state = self.cfg, self.state
        round_ = state.round + 1
        received, model_bytes = self.broadcast(round_)
        cohort, waited = self._select_waiting(round_, model_bytes)
        num_samples = self.workload.num_train_samples(cohort)
        context = self.pipeline.downlink(round_, cohort)  # secure aggregation: who shares keys
        received = {**received, **context}
        plan, bytes_, work = self._plan(round_, cohort, num_samples, model_bytes)
        energy, battery = self.conditions.settle(
            cohort, state.sim_time_s, plan, self.conditions.energy(work, plan)
        )
        groups, costs = make_groups(
            plan,
            num_samples,
            cfg.group_size(self.vectorized),
            cfg.client.batch_size if self.vectorized else None,
        )
        dispatch, dispatch_version = state.sim_time_s, state.server.version  # what clients got
        aggregate = self.pipeline.new_aggregate(self.strategy.new_aggregate())
        losses = np.full(len(cohort), np.nan)
        quarantined, clipped = np.zeros(len(cohort), bool), 0
        if groups:
            received_ref = ray.put(received)
            jobs = [
                GroupJob(i, round_, g, [received_ref], self.client_states.bundle(t.client_id for t in g))
                for i, g in enumerate(groups)
            ]  # fmt: skip
            position = {int(c): i for i, c in enumerate(cohort)}
            for result in self.pool.run_groups(jobs, costs):  # group order: any worker count
                at = np.array([position[int(c)] for c in result.client_ids], dtype=np.int64)
                losses[at], quarantined[at] = result.train_loss, result.quarantined
                clipped += result.num_clipped
                ok = ~result.quarantined
                self.links.check_uploads(result.bytes_up[ok], bytes_.up[at][ok] * self.payloads)
                aggregate.merge(result.aggregate)
                self.client_states.update(result.states)
        columns = self.pipeline.finalize(aggregate, round_, context)
        if groups:
            state.server = self.strategy.server_step(state.server, aggregate)
        overhead = self._overhead(round_, cohort, context, aggregate, columns)
        evaluate = round_ % cfg.eval_every == 0 or round_ == cfg.rounds
        return (
            *self._rows(round_, plan, num_samples, bytes_, losses, quarantined, clipped, wall_start, dispatch, dispatch_version, energy, battery, waited, overhead, columns),
            state.server.params if evaluate else None,
        )  # fmt: skip

    def _select_waiting(self, round_: int, model_bytes: int) -> tuple[np.ndarray, float]:
        """The round's cohort, after waiting (in steps of ``clients.availability.retry_s``) for
        a client to be online when availability varies over time; and the seconds waited."""
        cohort, waited = self._select(round_, model_bytes), 0.0
        conditions = self.conditions
        while not len(cohort) and conditions.waits:
            if waited >= MAX_IDLE_S:
                raise UserError(
                    f"no client was online and eligible for {waited / 86400:.0f} simulated days "
                    f"(from round {round_}); check clients.availability and clients.battery"
                )
            self.state.sim_time_s += conditions.retry_s
            waited += conditions.retry_s
            cohort = self._select(round_, model_bytes)
        return cohort, waited

    def _overhead(self, round_, cohort, context, aggregate, columns: dict) -> Overhead:
        """The secure-aggregation messages of the round (none without it), added to its row."""
        if self.secagg is None:
            return Overhead.none(len(cohort))
        sa = self.cfg.secure_aggregation
        graph = self.secagg.graph(context[MEMBERS], round_)
        survived = None if columns["secagg_failed"] else np.isin(cohort, aggregate.members)
        overhead = round_overhead(
            graph.degrees(cohort),
            survived,
            self.profiles.lookup(cohort),
            key_bytes=sa.key_bytes,
            share_bytes=sa.share_bytes,
        )
        columns.update(
            secagg_bytes_up=int(overhead.up.sum()),
            secagg_bytes_down=int(overhead.down.sum()),
            secagg_setup_s=overhead.setup_s,
            secagg_unmask_s=overhead.unmask_s,
        )
        return overhead

    def _select(self, round_: int, model_bytes: int) -> np.ndarray:
        cfg, conditions = self.cfg, self.conditions
        common = dict(seed=cfg.seed, round_=round_, num_clients=cfg.clients.num_clients)
        eligible = None
        if conditions.active:
            now = self.state.sim_time_s
            costed = conditions.max_task_j is not None

            def eligible(ids):
                return conditions.eligible(ids, now, self._work(ids, model_bytes) if costed else None)  # fmt: skip

        if cfg.privacy is not None and cfg.privacy.sampling == "poisson":
            rate = cfg.clients_per_round / cfg.clients.num_clients
            return select_poisson(**common, rate=rate, profiles=self.profiles, eligible=eligible)
        count = cfg.num_selected
        if conditions.prefer is not None:
            count = min(cfg.clients.num_clients, math.ceil(count * conditions.prefer))
        cohort = select_clients(**common, count=count, profiles=self.profiles, eligible=eligible)
        if len(cohort) > cfg.num_selected:  # the cheapest of the draw (prefer_low_energy)
            keep = conditions.cheapest(cohort, cfg.num_selected, self._work(cohort, model_bytes))
            cohort = cohort[keep]
        return cohort

    def _work(self, ids, model_bytes: int, sizes: Transfers | None = None) -> Work:
        """What the clients' tasks would be this round (profiles, bytes, times, energy)."""
        ids = np.asarray(ids, dtype=np.int64)
        if sizes is None:
            sizes = self.links.transfer_bytes(self.num_client_rows(ids), len(ids), model_bytes)
        return price(
            self.profiles.lookup(ids),
            self.workload.num_train_samples(ids),
            self.cfg.client.local_epochs,
            sizes.down,
            sizes.up * self.payloads,
        )

    def _plan(
        self, round_: int, cohort, num_samples, model_bytes: int
    ) -> tuple[RoundPlan, Transfers, Work]:
        """The round in virtual time (:func:`plan_round`), per client the bytes it implies
        (one upload payload; the download counts every payload it carries), and its work."""
        cfg = self.cfg
        sizes = self.links.transfer_bytes(self.num_client_rows(cohort), len(cohort), model_bytes)
        work = self._work(cohort, model_bytes, sizes)
        limit = None
        if self.conditions.active:
            limit = self.conditions.limit(cohort, self.state.sim_time_s, work)
        plan = plan_round(
            seed=cfg.seed,
            round_=round_,
            client_ids=cohort,
            profiles=work.profiles,
            num_samples=num_samples,
            local_epochs=cfg.client.local_epochs,
            model_bytes=sizes.down,
            update_bytes=sizes.up * self.payloads,
            # a Poisson cohort is aggregated whole: its size is the sampling's, not K
            clients_per_round=self._quorum(len(cohort)),
            deadline_s=cfg.deadline_s,
            policy=cfg.stragglers,
            limit=limit,
        )
        return plan, replace(sizes, down_raw=sizes.down_raw * self.payloads), work

    def _quorum(self, cohort_size: int) -> int:
        poisson = self.cfg.privacy is not None and self.cfg.privacy.sampling == "poisson"
        return max(cohort_size, 1) if poisson else self.cfg.clients_per_round

    def _rows(
        self, round_, plan, num_samples, bytes_, losses, quarantined, clipped, wall_start,
        dispatch, dispatch_version, energy, battery, waited, overhead: Overhead, columns: dict,
    ) -> tuple[dict, dict, np.ndarray]:  # fmt: skip
        """The round's row, its client events and the aggregated clients' durations.
        ``overhead``: the protocol messages around the training task (secure aggregation's),
        whose bytes and seconds the round also pays; ``columns``: the transforms' own."""
        state = self.state
        accepted = plan.accepted
        # a failed secure aggregation leaves the model as it was: nobody was aggregated
        aggregated = accepted & ~quarantined & (not columns.get("secagg_failed", False))
        extra_up, extra_down = int(overhead.up.sum()), int(overhead.down.sum())
        adversarial = self.pipeline.adversarial(plan.client_ids, round_)
        tally = Tally(
            start_s=state.sim_time_s,
            duration_s=plan.duration_s + overhead.seconds,
            selected=len(plan.client_ids),
            completed=int(accepted.sum()),
            partial=int((plan.status == PARTIAL).sum()),
            dropped=int((plan.status == DROPPED).sum()),
            offline=int((plan.status == OFFLINE).sum()),
            depleted=int((plan.status == DEPLETED).sum()),
            energy_j=float(energy.sum()),
            wait_s=waited,
            stragglers=int((plan.status == STRAGGLER).sum()),
            quarantined=int(quarantined.sum()),
            adversarial=int((adversarial & aggregated).sum()),
            bytes_up=int(plan.bytes_up.sum()) + extra_up,
            bytes_down=int(plan.bytes_down.sum()) + extra_down,
            bytes_up_raw=int(bytes_.up_raw[accepted].sum()) * self.payloads + extra_up,
            bytes_down_raw=int(np.round(plan.bytes_down * (bytes_.down_raw / bytes_.down)).sum())
            + extra_down,
            staleness=[0] * int(aggregated.sum()),
            losses=list(losses[aggregated]),
            samples=list(num_samples[aggregated]),
        )
        state.sim_time_s += tally.duration_s
        state.round = round_
        state.cum_bytes_up += tally.bytes_up
        state.cum_bytes_down += tally.bytes_down
        state.cum_energy_j += tally.energy_j
        dp = {"dp_epsilon": np.nan, "dp_clipped_fraction": np.nan}
        if self.accountant is not None:
            # Every round counts, even one in which no client was accepted (conservative).
            trained = int(accepted.sum())
            dp = {
                "dp_epsilon": self.accountant.epsilon(round_),
                "dp_clipped_fraction": clipped / trained if trained else np.nan,
            }
        if self.secagg is not None and self.accountant is None:
            # clients whose weighted update or weight exceeded secure_aggregation.clip_range
            # (under privacy, the config makes the range wide enough for the clipped, noised one)
            columns = {**columns, "secagg_clipped": clipped}
        row = round_row(state, tally, time.perf_counter() - wall_start, **dp, **columns)
        n = len(plan.client_ids)
        events = {
            "round": np.full(n, round_, dtype=np.int64),
            "client_id": plan.client_ids,
            "status": np.where(quarantined, QUARANTINED, plan.status.astype(str)),
            "model_version": np.full(n, dispatch_version, dtype=np.int64),
            "staleness": np.where(aggregated, 0, -1).astype(np.int64),
            "dispatch_time_s": np.full(n, dispatch),
            "finish_time_s": dispatch + overhead.setup_s + plan.finish_s,
            "download_s": plan.times.download_s,
            "compute_s": plan.times.compute_s,
            "upload_s": plan.times.upload_s,
            "num_samples": num_samples,
            "local_epochs": plan.local_epochs,
            "bytes_up": plan.bytes_up + overhead.up,
            "bytes_down": plan.bytes_down + overhead.down,
            "train_loss": losses,
            "energy_j": energy,
            "battery_j": battery,
            "adversarial": adversarial,
        }
        return row, events, overhead.setup_s + plan.finish_s[aggregated]
