"""Client batteries over virtual time.

Every battery starts at ``initial_level`` × ``battery_j`` (a seeded draw per client) at t = 0.
Between tasks it charges at the profile's ``charge_w`` during ``plugged_hours`` of the client's
local day, up to its capacity::

    level(t) = min(capacity, level(t₀) + charge_w · plugged_seconds(t₀, t))

where ``plugged_seconds`` has a closed form over whole and partial days
(:func:`fedray.clients.availability.window_seconds`). A task dispatched while the client is
unplugged draws its energy (:mod:`fedray.clients.energy`) from the battery; if that would take
the level below zero, the task stops at the instant it reaches zero (status ``depleted``), so a
level is never negative. A task dispatched while plugged in runs from the charger and the battery
keeps charging. (Being plugged in or out part-way through a task is taken into account from the
task's end.)

A client's battery is one entry of the client-state store, ``battery`` = [level in J, as of
virtual second], written at dispatch for the whole task; clients never seen have no entry, so a
population of millions costs nothing until its clients are selected.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedray import seeding
from fedray.clients.availability import in_window, local_seconds, window_seconds
from fedray.clients.state_store import ClientStates
from fedray.config import BatteryConfig, Constant, LogNormal, Uniform

BATTERY = "battery"  # the client-state entry: [level_j, as_of_s]


def _initial_fraction(cfg: BatteryConfig, seed: int, ids: np.ndarray) -> np.ndarray:
    d = cfg.initial_level
    if isinstance(d, Constant):
        return np.full(ids.shape, float(d.value))
    if isinstance(d, Uniform):
        return d.low + (d.high - d.low) * seeding.uniform(seed, "battery.initial", ids)
    assert isinstance(d, LogNormal)
    values = d.median * np.exp(d.sigma * seeding.normal(seed, "battery.initial", ids))
    return np.clip(values, d.min or 0.0, min(d.max or 1.0, 1.0))


class Batteries:
    """Battery levels of a population, read from and written to the client-state store."""

    def __init__(
        self,
        cfg: BatteryConfig,
        seed: int,
        column: Callable[[str, np.ndarray], np.ndarray],
        states: ClientStates,
    ):
        """``column(field, ids)``: the profile column (``battery_j``, ``charge_w``,
        ``timezone_h``) of those clients."""
        self.cfg, self.seed, self.column, self.states = cfg, seed, column, states

    def plugged(self, client_ids, t) -> np.ndarray:
        ids = np.asarray(client_ids, dtype=np.int64)
        return in_window(local_seconds(t, self.column("timezone_h", ids)), self.cfg.plugged_hours)

    def plugged_seconds(self, client_ids, t0, t1) -> np.ndarray:
        ids = np.asarray(client_ids, dtype=np.int64)
        tz = self.column("timezone_h", ids)
        return window_seconds(local_seconds(t0, tz), local_seconds(t1, tz), self.cfg.plugged_hours)

    def level(self, client_ids, t) -> np.ndarray:
        """Joules in each battery at virtual time t (no task running between its entry and t)."""
        ids = np.asarray(client_ids, dtype=np.int64)
        capacity = self.column("battery_j", ids)
        level = _initial_fraction(self.cfg, self.seed, ids) * capacity
        as_of = np.zeros(ids.shape)
        for i, cid in enumerate(ids.tolist()):
            entry = self.states.get(cid, BATTERY)
            if entry is not None:
                level[i], as_of[i] = entry
        as_of = np.minimum(as_of, t)  # a task's end may lie past a round's start (stragglers)
        charged = self.column("charge_w", ids) * self.plugged_seconds(ids, as_of, t)
        return np.minimum(capacity, level + charged)

    def fraction(self, client_ids, t) -> np.ndarray:
        ids = np.asarray(client_ids, dtype=np.int64)
        return self.level(ids, t) / self.column("battery_j", ids)

    def eligible(self, client_ids, t) -> np.ndarray:
        """Who may take part at t by ``participate``."""
        ids = np.asarray(client_ids, dtype=np.int64)
        rule = self.cfg.participate
        charging = self.plugged(ids, t) if rule != "above_min" else np.zeros(ids.shape, bool)
        if rule == "charging":
            return charging
        above = self.fraction(ids, t) >= self.cfg.min_level
        return above if rule == "above_min" else charging | above

    def settle(
        self, client_ids, t0: float, levels, plugged, spent_j, end_s
    ) -> np.ndarray:  # fmt: skip
        """Record tasks dispatched at ``t0`` with battery ``levels`` and ``plugged`` state, that
        spent ``spent_j`` joules and ended ``end_s`` after dispatch; returns the levels after."""
        ids = np.asarray(client_ids, dtype=np.int64)
        levels = np.asarray(levels, dtype=np.float64)
        end = t0 + np.asarray(end_s, dtype=np.float64)
        spent = np.where(plugged, 0.0, np.asarray(spent_j, dtype=np.float64))
        after = np.maximum(levels - spent, 0.0)
        # plugged in: it kept charging through the task, which level() computes from t0
        as_of = np.where(plugged, t0, end)
        self.states.update(
            {
                int(c): {BATTERY: np.array([lv, when])}
                for c, lv, when in zip(ids.tolist(), after.tolist(), as_of.tolist(), strict=True)
            }
        )
        return self.level(ids, end)
