"""Planning one synchronous round in virtual time, before any training happens.

Every task's duration is known at dispatch from the cost model, so the whole round — who drops,
who straggles, who is cut by over-selection, when the round ends — is decided here from the
profiles and derived random draws. Only the clients the server will actually accept are then
trained: compute for clients that will be dropped is never spent (as in FedScale).

Rules, with ``K = clients_per_round`` and all selected clients dispatched at the round start:

* **dropout** — a client drops with its profile's probability, at a uniformly drawn point of its
  task; the server sees the lost connection at that instant. Work is lost, time still passes.
* **deadline policy** — ``drop``: arrivals after the deadline are stragglers (FedAvg);
  ``partial``: clients whose full task overruns the deadline run only the whole local epochs that
  fit, at least one (FedProx); ``wait``: the deadline is ignored and the server waits.
* **over-selection** — the round closes at the K-th accepted arrival; anyone still running is
  cut off as a straggler.
* the round ends at the K-th accepted arrival if there is one, otherwise when every client has
  arrived or dropped, capped at the deadline under ``drop``.

* **limits** — a client can also be lost for a reason known from its conditions
  (:mod:`fedray.sim.conditions`): it goes offline part-way (status ``offline``) or its battery
  runs out (``depleted``). ``limit(times, epochs)`` gives, per client, the second after dispatch
  at which that happens (inf for never) and the status; the earliest of that, the random
  dropout and the arrival decides.

Statuses are what the server observes: ``completed``, ``partial`` (accepted with fewer epochs),
``dropped``, ``offline``, ``depleted`` (the three ways a connection is lost), ``straggler`` (still
running when the round closed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedray import seeding
from fedray.clients.profiles import Profiles
from fedray.sim.costmodel import TaskTimes, epochs_within, task_times, truncate_at

COMPLETED, PARTIAL, DROPPED, STRAGGLER = "completed", "partial", "dropped", "straggler"
OFFLINE, DEPLETED = "offline", "depleted"
LOST = (DROPPED, OFFLINE, DEPLETED)  # statuses of a connection lost before the upload arrived

Limit = Callable[[TaskTimes, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class RoundPlan:
    """Per selected client (aligned arrays) plus the round's length."""

    client_ids: np.ndarray
    status: np.ndarray  # object array of status strings
    local_epochs: np.ndarray
    times: TaskTimes  # phase seconds as spent (truncated for dropped clients)
    finish_s: np.ndarray  # seconds after round start: arrival, drop, or would-be arrival
    bytes_down: np.ndarray
    bytes_up: np.ndarray
    duration_s: float

    @property
    def accepted(self) -> np.ndarray:
        return (self.status == COMPLETED) | (self.status == PARTIAL)

    @property
    def lost(self) -> np.ndarray:
        return np.isin(self.status, LOST)


def plan_round(
    *,
    seed: int,
    round_: int,
    client_ids: np.ndarray,
    profiles: Profiles,
    num_samples: np.ndarray,
    local_epochs: int,
    model_bytes: int,
    update_bytes: int,
    clients_per_round: int,
    deadline_s: float | None,
    policy: str,
    limit: Limit | None = None,
) -> RoundPlan:
    ids = np.asarray(client_ids, dtype=np.int64)
    n = len(ids)
    epochs = np.full(n, local_epochs, dtype=np.int64)
    times = task_times(profiles, num_samples, epochs, model_bytes, update_bytes)

    if policy == "partial" and deadline_s is not None:
        late = times.total_s > deadline_s
        if late.any():
            epochs = np.where(
                late, epochs_within(deadline_s, profiles, num_samples, local_epochs, times), epochs
            )
            times = task_times(profiles, num_samples, epochs, model_bytes, update_bytes)

    total = times.total_s
    dropped = seeding.uniform(seed, "dropout", ids, round_) < profiles.dropout
    drop_at = seeding.uniform(seed, "dropout.point", ids, round_) * total
    reason = np.full(n, DROPPED, dtype=object)
    if limit is not None:
        lost_at, lost_status = limit(times, epochs)
        forced = lost_at < np.where(dropped, drop_at, total)  # before the drop or the arrival
        dropped = dropped | forced
        drop_at = np.where(forced, lost_at, drop_at)
        reason = np.where(forced, lost_status, reason)
    resolve = np.where(dropped, drop_at, total)

    cutoff = deadline_s if (policy == "drop" and deadline_s is not None) else np.inf
    on_time = ~dropped & (total <= cutoff)

    # Arrivals in virtual-time order; ties broken by client id so the order is seeded, not racy.
    order = np.lexsort((ids, resolve))
    arrival_order = order[on_time[order]]
    if len(arrival_order) >= clients_per_round:
        accepted_idx = arrival_order[:clients_per_round]
        duration = float(resolve[accepted_idx[-1]])
    else:
        accepted_idx = arrival_order
        duration = float(min(resolve.max(initial=0.0), cutoff)) if n else 0.0

    accepted = np.zeros(n, dtype=bool)
    accepted[accepted_idx] = True
    status = np.full(n, STRAGGLER, dtype=object)
    was_dropped = dropped & (drop_at <= duration)
    status[was_dropped] = reason[was_dropped]
    status[accepted] = COMPLETED
    status[accepted & (epochs < local_epochs)] = PARTIAL

    spent = truncate_at(times, np.where(was_dropped, drop_at, total))
    finish = np.where(was_dropped, drop_at, total)

    # Bytes that actually crossed the link: the model once downloaded (or the part of it that
    # made it before a drop), the update only when the server received it.
    down_transfer = np.maximum(times.download_s - profiles.latency_ms / 1000.0, 1e-12)
    down_frac = np.clip((spent.download_s - profiles.latency_ms / 1000.0) / down_transfer, 0.0, 1.0)
    bytes_down = np.where(was_dropped, np.floor(model_bytes * down_frac), model_bytes).astype(
        np.int64
    )
    bytes_up = np.where(accepted, update_bytes, 0).astype(np.int64)
    return RoundPlan(
        client_ids=ids,
        status=status,
        local_epochs=epochs,
        times=spent,
        finish_s=finish,
        bytes_down=bytes_down,
        bytes_up=bytes_up,
        duration_s=duration,
    )
