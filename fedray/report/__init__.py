"""Reports of finished runs and sweeps, drawn from the result tables alone.

    fedray report RUN [RUN ...] [--out DIR] [--metric NAME] [--target X]
    fedray report SWEEP_DIR
    fedray ls [RESULTS_DIR]

Modules, one job each: :mod:`.runs` reads run folders (one-line errors), :mod:`.data` computes
the numbers behind each figure, :mod:`.curves` and :mod:`.clients` draw them, :mod:`.tables`
builds the tables, :mod:`.document` writes report.md and report.html, :mod:`.build` puts a run
report together, :mod:`.sweep` draws sweep.parquet and :mod:`.listing` lists runs.
"""

from __future__ import annotations

from pathlib import Path

from fedray.errors import UserError


def report(
    paths: list[str | Path],
    out: str | Path | None = None,
    metric: str | None = None,
    target: float | None = None,
) -> Path:
    """Report on run folders (overlaid), or on one sweep folder; returns the report folder."""
    from fedray.report.sweep import is_sweep_dir, sweep_report

    sweeps = [Path(p) for p in paths if is_sweep_dir(Path(p))]
    if sweeps:
        if len(paths) > 1:
            raise UserError(
                f"{str(sweeps[0])!r} is a sweep folder; report on it alone (fedray report SWEEP_DIR)"
            )
        if metric is not None or target is not None:
            raise UserError(
                "--metric and --target apply to run reports; a sweep report draws "
                "sweep.parquet's final accuracy and its own target"
            )
        return sweep_report(sweeps[0], out)[0]
    from fedray.report.build import run_report

    return run_report(paths, out, metric, target).out
