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
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedray.config import Config, load_config
from fedray.errors import ConfigError, UserError
from fedray.study import finished_run, read_spec
from fedray.sweep_report import SweepProgress, write_hparams, write_summary
from fedray.userfiles import folder_name_problem

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
        problem = folder_name_problem(name)
        if problem:
            raise ValueError(f"{name!r} must be a plain folder name ({problem})")
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
        problem = folder_name_problem(variant) if variant else None
        if problem:
            raise ConfigError(
                f"sweep variant name {variant!r} must be a plain folder name ({problem})"
            )
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

    from fedray.api import check_address, keep_local_ray_on_loopback, start_ray, stop_ray

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
            stop_ray()
        # Written even after an interrupt, so the table always reflects what is on disk.
        if sweep_dir.exists():
            table = write_summary(trials, sweep_dir, spec.target_accuracy, errors)
            write_hparams(table, [k for k in trials[0].params], sweep_dir / HPARAMS_DIR)
    return sweep_dir
