"""Client conditions the drivers consult at dispatch: availability over virtual time, batteries,
energy (``clients.availability``, ``clients.battery``, ``clients.selection``, the energy fields of
``clients.profile``).

Both drivers ask the same three things, each a pure function of the config, the seed, virtual
time and the client-state store, so runs stay identical for any number of workers:

* :meth:`Conditions.eligible` — who may be selected at virtual time t: a device that holds the
  workload's training footprint (``memory_gb``), online by the availability model, battery
  allowing, and next task within ``max_task_energy_j``;
* :meth:`Conditions.limit` — for the cost model (:func:`fedray.sim.round_plan.plan_round`): the
  instant a dispatched client would go offline or empty its battery;
* :meth:`Conditions.settle` — after planning: each task's energy and its battery's new level.

Nothing here trains or talks to Ray; with none of these options set, ``active`` is False and the
drivers skip it (energy is still computed, and is 0 with the default profile).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.clients.availability import Availability
from fedray.clients.availability_trace import load_availability_trace
from fedray.clients.battery import Batteries
from fedray.clients.energy import PhaseEnergy, depletion_s, phase_energy, spent_energy
from fedray.clients.profiles import ProfileModel, Profiles
from fedray.clients.state_store import ClientStates
from fedray.config import Config
from fedray.sim.costmodel import TaskTimes, task_times, truncate_at
from fedray.sim.round_plan import DEPLETED, OFFLINE, Limit, RoundPlan

# How long without any client online before a run gives up: a year of virtual time.
MAX_IDLE_S = 366 * 86_400.0


@dataclass(frozen=True)
class Work:
    """What a set of clients would do if dispatched now: their profiles, sample counts, bytes,
    whole-task phase times and energy."""

    profiles: Profiles
    num_samples: np.ndarray
    bytes_down: np.ndarray
    bytes_up: np.ndarray
    times: TaskTimes
    energy: PhaseEnergy


def price(profiles: Profiles, num_samples, epochs, bytes_down, bytes_up) -> Work:
    times = task_times(profiles, num_samples, epochs, bytes_down, bytes_up)
    energy = phase_energy(profiles, num_samples, epochs, bytes_down, bytes_up)
    return Work(profiles, np.asarray(num_samples), bytes_down, bytes_up, times, energy)


class Conditions:
    def __init__(self, cfg: Config, profiles: ProfileModel, states: ClientStates):
        clients = cfg.clients
        a = clients.availability
        self.availability = None
        if a.varies:
            trace = load_availability_trace(a.trace) if a.trace is not None else None
            timezone = lambda ids: profiles.column("timezone_h", ids)  # noqa: E731
            self.availability = Availability(a, cfg.seed, timezone, trace)
        self.drop_offline = a.mid_task == "drop"
        self.retry_s = a.retry_s
        self.batteries = (
            Batteries(clients.battery, cfg.seed, profiles.column, states)
            if clients.battery is not None
            else None
        )
        self.max_task_j = clients.selection.max_task_energy_j
        self.prefer = clients.selection.prefer_low_energy
        # devices too small for the workload's training footprint (memory_gb) never take part
        self.fits = profiles.fits if profiles.training_memory is not None else None
        # with these, a moment when nobody may take part passes: the server waits
        self.waits = self.availability is not None or self.batteries is not None
        self.active = any(
            x is not None
            for x in (self.availability, self.batteries, self.max_task_j, self.prefer, self.fits)
        )

    def use_states(self, states: ClientStates) -> None:
        """Read and write batteries in ``states`` from now on (a resumed run's new store)."""
        if self.batteries is not None:
            self.batteries.states = states

    # ------------------------------------------------------------------ selection

    def eligible(self, client_ids, t: float, work: Work | None = None) -> np.ndarray:
        """Who of ``client_ids`` may be selected at t (``work``: their tasks, needed for the
        energy cap)."""
        ids = np.asarray(client_ids, dtype=np.int64)
        ok = np.ones(ids.shape, dtype=bool) if self.fits is None else self.fits(ids)
        if self.availability is not None:
            ok &= self.availability.online(ids, t)
        if self.batteries is not None and ok.any():
            ok[ok] = self.batteries.eligible(ids[ok], t)
        if self.max_task_j is not None and work is not None:
            ok &= task_energy(work) <= self.max_task_j
        return ok

    def cheapest(self, client_ids, count: int, work: Work) -> np.ndarray:
        """Positions of the ``count`` clients with the lowest task energy (ties: draw order)."""
        order = np.argsort(task_energy(work), kind="stable")
        return np.sort(order[:count])

    # ------------------------------------------------------------------ planning

    def limit(self, client_ids, t: float, work: Work) -> Limit | None:
        """The ``limit`` of :func:`plan_round` for clients dispatched at t (None if nothing can
        stop them early)."""
        ids = np.asarray(client_ids, dtype=np.int64)
        offline_in = None
        if self.availability is not None and self.drop_offline:
            offline_in = self.availability.online_until(ids, t) - t
        levels = plugged = None
        if self.batteries is not None:
            levels = self.batteries.level(ids, t)
            plugged = self.batteries.plugged(ids, t)
        if offline_in is None and levels is None:
            return None

        def limit(times: TaskTimes, epochs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            at = np.full(ids.shape, np.inf)
            status = np.full(ids.shape, OFFLINE, dtype=object)
            if offline_in is not None:
                at = np.maximum(offline_in, 0.0)
            if levels is not None:
                energy = phase_energy(
                    work.profiles, work.num_samples, epochs, work.bytes_down, work.bytes_up
                )
                empty = np.where(plugged, np.inf, depletion_s(energy, times, levels))
                status = np.where(empty < at, DEPLETED, status)
                at = np.minimum(at, empty)
            return at, status

        return limit

    # ------------------------------------------------------------------ after planning

    def energy(self, work: Work, plan: RoundPlan) -> np.ndarray:
        """Joules each planned task spends: it stops at its arrival, its loss, or the round's
        close (a straggler is told to stop)."""
        return plan_energy(work, plan)

    def settle(
        self, client_ids, t: float, plan: RoundPlan, spent: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Charge the tasks dispatched at t to their batteries: the energy each spent and the
        level after it (NaN without batteries). Call once per real dispatch."""
        if self.batteries is None:
            return spent, np.full(len(spent), np.nan)
        ids = np.asarray(client_ids, dtype=np.int64)
        levels = self.batteries.level(ids, t)
        plugged = self.batteries.plugged(ids, t)
        # an empty battery gives exactly what it held (the depletion instant is computed)
        spent = np.where(plan.status == DEPLETED, np.minimum(spent, levels), spent)
        stop = np.minimum(plan.finish_s, plan.duration_s)
        return spent, self.batteries.settle(ids, t, levels, plugged, spent, stop)


def plan_energy(work: Work, plan: RoundPlan) -> np.ndarray:
    """:meth:`Conditions.energy` (pure; no battery)."""
    epochs = plan.local_epochs
    whole = task_times(work.profiles, work.num_samples, epochs, work.bytes_down, work.bytes_up)
    energy = phase_energy(work.profiles, work.num_samples, epochs, work.bytes_down, work.bytes_up)
    stop = np.minimum(plan.finish_s, plan.duration_s)
    return spent_energy(energy, whole, truncate_at(whole, stop))


def task_energy(work: Work) -> np.ndarray:
    """Joules of each whole task."""
    e = work.energy
    return e.download_j + e.compute_j + e.upload_j + e.idle_w * work.times.total_s
