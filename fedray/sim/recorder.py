"""One builder for the rows both drivers record: a server step's row of ``rounds.parquet``
(:func:`round_row`) from the tally of its window, with the schema of
:mod:`fedray.results.schema`. The drivers count; this module names the columns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

QUARANTINED = "quarantined"  # client_events status of a poisoned update (never aggregated)

UNEVALUATED = {
    "eval_loss": np.nan,
    "eval_accuracy": np.nan,
    "global_train_loss": np.nan,
    "global_train_accuracy": np.nan,
}


@dataclass
class Tally:
    """What happened in one server step's window (a sync round, or the arrivals between two
    async steps)."""

    start_s: float = 0.0
    duration_s: float | None = None  # sync rounds: the plan's (not end − start, which rounds)
    selected: int = 0
    completed: int = 0
    partial: int = 0
    dropped: int = 0
    offline: int = 0  # went offline during the task
    depleted: int = 0  # its battery ran out
    stragglers: int = 0
    stale: int = 0
    quarantined: int = 0
    adversarial: int = 0  # adversarial clients among those aggregated (``attack``)
    bytes_up: int = 0
    bytes_down: int = 0
    bytes_up_raw: int = 0
    bytes_down_raw: int = 0
    energy_j: float = 0.0  # spent by the window's tasks
    wait_s: float = 0.0  # waited before it for any client to be online
    staleness: list[int] = field(default_factory=list)  # of the updates aggregated
    losses: list[float] = field(default_factory=list)  # their train losses ...
    samples: list[float] = field(default_factory=list)  # ... and sample counts


def round_row(state, tally: Tally, wall_time_s: float, **extra) -> dict:
    """The row of one server step after ``state`` was updated (and its cumulative byte counts
    advanced by the tally's). ``extra``: columns only some runs fill (dp_epsilon, ...)."""
    aggregated = len(tally.staleness)
    samples = np.asarray(tally.samples, dtype=np.float64)
    train_loss = (
        float(np.average(np.asarray(tally.losses), weights=samples))
        if samples.sum() > 0
        else np.nan
    )
    return {
        "round": state.round,
        "sim_time_s": state.sim_time_s,
        "round_duration_s": state.sim_time_s - tally.start_s
        if tally.duration_s is None
        else tally.duration_s,
        "wall_time_s": wall_time_s,
        "model_version": state.server.version,
        "num_selected": tally.selected,
        "num_completed": tally.completed,
        "num_partial": tally.partial,
        "num_dropped": tally.dropped,
        "num_offline": tally.offline,
        "num_depleted": tally.depleted,
        "num_stragglers": tally.stragglers,
        "num_stale": tally.stale,
        "num_quarantined": tally.quarantined,
        "num_aggregated": aggregated,
        "num_adversarial": tally.adversarial,
        "staleness_mean": float(np.mean(tally.staleness)) if aggregated else np.nan,
        "staleness_max": int(max(tally.staleness)) if aggregated else 0,
        "bytes_up": tally.bytes_up,
        "bytes_down": tally.bytes_down,
        "bytes_up_raw": tally.bytes_up_raw,
        "bytes_down_raw": tally.bytes_down_raw,
        "compression_ratio": tally.bytes_up_raw / tally.bytes_up if tally.bytes_up else np.nan,
        "cum_bytes_up": state.cum_bytes_up,
        "cum_bytes_down": state.cum_bytes_down,
        "energy_j": tally.energy_j,
        "cum_energy_j": state.cum_energy_j,
        "wait_s": tally.wait_s,
        "train_loss": train_loss,
        **UNEVALUATED,
        **extra,
    }
