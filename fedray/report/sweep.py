"""``fedray report SWEEP_DIR``: a sweep's trials compared, from ``sweep.parquet``.

Draws the final accuracy (and, if the sweep has a target, the simulated time to reach it) against
the sweep's numeric axis — the client count when it varies — with one line per strategy or
variant, averaged over the other axes (seeds) with their range as error bars; and the
bytes-versus-accuracy frontier of every trial. The columns are those of
:data:`fedray.sweep_report.SUMMARY_SCHEMA`; the sweep's parameters are the other columns.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedray.errors import UserError
from fedray.report import document
from fedray.report.runs import read_table
from fedray.report.style import (
    WIDE,
    bytes_unit,
    human_bytes,
    human_seconds,
    pyplot,
    run_style,
    save,
    time_unit,
)
from fedray.sweep_report import SUMMARY_FILE, SUMMARY_SCHEMA

_GROUP_KEYS = ("variant", "strategy.name")
_X_PREFERRED = ("clients.num_clients", "clients_per_round")


def is_sweep_dir(path: Path) -> bool:
    return (path / SUMMARY_FILE).is_file()


def axes(table: pd.DataFrame) -> tuple[str | None, str | None, list[str]]:
    """(x axis, line grouping, all parameter columns) of a sweep table."""
    params = [c for c in table.columns if c not in SUMMARY_SCHEMA.names]

    def varies(c):
        return table[c].nunique(dropna=False) > 1

    numeric = [
        c for c in params if c != "seed" and varies(c) and pd.api.types.is_numeric_dtype(table[c])
    ]
    x = next((c for c in _X_PREFERRED if c in numeric), numeric[0] if numeric else None)
    group = next((c for c in _GROUP_KEYS if c in params and varies(c)), None)
    return x, group, params


def _group_labels(
    table: pd.DataFrame, group: str | None, x: str | None, params: list[str]
) -> pd.Series:
    if group is not None:
        return table[group].astype(str)
    rest = [c for c in params if c not in (x, "seed") and table[c].nunique(dropna=False) > 1]
    if not rest:
        return pd.Series("all trials", index=table.index)
    return (
        table[rest]
        .astype(str)
        .apply(lambda row: " ".join(f"{k}={v}" for k, v in row.items()), axis=1)
    )


def _by_x(ax, done: pd.DataFrame, x: str, y: str, labels: pd.Series, scale: float = 1.0) -> None:
    for i, (label, rows) in enumerate(done.groupby(labels.loc[done.index], sort=False)):
        stats = rows.groupby(x)[y].agg(["mean", "min", "max"]).dropna() * scale
        if not len(stats):
            continue
        style = run_style(i)
        ax.errorbar(
            stats.index.to_numpy(),
            stats["mean"],
            yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
            marker="o",
            markersize=4,
            capsize=3,
            label=label,
            **style,
        )
    values = done[x].to_numpy(dtype=float)
    if len(values) and values.min() > 0 and values.max() / values.min() >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(x + (" (registered clients)" if x == "clients.num_clients" else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")


def _frontier(points: pd.DataFrame) -> pd.DataFrame:
    """Trials not beaten by another with fewer bytes and higher accuracy, by bytes."""
    ordered = points.sort_values(["total_bytes", "final_accuracy"], ascending=[True, False])
    best = ordered.final_accuracy.cummax()
    return ordered[ordered.final_accuracy >= best]


def sweep_report(path: Path, out: str | Path | None = None) -> tuple[Path, dict[str, Path]]:
    """Write the sweep's figures, report.md and report.html; returns the folder and figures."""
    table = read_table(path / SUMMARY_FILE)
    missing = [c for c in ("trial", "status", "final_accuracy", "total_bytes") if c not in table]
    if missing:
        raise UserError(f"{str(path / SUMMARY_FILE)!r} has no column {missing[0]!r}")
    folder = Path(out) if out is not None else path / "report"
    folder.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    x, group, params = axes(table)
    labels = _group_labels(table, group, x, params)
    done = table[(table.status == "completed") & table.final_accuracy.notna()]
    figures: dict[str, Path] = {}
    sections = []

    if x is not None and len(done):
        fig, ax = plt.subplots(figsize=WIDE, layout="constrained")
        _by_x(ax, done, x, "final_accuracy", labels)
        ax.set_ylabel("final eval accuracy (fraction)")
        ax.set_title(
            f"final accuracy vs {x}"
            + (
                " (mean, range over the other axes)"
                if done.duplicated([x] + ([group] if group else [])).any()
                else ""
            )
        )
        figures["final_accuracy"] = save(fig, folder / f"sweep_final_accuracy_vs_{x}.png")
        reached = done.dropna(subset=["sim_time_to_target_s"])
        if len(reached):
            divisor, unit = time_unit(float(reached.sim_time_to_target_s.max()))
            fig, ax = plt.subplots(figsize=WIDE, layout="constrained")
            _by_x(ax, reached, x, "sim_time_to_target_s", labels, scale=1 / divisor)
            target = float(reached.target_accuracy.iloc[0])
            ax.set_ylabel(f"simulated time to accuracy {target:g} ({unit})")
            ax.set_title(f"time to target vs {x}")
            figures["time_to_target"] = save(fig, folder / f"sweep_time_to_target_vs_{x}.png")

    if len(done):
        fig, ax = plt.subplots(figsize=WIDE, layout="constrained")
        divisor, unit = bytes_unit(float(done.total_bytes.max()))
        for i, (label, rows) in enumerate(done.groupby(labels.loc[done.index], sort=False)):
            ax.scatter(
                rows.total_bytes / divisor,
                rows.final_accuracy,
                label=label,
                color=run_style(i)["color"],
                s=28,
            )
        front = _frontier(done)
        ax.step(
            front.total_bytes / divisor,
            front.final_accuracy,
            where="post",
            color="black",
            linestyle="--",
            linewidth=1,
            label="frontier",
        )
        if done.total_bytes.min() > 0 and done.total_bytes.max() / done.total_bytes.min() > 100:
            ax.set_xscale("log")
        ax.set_xlabel(f"total bytes, up + down ({unit})")
        ax.set_ylabel("final eval accuracy (fraction)")
        ax.set_title("bytes vs accuracy: the communication frontier")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        figures["frontier"] = save(fig, folder / "sweep_bytes_vs_accuracy.png")

    shown = table[["trial", *params, "status"]].copy()
    shown["final accuracy"] = table.final_accuracy.map(lambda v: "-" if pd.isna(v) else f"{v:.4f}")
    shown["sim time"] = table.sim_time_s.map(lambda v: human_seconds(None if pd.isna(v) else v))
    shown["bytes"] = table.total_bytes.map(lambda v: human_bytes(None if pd.isna(v) else float(v)))
    if table.target_accuracy.notna().any():
        shown["time to target"] = table.sim_time_to_target_s.map(
            lambda v: "not reached" if pd.isna(v) else human_seconds(v)
        )
    shown = shown.fillna("-")
    counts = ", ".join(f"{n} {s}" for s, n in table.status.value_counts().items())
    sections.append(
        document.Section("Trials", f"{len(table)} trials: {counts}.", tables=[("", shown)])
    )
    sections.append(document.Section("Figures", images=list(figures.values())))
    if not figures:
        sections[-1].text = "No completed trial to draw."
    intro = (
        f"Sweep {path.name}: axis {x or '-'}, one line per {group or 'combination of the other axes'}; "
        "only completed trials are drawn."
    )
    document.write(folder, f"fedray sweep report: {path.name}", intro, sections)
    return folder, figures
