"""Availability over virtual time: diurnal windows, on/off processes, correlated outages, traces.

Each part is a pure function of (seed, client id, virtual time t) and answers two questions for
arrays of clients: is the client online at t (:meth:`Availability.online`), and, if it is, when
does it next go offline (:meth:`Availability.online_until`; ``inf`` if never). A client is online
when every configured part says so; the per-round ``profile.availability`` draw and the per-task
``dropout`` still apply on top (:mod:`fedray.sim.selection`, :mod:`fedray.sim.round_plan`).

* **diurnal** — online within ``active_hours`` of the local day, local time being
  ``t / 3600 + timezone_h`` hours (the profile field; the virtual clock starts at midnight, UTC).
  The time-zone mix is what makes the online population follow the sun (Yang et al. 2018,
  "Applied Federated Learning: Improving Google Keyboard Query Suggestions", Fig. 2).
* **markov** — an alternating renewal process per client with exponential up and down times
  (means ``mean_up_s``, ``mean_down_s``), i.e. a two-state continuous-time Markov chain. The first
  state is drawn from the stationary law up / (up + down); by memorylessness the first holding
  time is then exponential too, so the process is stationary from t = 0.
* **outages** — the same process per *network*: each client sits behind one of ``groups``
  networks (a seeded assignment), and while a network is down all its clients are offline.
* **trace** — a table of online intervals per client (:mod:`fedray.clients.availability_trace`).

The renewal processes draw their k-th holding time from (seed, purpose, entity, k), so the state
at any t is a pure function; :class:`_Renewal` memoises each entity's last interval only because
queries move forward in time.
"""

from __future__ import annotations

import numpy as np

from fedray import seeding
from fedray.config import AvailabilityConfig, DiurnalConfig

DAY_S = 86_400.0
_CHUNK = 32  # holding times drawn per entity per pass


def local_seconds(t, timezone_h) -> np.ndarray:
    """Seconds since the virtual clock's first local midnight, per client."""
    return np.asarray(t, dtype=np.float64) + np.asarray(timezone_h, dtype=np.float64) * 3600.0


def in_window(local_s: np.ndarray, hours: list[float]) -> np.ndarray:
    """Whether each local time lies in the daily window ``[start, end)`` (hours; wraps midnight
    when start > end)."""
    start, end = hours[0] * 3600.0, hours[1] * 3600.0
    h = np.mod(local_s, DAY_S)
    return (h >= start) & (h < end) if start < end else (h >= start) | (h < end)


def window_end(local_s: np.ndarray, hours: list[float]) -> np.ndarray:
    """Seconds from each local time (inside the window) to the window's next end; inf for a
    window that covers the whole day."""
    start, end = hours[0] * 3600.0, hours[1] * 3600.0
    if end - start >= DAY_S:
        return np.full(np.shape(local_s), np.inf)
    h = np.mod(local_s, DAY_S)
    return np.mod(end - h, DAY_S)


def window_seconds(local_0: np.ndarray, local_1: np.ndarray, hours: list[float]) -> np.ndarray:
    """Seconds of ``[local_0, local_1)`` that fall inside the daily window (closed form: whole
    days times the window's length, plus the window's share of the partial days)."""
    start, end = hours[0] * 3600.0, hours[1] * 3600.0

    def cumulative(x: np.ndarray) -> np.ndarray:  # window seconds in [0, x)
        days, h = np.floor_divide(x, DAY_S), np.mod(x, DAY_S)
        if start < end:
            return days * (end - start) + np.clip(h, start, end) - start
        return days * (DAY_S - start + end) + np.minimum(h, end) + np.maximum(h - start, 0.0)

    return np.maximum(cumulative(np.asarray(local_1)) - cumulative(np.asarray(local_0)), 0.0)


