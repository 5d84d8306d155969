"""The asynchronous driver: ``concurrency`` clients always in flight, consumed in virtual-time order.

At virtual time 0 the driver dispatches C clients. Each dispatch fixes everything about the task
before any training happens: which client (a seeded draw among the available clients not already
in flight), the model version it starts from, and — from the cost model — when it arrives or drops
out. Arrivals are therefore popped from an event queue in virtual-time order (ties by dispatch
number), and every pop frees a slot that is refilled at that same simulated instant with the model
current at that instant.

Training runs ahead of consumption. A client's result depends only on its start model, its
client id and its dispatch number (which keys its shuffling and codec draws), so dispatched clients
are batched into groups of ``execution.clients_per_task`` and submitted to the pool at once; all
in-flight clients train concurrently while the driver waits only for the one it needs next. A
group may mix model versions (each task names its start model), so even FedAsync, whose model
changes at every arrival, keeps the actors fed with whole groups. Which clients share a group
never changes a result, so tables are identical for any number of workers.

Server side, per arrival with staleness τ = (server version now) − (version at dispatch):

* ``max_staleness`` — an update older than that is discarded (status ``stale``);
* FedAsync (``strategy.name: fedasync``) mixes the client's model in at once;
* otherwise FedBuff: the staleness-weighted update joins a buffer, and every ``buffer_size``
  arrivals the configured strategy takes one server step.

Each server step is one row of ``rounds.parquet``; client events are written with the row during
whose window they resolved. Clients still in flight when the last step is taken are not recorded.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

import numpy as np
import ray

from fedray.config import Config
from fedray.errors import UserError
from fedray.execution.worker import GroupResult, Task
from fedray.sim.dispatch import DispatchPlan, DispatchPlanner
from fedray.sim.driver import Driver, DriverState, enough_updates, per_row_sum
from fedray.sim.round_plan import COMPLETED, DROPPED
from fedray.strategies import FedAsync, staleness_weight
from fedray.strategies.fedbuff import UpdateBuffer
from fedray.workloads import Workload

STALE = "stale"
_INLINE_BYTES = 64 * 1024


@dataclass
class InFlight:
    """One dispatched client task: its plan (fixed at dispatch) and where it trains."""

    seq: int  # dispatch number: keys the client's shuffling, codec and dropout draws
    version: int  # model version it starts from
    dispatch_s: float
    plan: DispatchPlan
    ticket: int | None = None  # pool ticket of the group it trains in; None until submitted
    row: int = 0  # its row in that group's result

    @property
    def finish_s(self) -> float:
        """Arrival, or the instant it drops out."""
        return self.dispatch_s + self.plan.duration_s


@dataclass
class _Version:
    """A model version clients were dispatched with, kept while any of them is in flight."""

    params: np.ndarray  # the decoded broadcast clients start from
    payload_bytes: int
    users: int = 0
    ref: ray.ObjectRef | None = None  # put in the object store at first use, if large

    def handle(self) -> ray.ObjectRef | np.ndarray:
        # A small model travels inside the call (Ray inlines small arguments anyway, and a put
        # per version costs ~1 ms); a large one goes into the object store once per version.
        if self.params.nbytes <= _INLINE_BYTES:
            return self.params
        if self.ref is None:
            self.ref = ray.put(self.params)
        return self.ref


_EVENT_COLUMNS = (
    "client_id",
    "status",
    "model_version",
    "staleness",
    "dispatch_time_s",
    "finish_time_s",
    "download_s",
    "compute_s",
    "upload_s",
    "num_samples",
    "local_epochs",
    "bytes_up",
    "bytes_down",
    "train_loss",
)


@dataclass
class _Window:
    """Everything that happened since the previous server step (one row's worth). Events are
    kept as plain column lists: FedAsync takes a step per arrival, and per-step numpy work would
    cost more than the step."""

    start_s: float = 0.0
    dispatched: int = 0
    bytes_down: int = 0
    bytes_down_raw: int = 0
    bytes_up: int = 0
    bytes_up_raw: int = 0
    arrived: int = 0
    dropped: int = 0
    stale: int = 0
    durations: list[float] = field(default_factory=list)  # of the updates aggregated
    events: dict[str, list] = field(default_factory=lambda: {c: [] for c in _EVENT_COLUMNS})


class AsyncDriver(Driver):
    def __init__(self, cfg: Config, workload: Workload, *args, **kwargs):
        super().__init__(cfg, workload, *args, **kwargs)
        acfg = cfg.asynchronous
        self.fedasync = isinstance(self.strategy, FedAsync)
        self.buffer_size = 1 if self.fedasync else (acfg.buffer_size or 10)
        self.buffer = (
            None
            if self.fedasync
            else UpdateBuffer(
                size=self.buffer_size,
                staleness=staleness_weight(acfg),
                keep_rows=not self.strategy.linear,
                weighting=acfg.weighting,
            )
        )
        self.planner = DispatchPlanner(
            seed=cfg.seed,
            num_clients=cfg.clients.num_clients,
            profiles=self.profiles,
            num_train_samples=workload.num_train_samples,
            local_epochs=cfg.client.local_epochs,
            transfer_bytes=lambda ids, model_bytes: self.links.transfer_bytes(
                self.num_client_rows(ids), len(ids), model_bytes
            ),
        )

        self._events: list[tuple[float, int]] = []  # (finish_s, seq) heap
        self._in_flight: dict[int, InFlight] = {}  # seq -> task
        self._busy: set[int] = set()  # client ids in flight
        self._pending: list[InFlight] = []  # dispatched, not yet submitted to the pool
        # ticket -> [GroupResult | None, unconsumed tasks, planned upload bytes per task]
        self._groups: dict[int, list] = {}
        self._versions: dict[int, _Version] = {}
        self._next_seq = 0
        self._window = _Window()
        self._aggregated: list[tuple[int, float, int]] = []  # (staleness, loss, samples)

    # ------------------------------------------------------------------ the event loop

    def run(self) -> DriverState:
        wall_start = time.perf_counter()
        for _ in range(self.cfg.asynchronous.concurrency):
            self._dispatch(0.0)
        # A population where (nearly) everyone drops out would never take a step; stop instead.
        patience = max(10_000, 100 * self.cfg.asynchronous.concurrency * (self.buffer_size or 1))
        last_step = (0, 0)  # (round, dispatch number) at the last server step
        while self.state.round < self.cfg.rounds:
            if self.state.round != last_step[0]:
                last_step = (self.state.round, self._next_seq)
            elif self._next_seq - last_step[1] > patience:
                raise UserError(
                    f"no server update in {patience} dispatches: nearly every client drops out or "
                    "is too stale; lower clients.profile.dropout or raise asynchronous.max_staleness"
                )
            finish_s, seq = heapq.heappop(self._events)
            task = self._in_flight.pop(seq)
            self._busy.discard(task.plan.client_id)
            self.state.sim_time_s = finish_s
            if task.plan.dropped:
                self._resolve(task, DROPPED)
            else:
                self._arrive(task, wall_start)
            self._release(task.version)
            if self.state.round < self.cfg.rounds:
                self._dispatch(finish_s)
        return self.state

    def _arrive(self, task: InFlight, wall_start: float) -> None:
        result = self._result_of(task)
        update = result.updates[task.row]
        loss = float(result.train_loss[task.row])
        cid = task.plan.client_id
        # The client keeps its residual and its private parameters whether or not the server
        # uses the update.
        if self.residuals is not None and cid in result.residuals:
            self.residuals.put(cid, result.residuals[cid])
        if self.privates is not None and cid in result.privates:
            self.privates.put(cid, result.privates[cid])
        index = None if self.flat.dense else self.flat.upload_index(result.rows_of(task.row))
        state = self.state
        staleness = state.server.version - task.version
        max_staleness = self.cfg.asynchronous.max_staleness
        if max_staleness is not None and staleness > max_staleness:
            self._resolve(task, STALE, staleness=staleness, loss=loss)
            return
        self._resolve(task, COMPLETED, staleness=staleness, loss=loss)
        self._aggregated.append((staleness, loss, task.plan.num_samples))
        if self.fedasync:
            if index is None:
                client_model = self._versions[task.version].params + update
            else:
                # Only what the client uploaded is mixed; untouched rows and private coordinates
                # keep the current model's values instead of being pulled back to version τ's.
                client_model = state.server.params.astype(np.float32)
                client_model[index] = self._versions[task.version].params[index] + update[index]
            state.server = self.strategy.mix(state.server, client_model, staleness)
            self._step_taken(wall_start)
            return
        self.buffer.add(update, staleness, task.plan.num_samples, index=index)
        if self.buffer.full:
            total, weight, coverage = self.buffer.drain_with_coverage()
            if self.strategy.linear:
                if coverage is not None and self.flat.tables:
                    total = per_row_sum(total, coverage, weight)
                state.server = self.strategy.apply(state.server, total, weight)
            elif enough_updates(self.strategy, len(total)):
                state.server = self.strategy.aggregate(state.server, total, weight)
            self._step_taken(wall_start)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, now: float) -> None:
        seq = self._next_seq
        self._next_seq += 1
        version = self._current_version()
        plan = self.planner.next(seq, self._busy, version.payload_bytes)
        task = InFlight(seq=seq, version=self.state.server.version, dispatch_s=now, plan=plan)
        version.users += 1
        self._in_flight[seq] = task
        self._busy.add(task.plan.client_id)
        heapq.heappush(self._events, (task.finish_s, seq))
        window = self._window
        window.dispatched += 1
        window.bytes_down += task.plan.bytes_down
        window.bytes_down_raw += task.plan.bytes_down_raw
        if not task.plan.dropped:  # compute for clients that will drop out is never spent
            self._pending.append(task)
            if len(self._pending) >= self.cfg.group_size():
                self._submit_pending()

    def _current_version(self) -> _Version:
        v = self.state.server.version
        if v not in self._versions:
            params, nbytes = self.links.broadcast(self.state.server.params, v)
            self._versions[v] = _Version(params, nbytes)
        return self._versions[v]

    def _release(self, version: int) -> None:
        entry = self._versions[version]
        entry.users -= 1
        if entry.users == 0 and version != self.state.server.version:
            del self._versions[version]

    # ------------------------------------------------------------------ training on the pool

    def _submit_pending(self) -> None:
        tasks, self._pending = self._pending, []
        versions = list(dict.fromkeys(t.version for t in tasks))  # first-appearance order
        index = {v: i for i, v in enumerate(versions)}
        group = [
            Task(t.plan.client_id, t.plan.local_epochs, round=t.seq, model=index[t.version])
            for t in tasks
        ]
        residuals = None
        if self.residuals is not None:
            residuals = {
                t.plan.client_id: r
                for t in tasks
                if (r := self.residuals.get(t.plan.client_id)) is not None
            }
        ticket = self.pool.submit(
            [self._versions[v].handle() for v in versions],
            0,
            group,
            self.strategy.client_mu,
            residuals,
            cost=float(sum(t.plan.num_samples * t.plan.local_epochs for t in tasks)),
            extras={"privates": self.group_privates(group)},
        )
        for row, t in enumerate(tasks):
            t.ticket, t.row = ticket, row
        self._groups[ticket] = [None, len(tasks), np.array([t.plan.bytes_up for t in tasks])]

    def _result_of(self, task: InFlight) -> GroupResult:
        if task.ticket is None:  # the earliest arrival is still waiting for a full group
            self._submit_pending()
        entry = self._groups[task.ticket]
        if entry[0] is None:
            half_group = max(1, self.cfg.group_size() // 2)
            if len(self._pending) >= half_group and not self.pool.done(task.ticket):
                # About to block: hand the actors what is already dispatched rather than let
                # them drain their queues while the driver waits.
                self._submit_pending()
            entry[0] = self.pool.fetch(task.ticket)
            self.links.check_uploads(entry[0].bytes_up, entry[2])
        result = entry[0]
        entry[1] -= 1
        if entry[1] == 0:
            del self._groups[task.ticket]
        return result

    # ------------------------------------------------------------------ recording

    def _resolve(self, task: InFlight, status: str, staleness: int = -1, loss=np.nan) -> None:
        window = self._window
        arrived = status != DROPPED
        bytes_up = task.plan.bytes_up if arrived else 0
        values = (
            task.plan.client_id,
            status,
            task.version,
            staleness,
            task.dispatch_s,
            task.finish_s,
            task.plan.download_s,
            task.plan.compute_s,
            task.plan.upload_s,
            task.plan.num_samples,
            task.plan.local_epochs,
            bytes_up,
            task.plan.bytes_down,
            loss,
        )
        for column, value in zip(window.events.values(), values, strict=True):
            column.append(value)
        window.bytes_up += bytes_up
        window.arrived += arrived
        window.dropped += status == DROPPED
        window.stale += status == STALE
        window.bytes_up_raw += task.plan.bytes_up_raw if arrived else 0
        if status == COMPLETED:
            window.durations.append(task.finish_s - task.dispatch_s)

    def _step_taken(self, wall_start: float) -> None:
        cfg, state, window = self.cfg, self.state, self._window
        state.round += 1
        bytes_up_raw = window.bytes_up_raw
        state.cum_bytes_up += window.bytes_up
        state.cum_bytes_down += window.bytes_down
        stale = [s for s, _, _ in self._aggregated]
        samples = sum(n for _, _, n in self._aggregated)
        metrics = {
            "eval_loss": np.nan,
            "eval_accuracy": np.nan,
            "global_train_loss": np.nan,
            "global_train_accuracy": np.nan,
        }
        if state.round % cfg.eval_every == 0 or state.round == cfg.rounds:
            metrics = self.evaluate(state.server.params, self.eval_privates())
        row = {
            "round": state.round,
            "sim_time_s": state.sim_time_s,
            "round_duration_s": state.sim_time_s - window.start_s,
            "wall_time_s": time.perf_counter() - wall_start,
            "model_version": state.server.version,
            "num_selected": window.dispatched,
            "num_completed": len(stale),
            "num_partial": 0,
            "num_dropped": window.dropped,
            "num_stragglers": 0,
            "num_stale": window.stale,
            "num_aggregated": len(stale),
            "staleness_mean": sum(stale) / len(stale),
            "staleness_max": max(stale),
            "bytes_up": window.bytes_up,
            "bytes_down": window.bytes_down,
            "bytes_up_raw": bytes_up_raw,
            "bytes_down_raw": window.bytes_down_raw,
            "compression_ratio": bytes_up_raw / window.bytes_up if window.bytes_up else np.nan,
            "cum_bytes_up": state.cum_bytes_up,
            "cum_bytes_down": state.cum_bytes_down,
            "train_loss": sum(loss * n for _, loss, n in self._aggregated) / samples
            if samples > 0
            else np.nan,
            **metrics,
        }
        events = window.events
        events["round"] = [state.round] * len(events["status"])
        durations = np.asarray(window.durations)
        self.record(row, events, durations)
        self._window = _Window(start_s=state.sim_time_s)
        self._aggregated = []
