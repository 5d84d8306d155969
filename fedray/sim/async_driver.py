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
* the strategy's ``arrival`` adds the update to its aggregate (the buffer), damped by s(τ), and
  every ``buffer_size`` arrivals ``server_step`` takes one server step: FedAsync (a buffer of one
  that mixes the client's model in) or FedBuff (K updates, then the configured strategy's step).

Each server step is one row of ``rounds.parquet``; client events are written with the row during
whose window they resolved. Clients still in flight when the last step is taken are not recorded.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import ray

from fedray.config import Config
from fedray.errors import UserError
from fedray.execution.worker import GroupJob, GroupResult, Task
from fedray.privacy import Accountant
from fedray.sim.conditions import MAX_IDLE_S
from fedray.sim.dispatch import DispatchPlan, DispatchPlanner
from fedray.sim.driver import Driver, DriverState
from fedray.sim.recorder import QUARANTINED, Tally, round_row
from fedray.sim.round_plan import COMPLETED, DEPLETED, DROPPED, LOST, OFFLINE
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
    row: int = 0  # its position in that group

    @property
    def finish_s(self) -> float:
        """Arrival, or the instant it drops out."""
        return self.dispatch_s + self.plan.duration_s


@dataclass
class _Version:
    """A model version clients were dispatched with, kept while any of them is in flight."""

    received: dict  # the decoded broadcast clients start from ({"params": ..., **downlink})
    payload_bytes: int
    users: int = 0
    ref: ray.ObjectRef | None = None  # put in the object store at first use, if large

    def handle(self) -> ray.ObjectRef | dict:
        # A small model travels inside the call (Ray inlines small arguments anyway, and a put
        # per version costs ~1 ms); a large one goes into the object store once per version.
        if sum(v.nbytes for v in self.received.values()) <= _INLINE_BYTES:
            return self.received
        if self.ref is None:
            self.ref = ray.put(self.received)
        return self.ref


@dataclass
class _Group:
    """A group of dispatched clients submitted to the pool as one job."""

    unconsumed: int  # its tasks whose arrival the driver has not consumed yet
    planned_bytes: np.ndarray  # upload bytes the cost model charged each task at dispatch
    result: GroupResult | None = None  # fetched at the first arrival that needs it


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
    "energy_j",
    "battery_j",
    "adversarial",
)


@dataclass
class _Window:
    """Everything that happened since the previous server step (one row's worth). Events are
    kept as plain column lists: FedAsync takes a step per arrival, and per-step numpy work would
    cost more than the step."""

    tally: Tally = field(default_factory=Tally)
    durations: list[float] = field(default_factory=list)  # of the updates aggregated
    clipped: int = 0  # of the updates aggregated, how many DP clipping scaled down (not saved:
    # checkpoints are taken right after a server step, when it is 0)
    events: dict[str, list] = field(default_factory=lambda: {c: [] for c in _EVENT_COLUMNS})