class _Renewal:
    """An alternating on/off renewal process per entity with exponential holding times."""

    def __init__(self, seed: int, purpose: str, mean_up_s: float, mean_down_s: float):
        self.seed, self.purpose = seed, purpose
        self.means = np.array([mean_down_s, mean_up_s])  # indexed by state (1 = up)
        self.p_up = mean_up_s / (mean_up_s + mean_down_s)
        # entity -> (k, start of interval k): where the last query found it
        self._memo: dict[int, tuple[int, float]] = {}

    def _first_state(self, ids: np.ndarray) -> np.ndarray:
        return (seeding.uniform(self.seed, f"{self.purpose}.start", ids) < self.p_up).astype(int)

    def _holding(self, ids: np.ndarray, k: np.ndarray, first: np.ndarray) -> np.ndarray:
        state = first ^ (k & 1)
        u = seeding.uniform(self.seed, self.purpose, ids, k)
        return -self.means[state] * np.log1p(-u)

    def at(self, entities, t) -> tuple[np.ndarray, np.ndarray]:
        """(up at t, end of the interval containing t) per entity; ``t`` scalar or aligned.

        Interval ends are summed in chunks of ``_CHUNK`` holding times from k = 0, each chunk
        starting at the previous one's last end, and the memo keeps only chunk starts: the
        floats are the same whether a query starts from the memo or from zero (a resumed run
        has no memo), so the state at t never depends on what was asked before."""
        ids = np.asarray(entities, dtype=np.int64)
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), ids.shape)
        first = self._first_state(ids)
        k = np.zeros(ids.shape, dtype=np.int64)  # a chunk's first holding time
        begin = np.zeros(ids.shape)  # where that chunk starts
        for i, (e, when) in enumerate(zip(ids.tolist(), t.tolist(), strict=True)):
            memo = self._memo.get(e)
            if memo is not None and memo[1] <= when:
                k[i], begin[i] = memo
        up = np.zeros(ids.shape, dtype=bool)
        end = np.zeros(ids.shape)
        todo = np.arange(len(ids))
        while len(todo):
            steps = k[todo, None] + np.arange(_CHUNK)[None, :]
            rows = np.broadcast_to(ids[todo, None], steps.shape)
            firsts = np.broadcast_to(first[todo, None], steps.shape)
            ends = begin[todo, None] + np.cumsum(self._holding(rows, steps, firsts), axis=1)
            hit = ends > t[todo, None]
            found = hit.any(axis=1)
            j = np.argmax(hit, axis=1)
            done, jf = todo[found], j[found]
            end[done] = ends[found, jf]
            up[done] = (first[done] ^ ((k[done] + jf) & 1)).astype(bool)
            rest = todo[~found]
            k[rest] += _CHUNK
            begin[rest] = ends[~found, -1]
            todo = rest
        for e, ki, bi in zip(ids.tolist(), k.tolist(), begin.tolist(), strict=True):
            self._memo[e] = (ki, bi)
        return up, end


class Availability:
    """The configured availability parts for a population (see the module docstring)."""

    def __init__(self, cfg: AvailabilityConfig, seed: int, timezone_h, trace=None):
        """``timezone_h``: client ids -> their time zones (the profile column); ``trace``: a
        loaded :class:`~fedray.clients.availability_trace.AvailabilityTrace` if configured."""
        self.cfg, self.seed = cfg, seed
        self.diurnal: DiurnalConfig | None = cfg.diurnal
        self.timezone_h = timezone_h
        self.markov = (
            _Renewal(seed, "availability.markov", cfg.markov.mean_up_s, cfg.markov.mean_down_s)
            if cfg.markov is not None
            else None
        )
        self.outages = None
        if cfg.outages is not None:
            o = cfg.outages
            # a network is "up" between outages and "down" during one
            self.outages = _Renewal(
                seed, "availability.outage", o.mean_between_s, o.mean_duration_s
            )
        self.trace = trace
        self.varies = cfg.varies

    def network_of(self, client_ids) -> np.ndarray:
        """The network (outage group) each client sits behind."""
        ids = np.asarray(client_ids, dtype=np.int64)
        groups = self.cfg.outages.groups
        u = seeding.uniform(self.seed, "availability.outage.group", ids)
        return np.minimum((u * groups).astype(np.int64), groups - 1)

    def online(self, client_ids, t) -> np.ndarray:
        return self._state(client_ids, t)[0]

    def online_until(self, client_ids, t) -> np.ndarray:
        """When each client next goes offline (meaningful for clients online at t)."""
        return self._state(client_ids, t)[1]

    def _state(self, client_ids, t) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(client_ids, dtype=np.int64)
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), ids.shape)
        online = np.ones(ids.shape, dtype=bool)
        until = np.full(ids.shape, np.inf)
        if self.diurnal is not None:
            local = local_seconds(t, self.timezone_h(ids))
            online &= in_window(local, self.diurnal.active_hours)
            until = np.minimum(until, t + window_end(local, self.diurnal.active_hours))
        for process, entities in (
            (self.markov, lambda: ids),
            (self.outages, lambda: self.network_of(ids)),
        ):
            if process is not None:
                up, end = process.at(entities(), t)
                online &= up
                until = np.minimum(until, end)
        if self.trace is not None:
            up, end = self.trace.at(ids, t)
            online &= up
            until = np.minimum(until, end)
        return online, until
