"""The report's tables: final figures side by side, and time to a target metric."""

from __future__ import annotations

import pandas as pd

from fedray.report import data
from fedray.report.curves import metric_label
from fedray.report.runs import Run
from fedray.report.style import human_bytes, human_seconds


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def final_figures(runs: list[Run], metric: str) -> pd.DataFrame:
    """One row per run: what it was, how far it got and what it cost."""
    rows = []
    any_async = any(r.mode == "async" for r in runs)
    any_private = any(r.private for r in runs)
    for run in runs:
        curve = data.curve(run.rounds, metric)
        last = run.rounds.iloc[-1] if len(run.rounds) else None
        best = (
            (curve.value.max() if data.higher_is_better(metric) else curve.value.min())
            if len(curve)
            else None
        )
        status = run.summary.get("status", "-")
        row = {
            "run": run.name,
            "label": run.label,
            "mode / strategy": f"{run.mode} / {(run.config.get('strategy') or {}).get('name', '-')}",
            "clients": run.num_clients,
            "rounds": int(last["round"]) if last is not None else 0,
            f"final {metric_label(metric)}": _fmt(
                float(curve.value.iloc[-1]) if len(curve) else None
            ),
            f"best {metric_label(metric)}": _fmt(None if best is None else float(best)),
            "simulated time": human_seconds(float(last.sim_time_s) if last is not None else None),
            "bytes up": human_bytes(float(last.cum_bytes_up) if last is not None else None),
            "bytes down": human_bytes(float(last.cum_bytes_down) if last is not None else None),
            "wall time": human_seconds(float(last.wall_time_s) if last is not None else None),
            "dropped tasks": f"{(run.events.status == 'dropped').mean():.1%}"
            if len(run.events)
            else "-",
        }
        if any_async:
            counts = data.staleness_counts(run.events) if run.mode == "async" else None
            mean = (
                None
                if counts is None or not counts.sum()
                else float((counts * range(len(counts))).sum() / counts.sum())
            )
            row["mean staleness"] = _fmt(mean, 3)
        if any_private:
            eps = data.epsilon(run.rounds)
            row["final ε"] = _fmt(float(eps.epsilon.iloc[-1]) if len(eps) else None, 3)
        row["status"] = status
        rows.append(row)
    return pd.DataFrame(rows)


def time_to_target(runs: list[Run], metric: str, target: float) -> pd.DataFrame:
    """Per run: the round, simulated time and bytes (up + down) at which the metric first
    reached ``target``; "not reached" otherwise."""
    rows = []
    for run in runs:
        first = data.first_reaching(run.rounds, metric, target)
        if first is None:
            rows.append(
                {
                    "run": run.name,
                    "label": run.label,
                    "round": "not reached",
                    "simulated time": "-",
                    "bytes (up + down)": "-",
                }
            )
            continue
        rows.append(
            {
                "run": run.name,
                "label": run.label,
                "round": int(first["round"]),
                "simulated time": human_seconds(float(first.sim_time_s)),
                "bytes (up + down)": human_bytes(float(first.cum_bytes_up + first.cum_bytes_down)),
            }
        )
    return pd.DataFrame(rows)
