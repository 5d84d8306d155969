"""Studies: one base config run under a few named variants, compared in one table and plot.

A study file names a base config and the overrides of each variant::

    name: codecs_synthetic
    base: ../comm_synthetic.yaml          # relative to the study file
    variants:
      none: {compression.uplink: none}
      topk: {compression.uplink: {name: topk, fraction: 0.05, error_feedback: true}}
    plots:                                # optional; y against each x
      y: eval_accuracy
      x: [cum_bytes_up, sim_time_s]

A study may instead (or as well) name a ``grid``: every row's overrides combined with every
column's (the column's applied last), each pair a variant ``<row>-<column>``, and the final
value of each of the grid's ``metrics`` (round-table columns; default ``eval_accuracy``, the
last evaluated one) written as a rows × columns table: ``table.csv`` for the first metric,
``table_<metric>.csv`` for every one, and all of them in ``table.md`` (e.g. defences × attacks,
or noise multipliers × with and without secure aggregation with ε, bytes and time)::

    grid:
      rows: {fedavg: {}, median: {strategy: {name: robust, rule: median}}}
      columns: {none: {attack: null}, sign_flip: {attack.kind: sign_flip}}
      metrics: [eval_accuracy]

``fedray study FILE`` runs the variants one after another on one Ray instance, each into its
normal run directory ``<root>/<name>/<variant>/``, then writes ``study.parquet`` (every variant's
rounds with a ``variant`` column) and one PNG per x axis next to them. A variant that already
finished with the same resolved config is not rerun, so an interrupted study picks up where it
stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedray.config import load_config, read_yaml_mapping
from fedray.errors import ConfigError, UserError
from fedray.userfiles import folder_name_problem

_X_LABELS = {
    "cum_bytes_up": ("cumulative uploaded MB", 1e-6),
    "cum_bytes_down": ("cumulative downloaded MB", 1e-6),
    "sim_time_s": ("simulated time (s)", 1.0),
    "cum_energy_j": ("cumulative client energy (kJ)", 1e-3),
    "wall_time_s": ("wall time (s)", 1.0),
    "round": ("round", 1.0),
}


class PlotSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    y: str = "eval_accuracy"
    x: list[str] = ["cum_bytes_up", "sim_time_s"]


class GridSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: dict[str, dict[str, Any]] = Field(min_length=1)
    columns: dict[str, dict[str, Any]] = Field(min_length=1)
    metrics: list[str] = Field(default=["eval_accuracy"], min_length=1)

    def variants(self) -> dict[str, dict[str, Any]]:
        """``<row>-<column>`` → the row's overrides, then the column's."""
        return {
            f"{r}-{c}": {**row, **col}
            for r, row in self.rows.items()
            for c, col in self.columns.items()
        }


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    base: Path
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    grid: GridSpec | None = None
    plots: PlotSpec = PlotSpec()
    target_accuracy: float | None = Field(default=None, gt=0, le=1)

    def all_variants(self) -> dict[str, dict[str, Any]]:
        return {**self.variants, **(self.grid.variants() if self.grid else {})}


def read_spec(path: str | Path, model: type[BaseModel], kind: str) -> BaseModel:
    """Validate the YAML file at ``path`` against ``model``; errors are one line naming the key.
    Shared by study and sweep files."""
    path = Path(path)
    data = read_yaml_mapping(path, f"{kind} file")  # binary, encodings, duplicates, empty
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"])) + ": " + first["msg"]
        raise ConfigError(f"{kind} file {str(path)!r}: {where}") from None


def load_study(path: str | Path) -> StudySpec:
    path = Path(path)
    spec = read_spec(path, StudySpec, "study")
    problem = folder_name_problem(spec.name)
    if problem:  # the study's folder under the results root
        raise ConfigError(
            f"study file {str(path)!r}: name {spec.name!r} must be a plain folder name ({problem})"
        )
    if not spec.all_variants():
        raise ConfigError(f"study file {str(path)!r}: give at least one variant or a grid")
    if not spec.base.is_absolute():
        spec.base = path.parent / spec.base
    if spec.grid is not None:
        from fedray.results.schema import ROUNDS_SCHEMA

        for metric in spec.grid.metrics:
            if metric not in ROUNDS_SCHEMA.names and not metric.startswith("eval_"):
                raise ConfigError(
                    f"study file {str(path)!r}: grid metric {metric!r} is not a column of "
                    "rounds.parquet; use e.g. eval_accuracy, dp_epsilon, cum_bytes_up, sim_time_s"
                )
    for x in spec.plots.x:
        if x not in _X_LABELS:
            raise ConfigError(f"study plots.x {x!r} is not one of {', '.join(_X_LABELS)}")
    return spec


def run_study(
    path: str | Path,
    *,
    root: str | Path | None = None,
    extra: list[str] | None = None,
    progress: bool = True,
    verbose: bool = False,
) -> Path:
    """Run every variant (skipping finished ones); returns the study directory."""
    import pandas as pd

    spec = load_study(path)
    configs = {}
    for variant, overrides in spec.all_variants().items():
        problem = folder_name_problem(variant)
        if problem:
            raise ConfigError(
                f"study variant name {variant!r} must be a plain folder name ({problem})"
            )
        cfg = load_config(spec.base, list(overrides.items()) + list(extra or []))
        study_root = Path(root) if root is not None else cfg.output.root
        cfg.output.root = study_root / spec.name
        cfg.output.name = variant
        configs[variant] = cfg  # validate every variant before running any

    from fedray.api import keep_local_ray_on_loopback, start_ray, stop_ray

    keep_local_ray_on_loopback(next(iter(configs.values())))

    owns_ray = start_ray(next(iter(configs.values())), verbose)  # one Ray for every variant
    try:
        frames = [_run_variant(variant, cfg, progress, verbose) for variant, cfg in configs.items()]
    finally:
        if owns_ray:
            stop_ray()
    study_dir = next(iter(configs.values())).output.root
    table = pd.concat(frames, ignore_index=True)
    table.to_parquet(study_dir / "study.parquet", index=False)
    if spec.target_accuracy is not None:
        time_to_target(table, spec.target_accuracy).to_csv(
            study_dir / "time_to_target.csv", index=False
        )
    if spec.grid is not None:
        sections = []
        for i, metric in enumerate(spec.grid.metrics):
            grid = grid_table(table, spec.grid, metric)
            grid.to_csv(study_dir / f"table_{metric}.csv")
            if i == 0:
                grid.to_csv(study_dir / "table.csv")
            sections.append(f"**{metric}** (final)\n\n{markdown_table(grid)}\n")
        (study_dir / "table.md").write_text("\n".join(sections))
    _plot(table, spec.plots, study_dir, spec.target_accuracy)
    return study_dir


def grid_table(table, grid: GridSpec, metric: str = "eval_accuracy"):
    """The last non-null ``metric`` of every grid variant (for ``eval_*``, the last evaluated
    round's), rows × columns; empty cells where a variant never recorded it."""
    import pandas as pd

    if metric not in table.columns:
        raise ConfigError(
            f"study grid metric {metric!r} is not a column of rounds.parquet; use one of "
            "eval_accuracy, dp_epsilon, cum_bytes_up, sim_time_s, ..."
        )
    final = {
        variant: runs[metric].dropna().iloc[-1] if runs[metric].notna().any() else None
        for variant, runs in table.groupby("variant", sort=False)
    }
    cells = {c: [final.get(f"{r}-{c}") for r in grid.rows] for c in grid.columns}
    return pd.DataFrame(cells, index=pd.Index(list(grid.rows), name="variant"))


def markdown_table(frame) -> str:
    """A small frame as a Markdown table (4 significant digits)."""
    head = [frame.index.name or "", *map(str, frame.columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, row in frame.iterrows():
        cells = ["" if v is None or v != v else f"{v:.4g}" for v in row]
        lines.append("| " + " | ".join([str(name), *cells]) + " |")
    return "\n".join(lines)


def time_to_target(table, target: float):
    """Per variant: the first evaluated row with ``eval_accuracy >= target`` — its simulated
    time, round and uploaded bytes (NaN where the target was never reached)."""
    import pandas as pd

    from fedray.results.result import first_reaching

    rows = []
    for variant, runs in table.groupby("variant", sort=False):
        first = first_reaching(runs, target)
        rows.append(
            {
                "variant": variant,
                "target_accuracy": target,
                "sim_time_s": first.sim_time_s if first is not None else float("nan"),
                "round": first["round"] if first is not None else None,
                "cum_bytes_up": first.cum_bytes_up if first is not None else None,
                "final_accuracy": runs.eval_accuracy.dropna().iloc[-1],
            }
        )
    return pd.DataFrame(rows)


def finished_run(run_dir: Path, cfg) -> bool:
    """True if ``run_dir`` holds a completed run of this very config (overwrite flag aside),
    so a study or sweep can reuse it instead of running it again."""
    from fedray.config import dump_config
    from fedray.results.result import Result

    finished = (run_dir / "summary.json").is_file() and (
        Result(run_dir).summary.get("status") == "completed"
    )
    return finished and (run_dir / "config.yaml").read_text() == dump_config(
        cfg.model_copy(update={"output": cfg.output.model_copy(update={"overwrite": False})})
    )


def _run_variant(variant: str, cfg, progress: bool, verbose: bool):
    from fedray.api import run
    from fedray.results.result import Result

    run_dir = cfg.output.root / variant
    if not finished_run(run_dir, cfg):
        cfg.output.overwrite = run_dir.exists()  # a failed or interrupted attempt
        run(cfg, progress=progress, verbose=verbose)
    return Result.from_path(run_dir).rounds.assign(variant=variant)


def _plot(table, plots: PlotSpec, out: Path, target: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if plots.y not in table.columns:
        raise UserError(f"study plots.y {plots.y!r} is not a rounds.parquet column")
    for x in plots.x:
        label, scale = _X_LABELS[x]
        fig, ax = plt.subplots(figsize=(6, 4))
        colors = plt.cm.tab20.colors  # 20 distinct colours: a study rarely has more variants
        for i, (variant, rows) in enumerate(table.groupby("variant", sort=False)):
            rows = rows.dropna(subset=[plots.y])
            ax.plot(rows[x] * scale, rows[plots.y], label=variant, color=colors[i % len(colors)])
        if target is not None and plots.y == "eval_accuracy":
            ax.axhline(target, color="grey", linestyle=":", linewidth=1, label="target")
        if x.startswith("cum_bytes"):
            ax.set_xscale("log")
            # Plain numbers at 1-2-5 steps, and no minor-tick labels: over about a decade
            # matplotlib labels the minor ticks too, and "3×10⁰" and "4×10⁰" ran together.
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel(plots.y)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{plots.y}_vs_{x}.png", dpi=120)
        plt.close(fig)
