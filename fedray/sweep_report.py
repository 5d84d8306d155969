"""Reporting a sweep: ``sweep.parquet`` (one row per trial), TensorBoard HParams and the progress
display. Everything is rebuilt from the trials' run directories on disk, so the table is right
after an interrupt or a resume as much as after a clean finish.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from fedray.results.result import first_reaching
from fedray.results.writer import ROUNDS_FILE
from fedray.results.writer import SUMMARY_FILE as SUMMARY_JSON

if TYPE_CHECKING:
    from fedray.sweep import Trial

SUMMARY_FILE = "sweep.parquet"

# Fixed columns of sweep.parquet; the sweep's parameters (dotted keys, and ``variant``) follow
# ``trial``. Sizes are bytes, times seconds (``*sim*`` simulated, the others wall-clock).
SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("trial", pa.string()),
        pa.field("status", pa.string()),  # completed, failed, interrupted or not_run
        pa.field("error", pa.string()),
        pa.field("final_accuracy", pa.float64()),
        pa.field("final_loss", pa.float64()),
        pa.field("target_accuracy", pa.float64()),
        pa.field("sim_time_to_target_s", pa.float64()),  # null if the target was never reached
        pa.field("rounds_to_target", pa.int64()),
        pa.field("rounds_completed", pa.int64()),
        pa.field("sim_time_s", pa.float64()),
        pa.field("total_bytes_up", pa.int64()),
        pa.field("total_bytes_down", pa.int64()),
        pa.field("total_bytes", pa.int64()),
        pa.field("wall_time_s", pa.float64()),
        pa.field("startup_s", pa.float64()),
        pa.field("run_dir", pa.string()),
    ]
)


def trial_row(run_dir: Path, target: float | None, error: str | None) -> dict[str, Any]:
    """The fixed columns of one trial, read back from its run directory."""
    row: dict[str, Any] = {f.name: None for f in SUMMARY_SCHEMA}
    row.update(trial=run_dir.name, run_dir=str(run_dir), target_accuracy=target)
    summary_path = run_dir / SUMMARY_JSON
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    status = {"running": "interrupted"}.get(summary.get("status"), summary.get("status"))
    if status != "completed" and error is not None:
        status = "failed"  # Tune saw the trial die, whatever the run managed to write
    row.update(status=status or "not_run", error=summary.get("error") or error)
    if status != "completed":
        return row
    up, down = summary.get("total_bytes_up"), summary.get("total_bytes_down")
    row.update(
        rounds_completed=summary.get("rounds_completed"),
        sim_time_s=summary.get("sim_time_s"),
        total_bytes_up=up,
        total_bytes_down=down,
        total_bytes=None if up is None or down is None else up + down,
        wall_time_s=summary.get("wall_time_s"),
        startup_s=summary.get("startup_s"),
        error=None,
    )
    rounds = pq.read_table(
        run_dir / ROUNDS_FILE, columns=["round", "sim_time_s", "eval_accuracy", "eval_loss"]
    ).to_pandas()
    evaluated = rounds.dropna(subset=["eval_accuracy"])
    if len(evaluated):
        row.update(
            final_accuracy=float(evaluated.eval_accuracy.iloc[-1]),
            final_loss=float(evaluated.eval_loss.iloc[-1]),
        )
    first = first_reaching(evaluated, target) if target is not None else None
    if first is not None:
        row.update(
            sim_time_to_target_s=float(first.sim_time_s), rounds_to_target=int(first["round"])
        )
    return row


def param_value(value: Any) -> Any:
    """A parameter as a table cell: scalars stay, sections become compact JSON."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True)


def summary_table(
    trials: list[Trial], sweep_dir: Path, target: float | None, errors: dict[str, str]
) -> pa.Table:
    """One row per trial: its parameters after ``trial``, then the fixed columns."""
    rows = [trial_row(sweep_dir / t.name, target, errors.get(t.name)) for t in trials]
    keys = list(trials[0].params)
    params = {}
    for key in keys:
        column = [param_value(t.params[key]) for t in trials]
        if len({type(v) for v in column if v is not None}) > 1:
            column = [None if v is None else str(v) for v in column]  # e.g. 0.1 and "none"
        params[key] = pa.array(column)
    fixed = pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA)
    table = fixed.select(["trial"])
    for key in keys:
        table = table.append_column(key, params[key])
    for name in SUMMARY_SCHEMA.names[1:]:
        table = table.append_column(fixed.schema.field(name), fixed.column(name))
    return table


def write_summary(
    trials: list[Trial], sweep_dir: Path, target: float | None, errors: dict[str, str]
) -> pa.Table:
    table = summary_table(trials, sweep_dir, target, errors)
    tmp = sweep_dir / f".{SUMMARY_FILE}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, sweep_dir / SUMMARY_FILE)  # never a half-written summary
    return table


_HPARAM_METRICS = ("final_accuracy", "sim_time_to_target_s", "total_bytes", "wall_time_s")


def write_hparams(table: pa.Table, keys: list[str], logdir: Path) -> None:
    """TensorBoard HParams, one session per trial, rewritten from the summary table."""
    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(logdir, ignore_errors=True)
    for row in table.to_pylist():
        hparams = {k: ("none" if row[k] is None else row[k]) for k in keys}
        hparams["status"] = row["status"]
        metrics = {
            f"sweep/{m}": (math.nan if row[m] is None else float(row[m])) for m in _HPARAM_METRICS
        }
        with SummaryWriter(log_dir=str(logdir / row["trial"])) as writer:
            writer.add_hparams(hparams, metrics, run_name=".")


class SweepProgress:
    """Trials done / running / failed: a live rich bar on a terminal, a line per change
    otherwise. Fed by a Tune callback in the driver process."""

    def __init__(self, total: int, reused: int, description: str, enabled: bool = True):
        from rich.console import Console

        self.total, self.reused, self.enabled = total, reused, enabled
        self.done, self.running, self.failed = reused, 0, 0
        self.console = Console(file=sys.stderr)
        self._live = enabled and self.console.is_terminal
        if self._live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._task = self._bar.add_task(description, total=total, counts=self._counts())
            self._bar.start()

    def _counts(self) -> str:
        return (
            f"done {self.done} (reused {self.reused})  running {self.running}  failed {self.failed}"
        )

    def update(self, event: str, trial: str) -> None:
        if event == "start":
            self.running += 1
        else:
            self.running -= 1
            self.done += event == "complete"
            self.failed += event == "error"
        if not self.enabled:
            return
        if self._live:
            self._bar.update(self._task, completed=self.done + self.failed, counts=self._counts())
        else:
            self.console.print(
                f"trial {trial}: {event}  {self._counts()}", highlight=False, soft_wrap=True
            )

    def callback(self):
        from ray import tune

        class _Callback(tune.Callback):
            def __init__(self, progress: SweepProgress | None):
                self.progress = progress

            def __getstate__(self):
                # Tune pickles its run config into the experiment folder; a live display
                # (locks, a terminal) cannot travel and is only needed in this process.
                return {"progress": None}

            def _update(self, event: str, trial) -> None:
                if self.progress is not None:
                    self.progress.update(event, trial.config["trial"])

            def on_trial_start(self, iteration, trials, trial, **info):
                self._update("start", trial)

            def on_trial_complete(self, iteration, trials, trial, **info):
                self._update("complete", trial)

            def on_trial_error(self, iteration, trials, trial, **info):
                self._update("error", trial)

        return _Callback(self)

    def close(self) -> None:
        if self._live:
            self._bar.stop()
