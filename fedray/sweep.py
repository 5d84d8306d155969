"""Sweeps: a grid of overrides on a base config, one fedray run per trial, scheduled by Ray Tune.

A sweep file names a base config, overrides shared by every trial, and the axes::

    name: client_count
    base: ../configs/fedavg_synthetic.yaml   # relative to the sweep file
    overrides: {rounds: 10, execution.num_workers: 1}
    grid:                                    # every combination of these values
      clients.num_clients: [1000, 10000, 100000]
      seed: [0, 1]
    variants:                                # optional named override sets, crossed with the grid
      fedavg: {}
      fedprox: {strategy.name: fedprox, strategy.mu: 0.01}
    target_accuracy: 0.6                     # optional: report simulated time to reach it
    max_concurrent_trials: 4                 # optional; default: as many as fit
    time_budget_s: 3600                      # optional; stop after it, --resume continues

Each trial is a normal :func:`fedray.run` into ``<root>/<name>/<trial>/`` with its own worker
pool. Tune reserves a placement group per trial — an empty bundle for the trial's driver and one
bundle per pool actor — and the pool's actors are created inside it (Tune captures child tasks),
so trials pack onto a cluster and never oversubscribe it. Afterwards the sweep writes
``sweep.parquet`` (one row per trial: parameters and final metrics) and TensorBoard HParams under
``tb/``. A trial whose run directory already holds a completed run of the same config is reused
on ``--resume``; failed and interrupted trials run again.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedray.config import Config, load_config
from fedray.errors import ConfigError, UserError
from fedray.results.writer import ROUNDS_FILE
from fedray.results.writer import SUMMARY_FILE as SUMMARY_JSON
from fedray.study import finished_run, read_spec

SUMMARY_FILE = "sweep.parquet"
HPARAMS_DIR = "tb"
TUNE_DIR = ".tune"  # Tune's own bookkeeping; our results live in the run directories
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._=+-]+")
_MAX_NAME = 120


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    base: Path
    overrides: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    variants: dict[str, dict[str, Any]] = {}
    target_accuracy: float | None = Field(default=None, gt=0, le=1)
    max_concurrent_trials: int | None = Field(default=None, ge=1)
    # Stop starting and running trials after this many wall seconds; --resume continues.
    time_budget_s: float | None = Field(default=None, gt=0)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"{name!r} must be a plain folder name")
        return name

    @field_validator("grid")
    @classmethod
    def _axes_have_values(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values; give at least one")
        return grid

    @model_validator(mode="after")
    def _has_trials(self):
        if not self.grid and not self.variants:
            raise ValueError("a sweep needs 'grid' (axes of values) and/or 'variants'")
        return self


@dataclass
class Trial:
    """One run of the sweep: its folder name, the parameters it varies and its resolved config."""

    name: str
    params: dict[str, Any]
    cfg: Config


def load_sweep(path: str | Path) -> SweepSpec:
    path = Path(path)
    spec = read_spec(path, SweepSpec, "sweep")
    if not spec.base.is_absolute():
        spec.base = path.parent / spec.base
    return spec


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the last axis varying fastest."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _slug(value: Any) -> str:
    if isinstance(value, dict):
        return "-".join(_slug(v) for v in value.values())
    if isinstance(value, list | tuple):
        return "-".join(_slug(v) for v in value)
    return str(value)


def trial_names(points: list[dict[str, Any]], variant_key: str | None = None) -> list[str]:
    """Readable, unique folder names from the parameters, e.g. ``fedprox_num_clients=1000_seed=0``.

    An axis is shown by the last part of its dotted key unless two axes share it; a variant by its
    name alone. Names that would still collide get a ``_2``, ``_3`` suffix.
    """
    keys = [k for k in (points[0] if points else {}) if k != variant_key]
    last = [k.rsplit(".", 1)[-1] for k in keys]
    short = {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}
    names, seen = [], {}
    for point in points:
        parts = [str(point[variant_key])] if variant_key else []
        parts += [f"{short[k]}={_slug(point[k])}" for k in keys]
        name = _NAME_CHARS.sub("-", "_".join(parts)).strip("-") or "trial"
        name = name[:_MAX_NAME]
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return names


def expand(
    spec: SweepSpec, *, root: str | Path | None = None, extra: list[str] | None = None
) -> list[Trial]:
    """Every trial of the sweep with its validated config; raises ConfigError on the first bad
    one, so nothing runs unless every trial can."""
    variants = spec.variants or {"": {}}
    for variant in variants:
        if variant and ("/" in variant or variant.startswith(".")):
            raise ConfigError(f"sweep variant name {variant!r} must be a plain folder name")
    points = [
        ({"variant": v} if spec.variants else {}) | point
        for v in variants
        for point in grid_points(spec.grid)
    ]
    names = trial_names(points, "variant" if spec.variants else None)
    trials = []
    for name, point in zip(names, points, strict=True):
        axes = {k: v for k, v in point.items() if k != "variant"}
        overrides = (
            list(spec.overrides.items())
            + list(variants[point.get("variant", "")].items())
            + list(axes.items())
            + list(extra or [])
        )
        try:
            cfg = load_config(spec.base, overrides)
        except ConfigError as err:
            raise ConfigError(f"sweep trial {name!r}: {err}") from None
        sweep_root = Path(root) if root is not None else cfg.output.root
        # Absolute paths: a trial runs in a Tune actor whose working directory is its own.
        cfg.output.root = sweep_root.resolve() / spec.name
        cfg.output.name = name
        cfg.output.overwrite = False
        if cfg.clients.profile.trace is not None:
            cfg.clients.profile.trace = cfg.clients.profile.trace.resolve()
        if cfg.execution.num_workers is None:
            # One actor per trial unless the sweep says otherwise: trials pack onto the cores.
            cfg.execution.num_workers = 1
        trials.append(Trial(name, point, cfg))
    return trials


def trial_bundles(cfg: Config) -> list[dict[str, float]]:
    """Placement-group bundles of one trial: an empty head bundle for the trainable (the fedray
    driver, which mostly waits on the pool) and one bundle per pool actor."""
    worker = {"CPU": cfg.execution.cpus_per_worker}
    if cfg.execution.gpus_per_worker:
        worker["GPU"] = cfg.execution.gpus_per_worker
    return [{}] + [dict(worker) for _ in range(cfg.execution.num_workers or 1)]


def check_fits(trials: list[Trial], nodes: list[dict[str, float]]) -> None:
    """Fail early if a trial could never be placed: Tune would otherwise wait forever."""
    total = {r: sum(n.get(r, 0) for n in nodes) for r in ("CPU", "GPU")}
    largest = {r: max((n.get(r, 0) for n in nodes), default=0) for r in ("CPU", "GPU")}
    for trial in trials:
        ex = trial.cfg.execution
        for resource, per_worker in (("CPU", ex.cpus_per_worker), ("GPU", ex.gpus_per_worker)):
            need = per_worker * (ex.num_workers or 1)
            if per_worker > largest[resource] or need > total[resource]:
                raise UserError(
                    f"sweep trial {trial.name!r} needs {need:g} {resource}s "
                    f"({ex.num_workers} workers × {per_worker:g}) but the Ray cluster has "
                    f"{total[resource]:g} (largest node {largest[resource]:g}); "
                    "lower execution.num_workers or its per-worker resources"
                )


# --------------------------------------------------------------------------- running


def _run_trial(config: dict, *, configs: dict[str, Config], cwd: str) -> None:
    """Tune trainable: one fedray run. Its pool's actors land in the trial's placement group
    because Tune schedules this function with placement_group_capture_child_tasks=True."""
    from ray import tune

    from fedray.api import run

    # Tune starts trials in their own folder; relative paths a config still holds (a workload's
    # cache or data) mean what they mean to `fedray run` started where the sweep was.
    where = contextlib.chdir(cwd) if os.path.isdir(cwd) else contextlib.nullcontext()
    with where:
        summary = run(configs[config["trial"]], progress=False).summary
    tune.report(
        {"eval_accuracy": summary["final"]["eval_accuracy"], "sim_time_s": summary["sim_time_s"]}
    )


def _one_line(err: BaseException | None) -> str | None:
    if err is None:
        return None
    cause = getattr(err, "cause", None) or err  # RayTaskError wraps the trainable's exception
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def _quiet_tune(verbose: bool):
    """Hide Tune's own reports (status prints on stdout, trial tracebacks in its log): the sweep
    shows its own progress and records each failure in one line of sweep.parquet."""
    if verbose:
        yield
        return
    tune_log = logging.getLogger("ray.tune")
    level = tune_log.level
    tune_log.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tune_log.setLevel(level)


def _tune(
    trials: list[Trial], sweep_dir: Path, spec: SweepSpec, bar, verbose: bool
) -> dict[str, str]:
    """Run ``trials`` on Tune; returns the one-line error of each trial that failed."""
    from ray import tune

    configs = {t.name: t.cfg for t in trials}
    bundles = {t.name: trial_bundles(t.cfg) for t in trials}
    trainable = tune.with_resources(
        tune.with_parameters(_run_trial, configs=configs, cwd=os.getcwd()),
        resources=lambda config: tune.PlacementGroupFactory(bundles[config["trial"]]),
    )
    storage = sweep_dir / TUNE_DIR
    shutil.rmtree(storage, ignore_errors=True)  # resume is ours (run dirs), not Tune's
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(list(configs))},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=spec.max_concurrent_trials,
            time_budget_s=spec.time_budget_s,
            trial_name_creator=lambda t: t.config["trial"],
            trial_dirname_creator=lambda t: t.config["trial"],
        ),
        run_config=tune.RunConfig(
            name="trials",
            storage_path=str(storage),
            verbose=0,
            callbacks=[bar.callback()],
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )
    with _quiet_tune(verbose):
        grid = tuner.fit()
    errors = {}
    for result in grid:
        if result.error is not None:
            errors[result.config["trial"]] = _one_line(result.error)
    return errors


def run_sweep(
    path: str | Path,
    *,
    root: str | Path | None = None,
    extra: list[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    verbose: bool = False,
) -> Path:
    """Run every trial not already finished; returns the sweep directory (``sweep.parquet``)."""
    spec = load_sweep(path)
    trials = expand(spec, root=root, extra=extra)
    sweep_dir = trials[0].cfg.output.root
    ray_cfg = trials[0].cfg.model_copy(deep=True)  # how to start or reach Ray
    for trial in trials:
        # Where a trial runs is not part of what it is (inside Tune, Ray is already up), so a
        # sweep resumed on another cluster keeps its finished trials.
        trial.cfg.execution.address = None
    if not resume and any((sweep_dir / t.name).exists() for t in trials):
        raise UserError(
            f"sweep directory {str(sweep_dir)!r} already holds trials; pass --resume to "
            "continue it (finished trials are kept) or choose another --out"
        )
    pending = [t for t in trials if not finished_run(sweep_dir / t.name, t.cfg)]
    for trial in pending:
        # A failed or interrupted attempt is replaced, but only once the rerun succeeds.
        trial.cfg.output.overwrite = (sweep_dir / trial.name).exists()

    from fedray.api import check_address, keep_local_ray_on_loopback, start_ray

    keep_local_ray_on_loopback(ray_cfg)
    import ray

    errors: dict[str, str] = {}
    address = ray_cfg.execution.address
    if pending and address and not ray.is_initialized():
        check_address(address)  # ray.init would retry an unreachable address for minutes
    owns_ray = start_ray(ray_cfg, verbose) if pending else False
    try:
        if pending:
            check_fits(pending, [n["Resources"] for n in ray.nodes() if n["Alive"]])
            sweep_dir.mkdir(parents=True, exist_ok=True)
            bar = SweepProgress(len(trials), len(trials) - len(pending), spec.name, progress)
            try:
                errors = _tune(pending, sweep_dir, spec, bar, verbose)
            finally:
                bar.close()
    finally:
        if owns_ray:
            ray.shutdown()
        # Written even after an interrupt, so the table always reflects what is on disk.
        if sweep_dir.exists():
            table = write_summary(trials, sweep_dir, spec.target_accuracy, errors)
            write_hparams(table, [k for k in trials[0].params], sweep_dir / HPARAMS_DIR)
    return sweep_dir


# --------------------------------------------------------------------------- reporting

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
    if target is not None:
        reached = evaluated[evaluated.eval_accuracy >= target]
        if len(reached):
            row.update(
                sim_time_to_target_s=float(reached.sim_time_s.iloc[0]),
                rounds_to_target=int(reached["round"].iloc[0]),
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