class AsyncDriver(Driver):
    def __init__(self, cfg: Config, workload: Workload, *args, **kwargs):
        super().__init__(cfg, workload, *args, **kwargs)
        self.buffer = self.strategy.new_aggregate()
        self.planner = DispatchPlanner(
            seed=cfg.seed,
            num_clients=cfg.clients.num_clients,
            profiles=self.profiles,
            num_train_samples=workload.num_train_samples,
            local_epochs=cfg.client.local_epochs,
            transfer_bytes=lambda ids, model_bytes: self.links.transfer_bytes(
                self.num_client_rows(ids), len(ids), model_bytes
            ),
            conditions=self.conditions,
        )
        # (finish_s, seq) heap; a negative seq is a retry: nobody was eligible at dispatch
        self._events: list[tuple[float, int]] = []
        self._retries = 0  # retries ever scheduled (numbers them)
        self._idle_since: float | None = None  # when dispatching last found nobody eligible
        self._in_flight: dict[int, InFlight] = {}  # seq -> task
        self._busy: set[int] = set()  # client ids in flight
        self._pending: list[InFlight] = []  # dispatched, not yet submitted to the pool
        self._groups: dict[int, _Group] = {}  # pool ticket -> its group
        self._versions: dict[int, _Version] = {}
        self._next_seq = 0
        self._last_step = (0, 0)  # (round, dispatch number) at the last server step
        self._window = _Window()
        # DP-FedBuff's sensitivity bound: a client contributes at most once to a buffer, so one
        # that has is not dispatched again until the buffer's server step (fedray.privacy).
        self._once_per_buffer = cfg.privacy is not None and cfg.privacy.kind == "central"
        self._in_buffer: set[int] = set()
        self.accountant = Accountant.of(cfg)

    # ------------------------------------------------------------------ the event loop

    def run(self) -> DriverState:
        wall_start = time.perf_counter()
        if self.state.queue:
            self._restore_queue(self.state.queue)
        else:
            for _ in range(self.cfg.asynchronous.concurrency):
                self._dispatch(0.0)
        # A population where (nearly) everyone drops out would never take a step; stop instead.
        buffer = getattr(self.strategy, "buffer_size", 1)
        patience = max(10_000, 100 * self.cfg.asynchronous.concurrency * buffer)
        while self.state.round < self.cfg.rounds:
            if self.state.round != self._last_step[0]:
                self._last_step = (self.state.round, self._next_seq)
            elif self._next_seq - self._last_step[1] > patience:
                raise UserError(
                    f"no server update in {patience} dispatches: nearly every client drops out or "
                    "is too stale; lower clients.profile.dropout or raise asynchronous.max_staleness"
                )
            finish_s, seq = heapq.heappop(self._events)
            if seq < 0:  # a slot waited for a client to come online
                self.state.sim_time_s = max(self.state.sim_time_s, finish_s)
                self._dispatch(finish_s)
                continue
            task = self._in_flight.pop(seq)
            self._busy.discard(task.plan.client_id)
            self.state.sim_time_s = finish_s
            stepped = False
            if task.plan.dropped:
                self._resolve(task, task.plan.status)
            else:
                stepped = self._arrive(task, wall_start)
            self._release(task.version)
            if self.state.round < self.cfg.rounds:
                self._dispatch(finish_s)
            if stepped:
                self.after_step()
        return self.state

    def _arrive(self, task: InFlight, wall_start: float) -> bool:
        """Consume an arrival; whether it completed a server step."""
        result, k = self._result_of(task)
        cid, state = task.plan.client_id, self.state
        loss = float(result.train_loss[k])
        if result.quarantined[k]:
            self._resolve(task, QUARANTINED, loss=loss)
            return False
        # The client keeps its state (residual, private parameters) whether or not the server
        # uses the update.
        if cid in result.states:
            self.client_states.update({cid: result.states[cid]})
        staleness = state.server.version - task.version
        max_staleness = self.cfg.asynchronous.max_staleness
        if max_staleness is not None and staleness > max_staleness:
            self._resolve(task, STALE, staleness=staleness, loss=loss)
            return False
        self._resolve(task, COMPLETED, staleness=staleness, loss=loss)
        at = int(result.row[k])
        if self._once_per_buffer:
            self._in_buffer.add(cid)
        self._window.clipped += bool(result.clipped[k])
        self.strategy.arrival(
            self.buffer,
            result.aggregate.rows[at],
            # the weight the client transforms left (its sample count; 1 under DP)
            result.aggregate.row_weights[at],
            staleness,
            start=self._versions[task.version].received["params"],
            current=state.server.params,
            index=result.aggregate.row_index[at],
        )
        if self.buffer.count < getattr(self.strategy, "buffer_size", 1):
            return False
        # the transforms' steps on the buffer's sum (DP-FedBuff's noise and fixed denominator)
        columns = self.pipeline.finalize(self.buffer, state.round + 1)
        state.server = self.strategy.server_step(state.server, self.buffer)
        self.buffer = self.strategy.new_aggregate()
        self._in_buffer.clear()
        self._step_taken(wall_start, columns)
        return True

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, now: float) -> None:
        seq = self._next_seq
        version = self._current_version()
        busy = self._busy | self._in_buffer if self._in_buffer else self._busy
        plan = self.planner.next(seq, busy, version.payload_bytes, now)
        if plan is None:  # nobody eligible now: this slot tries again later
            self._wait(now)
            return
        self._idle_since = None
        self._next_seq += 1
        task = InFlight(seq=seq, version=self.state.server.version, dispatch_s=now, plan=plan)
        self._track(task)
        tally = self._window.tally
        tally.selected += 1
        tally.bytes_down += task.plan.bytes_down
        tally.bytes_down_raw += task.plan.bytes_down_raw

    def _wait(self, now: float) -> None:
        if self._idle_since is None:
            self._idle_since = now
        elif now - self._idle_since > MAX_IDLE_S:
            raise UserError(
                f"no client was online and eligible for {(now - self._idle_since) / 86400:.0f} "
                "simulated days; check clients.availability and clients.battery"
            )
        self._retries += 1
        retry_s = self.conditions.retry_s
        self._window.tally.wait_s += retry_s  # slot-seconds: one slot waits
        heapq.heappush(self._events, (now + retry_s, -self._retries))

    def _track(self, task: InFlight) -> None:
        self._versions[task.version].users += 1
        self._in_flight[task.seq] = task
        self._busy.add(task.plan.client_id)
        heapq.heappush(self._events, (task.finish_s, task.seq))
        if not task.plan.dropped:  # compute for clients that will drop out is never spent
            self._pending.append(task)
            if len(self._pending) >= self.cfg.group_size():
                self._submit_pending()

    def _current_version(self) -> _Version:
        v = self.state.server.version
        if v not in self._versions:
            received, nbytes = self.broadcast(v)
            self._versions[v] = _Version(received, nbytes)
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
        job = GroupJob(
            index=0,
            round=0,
            tasks=group,
            models=[self._versions[v].handle() for v in versions],
            states=self.client_states.bundle(t.client_id for t in group),
            per_client=True,
        )
        ticket = self.pool.submit(
            job, cost=float(sum(t.plan.num_samples * t.plan.local_epochs for t in tasks))
        )
        for row, t in enumerate(tasks):
            t.ticket, t.row = ticket, row
        self._groups[ticket] = _Group(len(tasks), np.array([t.plan.bytes_up for t in tasks]))

    def _result_of(self, task: InFlight) -> tuple[GroupResult, int]:
        if task.ticket is None:  # the earliest arrival is still waiting for a full group
            self._submit_pending()
        group = self._groups[task.ticket]
        if group.result is None:
            half_group = max(1, self.cfg.group_size() // 2)
            if len(self._pending) >= half_group and not self.pool.done(task.ticket):
                # About to block: hand the actors what is already dispatched rather than let
                # them drain their queues while the driver waits.
                self._submit_pending()
            group.result = self.pool.fetch(task.ticket)
            ok = ~group.result.quarantined
            self.links.check_uploads(group.result.bytes_up[ok], group.planned_bytes[ok])
        group.unconsumed -= 1
        if group.unconsumed == 0:
            del self._groups[task.ticket]
        return group.result, task.row

    # ------------------------------------------------------------------ recording

    def _resolve(self, task: InFlight, status: str, staleness: int = -1, loss=np.nan) -> None:
        window, tally = self._window, self._window.tally
        arrived = status not in LOST
        bytes_up = task.plan.bytes_up if arrived else 0
        adversarial = bool(self.pipeline.adversarial([task.plan.client_id], task.seq)[0])
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
            task.plan.energy_j,
            task.plan.battery_j,
            adversarial,
        )
        for column, value in zip(window.events.values(), values, strict=True):
            column.append(value)
        tally.bytes_up += bytes_up
        tally.dropped += status == DROPPED
        tally.offline += status == OFFLINE
        tally.depleted += status == DEPLETED
        tally.energy_j += task.plan.energy_j
        tally.stale += status == STALE
        tally.quarantined += status == QUARANTINED
        tally.bytes_up_raw += task.plan.bytes_up_raw if arrived else 0
        if status == COMPLETED:
            window.durations.append(task.finish_s - task.dispatch_s)
            tally.completed += 1
            tally.adversarial += adversarial
            tally.staleness.append(staleness)
            tally.losses.append(loss)
            tally.samples.append(task.plan.num_samples)

    def _step_taken(self, wall_start: float, columns: dict) -> None:
        cfg, state, window = self.cfg, self.state, self._window
        state.round += 1
        state.cum_bytes_up += window.tally.bytes_up
        state.cum_bytes_down += window.tally.bytes_down
        state.cum_energy_j += window.tally.energy_j
        if self.accountant is not None:  # every server step releases one noised buffer
            aggregated = len(window.tally.staleness)
            columns = {
                **columns,
                "dp_epsilon": self.accountant.epsilon(state.round),
                "dp_clipped_fraction": window.clipped / aggregated if aggregated else np.nan,
            }
        row = round_row(state, window.tally, time.perf_counter() - wall_start, **columns)
        if state.round % cfg.eval_every == 0 or state.round == cfg.rounds:
            row.update(self.evaluate(state.server.params, self.eval_privates()))
        events = window.events
        events["round"] = [state.round] * len(events["status"])
        self.record(row, events, np.asarray(window.durations))
        self._window = _Window(tally=Tally(start_s=state.sim_time_s))

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> None:
        # Taken right after a server step: the buffer is empty, and in-flight clients are
        # resubmitted on resume (a result depends only on its task, never on its group).
        self.state.queue = {
            "next_seq": self._next_seq,
            "last_step": list(self._last_step),
            "retries": [[t, s] for t, s in sorted(self._events) if s < 0],
            "retry_count": self._retries,
            "idle_since": self._idle_since,
            "in_flight": [
                {"seq": t.seq, "version": t.version, "dispatch_s": t.dispatch_s, **asdict(t.plan)}
                for t in sorted(self._in_flight.values(), key=lambda t: t.seq)
            ],
            "versions": {
                str(v): {"received": e.received, "payload_bytes": e.payload_bytes}
                for v, e in self._versions.items()
            },
            "window": {
                "tally": asdict(self._window.tally),
                "durations": self._window.durations,
                "events": self._window.events,
            },
        }
        super().save_checkpoint()
        self.state.queue = {}

    def _restore_queue(self, queue: dict) -> None:
        self._next_seq = int(queue["next_seq"])
        self._last_step = tuple(int(x) for x in queue["last_step"])
        self._retries = int(queue.get("retry_count", 0))
        self._idle_since = queue.get("idle_since")
        for when, seq in queue.get("retries", []):
            heapq.heappush(self._events, (float(when), int(seq)))
        for v, entry in queue["versions"].items():
            self._versions[int(v)] = _Version(dict(entry["received"]), int(entry["payload_bytes"]))
        window = queue["window"]
        self._window = _Window(Tally(**window["tally"]), list(window["durations"]))
        self._window.events = {c: list(window["events"][c]) for c in _EVENT_COLUMNS}
        names = {f for f in DispatchPlan.__dataclass_fields__}
        for saved in queue["in_flight"]:
            plan = DispatchPlan(**{k: v for k, v in saved.items() if k in names})
            task = InFlight(
                int(saved["seq"]), int(saved["version"]), float(saved["dispatch_s"]), plan
            )
            self._track(task)
        self.state.queue = {}
