"""The numbers behind each report figure, computed from the result tables.

Pure functions of DataFrames, so each figure's data can be checked against the tables directly.
They scale with the number of client tasks, not of registered clients: a 10^5-client,
10^3-round run is summarised exactly (counts, staleness) and drawn from a seeded sample where
drawing everything would be unreadable anyway (the timeline).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedray import seeding

# Statuses whose update the server took in (aggregated into the model).
AGGREGATED = ("completed", "partial")
_LOWER_IS_BETTER = ("loss", "perplexity")


def higher_is_better(metric: str) -> bool:
    return not any(word in metric for word in _LOWER_IS_BETTER)


def curve(rounds: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Evaluated rows only: round, simulated time, cumulative bytes (up + down) and the metric."""
    rows = rounds.dropna(subset=[metric])
    return pd.DataFrame(
        {
            "round": rows["round"].to_numpy(),
            "sim_time_s": rows.sim_time_s.to_numpy(),
            "bytes": (rows.cum_bytes_up + rows.cum_bytes_down).to_numpy(),
            "value": rows[metric].to_numpy(),
        }
    )


def first_reaching(rounds: pd.DataFrame, metric: str, target: float) -> pd.Series | None:
    """The first evaluated row whose metric reaches ``target`` (>= for accuracies, <= for
    losses and perplexity), or None."""
    values = rounds[metric]
    hit = values >= target if higher_is_better(metric) else values <= target
    reached = rounds[hit.fillna(False).astype(bool)]
    return reached.iloc[0] if len(reached) else None


def common_target(curves: list[pd.DataFrame], metric: str) -> float | None:
    """The strictest target every run reaches: the worst of the runs' best values."""
    best = [c.value.max() if higher_is_better(metric) else c.value.min() for c in curves if len(c)]
    if not best:
        return None
    return float(min(best) if higher_is_better(metric) else max(best))


def sample_clients(events: pd.DataFrame, k: int, seed: int) -> np.ndarray:
    """Up to ``k`` clients that ran at least one task, drawn with a generator derived from the
    run's seed (the same sample every time the report is drawn), sorted by id."""
    ids = np.unique(events.client_id.to_numpy())
    if len(ids) <= k:
        return ids
    rng = seeding.generator(seed, "report.timeline")
    return np.sort(rng.choice(ids, size=k, replace=False))


def timeline_segments(events: pd.DataFrame, client_ids: np.ndarray) -> pd.DataFrame:
    """Busy intervals of the given clients in simulated seconds: one row per phase of each task
    (``download``, ``compute``, ``upload``); a dropped task is one ``dropped`` interval covering
    the time it ran before the connection was lost. ``status`` is the task's status."""
    tasks = events[events.client_id.isin(client_ids)]
    start = tasks.dispatch_time_s.to_numpy()
    down, comp, up = (tasks[c].to_numpy() for c in ("download_s", "compute_s", "upload_s"))
    status = tasks.status.astype(str).to_numpy()
    dropped = status == "dropped"
    ids = tasks.client_id.to_numpy()
    parts = []
    kept = ~dropped
    for phase, offset, length in (
        ("download", 0.0, down),
        ("compute", down, comp),
        ("upload", down + comp, up),
    ):
        offset = np.broadcast_to(offset, start.shape)
        parts.append(
            pd.DataFrame(
                {
                    "client_id": ids[kept],
                    "start_s": start[kept] + offset[kept],
                    "duration_s": length[kept],
                    "phase": phase,
                    "status": status[kept],
                }
            )
        )
    parts.append(
        pd.DataFrame(
            {
                "client_id": ids[dropped],
                "start_s": start[dropped],
                "duration_s": (down + comp + up)[dropped],
                "phase": "dropped",
                "status": "dropped",
            }
        )
    )
    return pd.concat(parts, ignore_index=True).sort_values(["client_id", "start_s"], kind="stable")


def participation(events: pd.DataFrame) -> pd.DataFrame:
    """Per client that ran at least one task: tasks ``selected``, updates ``aggregated``
    (completed or partial), ``dropped``, and ``train_loss`` (mean over its aggregated tasks)."""
    ids = events.client_id.to_numpy()
    status = events.status.astype(str).to_numpy()
    aggregated = np.isin(status, AGGREGATED)
    frame = pd.DataFrame(
        {
            "client_id": ids,
            "aggregated": aggregated,
            "dropped": status == "dropped",
            "train_loss": np.where(aggregated, events.train_loss.to_numpy(), np.nan),
        }
    )
    grouped = frame.groupby("client_id", sort=True)
    out = grouped.agg(
        selected=("aggregated", "size"),
        aggregated=("aggregated", "sum"),
        dropped=("dropped", "sum"),
        train_loss=("train_loss", "mean"),
    )
    return out.astype({"selected": np.int64, "aggregated": np.int64, "dropped": np.int64})


def gini(counts: np.ndarray, population: int) -> float:
    """Gini coefficient of per-client counts over a population of ``population`` clients, the
    ones not in ``counts`` counting zero (0: everyone took part equally; →1: a few did all)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n = max(int(population), len(x))
    total = x.sum()
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(n - len(x) + 1, n + 1)  # the zeros come first in sorted order
    return float(2.0 * np.dot(ranks, x) / (n * total) - (n + 1) / n)


def staleness_counts(events: pd.DataFrame) -> np.ndarray:
    """Updates received per staleness value (index = staleness in server versions); tasks
    without an update (dropped, -1) are left out."""
    staleness = events.staleness.to_numpy()
    return np.bincount(staleness[staleness >= 0])


def epsilon(rounds: pd.DataFrame) -> pd.DataFrame:
    rows = rounds.dropna(subset=["dp_epsilon"])
    return pd.DataFrame({"round": rows["round"].to_numpy(), "epsilon": rows.dp_epsilon.to_numpy()})
