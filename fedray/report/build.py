"""``fedray report RUN [RUN ...]``: every figure and table of one or more runs, into one folder.

The folder gets one PNG per figure, ``report.md`` (linking them) and ``report.html`` (with them
embedded). Runs are overlaid where a comparison makes sense (metric curves, staleness, ε) and
drawn one by one where a picture is about one population (timeline, participation).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from fedray.errors import UserError
from fedray.report import clients, curves, data, document, runs, tables

REPORT_DIR = "report"


@dataclass
class Report:
    """What a report wrote, and the data behind its per-run figures."""

    out: Path
    figures: dict[str, Path]
    markdown: Path
    html: Path
    metric: str
    target: float | None
    timelines: dict[str, dict] = field(default_factory=dict)
    participation: dict[str, dict] = field(default_factory=dict)


def resolve_metric(metric: str | None, loaded: list[runs.Run]) -> str:
    """A rounds column every run has; ``accuracy`` means ``eval_accuracy``."""
    if metric is None:
        return runs.default_metric([r.rounds for r in loaded])
    for run in loaded:
        if metric not in run.rounds.columns and f"eval_{metric}" in run.rounds.columns:
            metric = f"eval_{metric}"
        if metric not in run.rounds.columns:
            offered = ", ".join(
                c for c in run.rounds.columns if c.startswith(("eval_", "global_train"))
            )
            raise UserError(
                f"--metric {metric!r} is not a column of {str(run.path / 'rounds.parquet')!r}; "
                f"choose one of {offered}"
            )
    return metric


def output_dir(paths: list[Path], out: str | Path | None) -> Path:
    if out is not None:
        return Path(out)
    if len(paths) == 1:
        return paths[0] / REPORT_DIR
    parents = {p.resolve().parent for p in paths}
    if len(parents) > 1:
        raise UserError("the runs are in different folders; pass --out DIR for the report")
    return parents.pop() / REPORT_DIR


def run_report(
    paths: list[str | Path],
    out: str | Path | None = None,
    metric: str | None = None,
    target: float | None = None,
) -> Report:
    dirs = runs.expand(paths)
    loaded = [runs.load(d) for d in dirs]
    for run, name in zip(loaded, runs.unique_names(dirs), strict=True):
        run.name = name
    metric = resolve_metric(metric, loaded)
    labels = runs.config_labels({r.name: r.config for r in loaded})
    for run in loaded:
        run.label = labels[run.name]
    folder = output_dir(dirs, out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create report folder {str(folder)!r}: {err.strerror}") from None

    metric_curves = [data.curve(r.rounds, metric) for r in loaded]
    shown_target = target if target is not None else data.common_target(metric_curves, metric)
    figures: dict[str, Path] = {}
    report = Report(folder, figures, folder, folder, metric, shown_target)
    sections = []

    summary = document.Section(
        "Final figures",
        tables=[("", tables.final_figures(loaded, metric))],
    )
    if shown_target is not None:
        how = (
            "given with --target"
            if target is not None
            else ("the best value every run reaches; set another with --target")
        )
        summary.tables.append(
            (
                f"time to {curves.metric_label(metric)} {shown_target:.4g} ({how})",
                tables.time_to_target(loaded, metric, shown_target),
            )
        )
    sections.append(summary)

    progress = document.Section(
        f"{curves.metric_label(metric)} vs round, simulated time and bytes",
        "Bytes are the encoded payloads that crossed the links, uploads and downloads together.",
    )
    for x in curves.X_AXES:
        path = curves.metric_figure(loaded, metric, x, folder, target)
        figures[path.stem] = path
        progress.images.append(path)
    sections.append(progress)

    timeline = document.Section(
        "Client timelines",
        f"Up to {clients.TIMELINE_CLIENTS} clients per run, sampled with a generator derived from "
        "the run's seed. Grey is idle (not running a task); a dropped task is drawn in vermillion "
        "up to the moment its connection was lost; hatched tasks were stragglers the server stopped "
        "waiting for, drawn up to when they would have arrived. Thin grey lines mark round ends.",
    )
    for run in loaded:
        path, info = clients.timeline_figure(run, folder)
        figures[path.stem] = path
        report.timelines[run.name] = info
        timeline.images.append(path)
    if not any(info["tiers"] for info in report.timelines.values()):
        timeline.text += " The profiles have no device tiers, so rows are not coloured by tier."
    sections.append(timeline)

    fairness = document.Section(
        "Participation and fairness",
        "Tasks per client that were aggregated, dropped or not used, and the distribution of "
        "each client's mean local train loss. Gini is over every registered client "
        "(0: equal participation).",
    )
    for run in loaded:
        path, info = clients.participation_figure(run, folder)
        figures[path.stem] = path
        report.participation[run.name] = info
        fairness.images.append(path)
    sections.append(fairness)

    indexed = list(enumerate(loaded))
    async_runs = [(i, r) for i, r in indexed if r.mode == "async"]
    if async_runs:
        path = curves.staleness_figure(
            [r for _, r in async_runs], [i for i, _ in async_runs], folder
        )
        figures[path.stem] = path
        sections.append(document.Section("Staleness (asynchronous runs)", images=[path]))
    private_runs = [(i, r) for i, r in indexed if r.private]
    if private_runs:
        path = curves.epsilon_figure(
            [r for _, r in private_runs], [i for i, _ in private_runs], folder
        )
        figures[path.stem] = path
        sections.append(document.Section("Privacy (ε per round)", images=[path]))

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    intro = (
        f"{len(loaded)} run(s): "
        + "; ".join(f"{r.name} ({os.path.relpath(r.path, folder)})" for r in loaded)
        + f". Generated {when}."
    )
    title = f"fedray report: {loaded[0].name}" if len(loaded) == 1 else "fedray report"
    report.markdown, report.html = document.write(folder, title, intro, sections)
    return report
