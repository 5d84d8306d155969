"""Figures that overlay runs: a metric against round, simulated time and bytes; the staleness
of async runs; ε of private runs. Each run keeps its colour and line style in every figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedray.report import data
from fedray.report.runs import Run
from fedray.report.style import WIDE, bytes_unit, pyplot, run_style, save, time_unit

X_AXES = ("round", "sim_time_s", "bytes")
_PRETTY = {"eval_": "eval ", "global_train_": "global train ", "train_": "train "}


def metric_label(metric: str) -> str:
    for prefix, text in _PRETTY.items():
        if metric.startswith(prefix):
            return text + metric[len(prefix) :].replace("_", " ")
    return metric.replace("_", " ")


def _log_bytes(ax, curves) -> None:
    positive = [c.bytes[c.bytes > 0] for c in curves]
    values = np.concatenate([p.to_numpy() for p in positive]) if positive else np.array([])
    # Codec studies span orders of magnitude; a linear axis would squash all but one run.
    if len(values) and values.max() / values.min() > 100:
        ax.set_xscale("log")


def metric_figure(
    runs: list[Run], metric: str, x: str, out: Path, target: float | None = None
) -> Path:
    """``metric`` against ``x`` (one of X_AXES), one line per run."""
    plt = pyplot()
    curves = [data.curve(run.rounds, metric) for run in runs]
    fig, ax = plt.subplots(figsize=WIDE, layout="constrained")
    if x == "round":
        scale, xlabel = 1.0, "round (server updates)" if runs[0].mode == "async" else "round"
    elif x == "sim_time_s":
        divisor, unit = time_unit(max((c.sim_time_s.max() for c in curves if len(c)), default=0))
        scale, xlabel = 1 / divisor, f"simulated time ({unit})"
    else:
        divisor, unit = bytes_unit(max((c.bytes.max() for c in curves if len(c)), default=0))
        scale, xlabel = 1 / divisor, f"cumulative bytes, up + down ({unit})"
    for i, (run, c) in enumerate(zip(runs, curves, strict=True)):
        column = c[x].to_numpy() * scale
        marker = "o" if len(c) <= 30 else None  # few evaluations: show where they are
        ax.plot(column, c.value, label=run.label, marker=marker, markersize=3, **run_style(i))
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"target {target:g}")
    if x == "bytes":
        _log_bytes(ax, curves)
    if x == "round":
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric_label(metric) + (" (fraction)" if "accuracy" in metric else ""))
    ax.set_title(f"{metric_label(metric)} vs {xlabel.split(' (')[0]}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    name = {"round": "round", "sim_time_s": "sim_time", "bytes": "bytes"}[x]
    return save(fig, out / f"{metric}_vs_{name}.png")


def staleness_figure(runs: list[Run], indices: list[int], out: Path) -> Path:
    """Share of received updates per staleness value, one step line per async run."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=WIDE, layout="constrained")
    for i, run in zip(indices, runs, strict=True):
        counts = data.staleness_counts(run.events)
        share = counts / max(counts.sum(), 1)
        mean = float(np.dot(np.arange(len(counts)), counts) / max(counts.sum(), 1))
        ax.step(
            np.arange(len(counts)),
            share,
            where="mid",
            label=f"{run.label} (mean {mean:.2f})",
            **run_style(i),
        )
    ax.set_xlabel("staleness (server versions behind at arrival)")
    ax.set_ylabel("share of received updates")
    ax.set_title("staleness of asynchronous updates")
    ax.set_ylim(bottom=0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return save(fig, out / "staleness.png")


def epsilon_figure(runs: list[Run], indices: list[int], out: Path) -> Path:
    """Cumulative ε (at each run's δ) against round, one line per private run."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=WIDE, layout="constrained")
    deltas = set()
    for i, run in zip(indices, runs, strict=True):
        eps = data.epsilon(run.rounds)
        delta = (run.config.get("privacy") or {}).get("delta")
        deltas.add(delta)
        ax.plot(eps["round"], eps.epsilon, label=f"{run.label} (δ={delta:g})", **run_style(i))
    ax.set_xlabel("round")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("cumulative ε" + (f" at δ={deltas.pop():g}" if len(deltas) == 1 else ""))
    ax.set_title("privacy spent: ε vs round (user-level DP-FedAvg)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return save(fig, out / "epsilon.png")
