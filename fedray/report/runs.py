"""Run folders read back for a report: tables with one-line errors, labels and device tiers.

Only the columns a report draws are read, and ``status`` is read as a dictionary column, so a run
of a million client tasks loads in well under a second. A missing or unreadable file is a
:class:`~fedray.errors.UserError` naming it (exit code 2), never a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

from fedray.errors import UserError, one_line
from fedray.results.result import Result
from fedray.results.writer import CLIENTS_FILE, CONFIG_FILE, ROUNDS_FILE, SUMMARY_FILE

EVENT_COLUMNS = (
    "round",
    "client_id",
    "status",
    "staleness",
    "dispatch_time_s",
    "download_s",
    "compute_s",
    "upload_s",
    "train_loss",
)
ROUND_COLUMNS = ("round", "sim_time_s", "wall_time_s", "cum_bytes_up", "cum_bytes_down")
# Sections that say where and how a run executed, not what it computed (see fedray.resume).
_NOT_EXPERIMENT = ("execution", "output")


def read_table(path: Path, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """A Parquet table, or a one-line UserError naming the file (and a missing column)."""
    if not path.is_file():
        raise UserError(f"{str(path)!r} is missing; the run folder is incomplete")
    try:
        schema = pq.read_schema(path)
        if columns is not None:
            absent = [c for c in columns if c not in schema.names]
            if absent:
                raise UserError(
                    f"{str(path)!r} has no column {absent[0]!r}; it was not written by this "
                    "fedray version or is damaged"
                )
        wanted = list(columns) if columns is not None else None
        dictionary = ["status"] if "status" in (wanted or schema.names) else None
        table = pq.read_table(path, columns=wanted, read_dictionary=dictionary)
    except UserError:
        raise
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise UserError(
            f"{str(path)!r} is not a readable Parquet table ({one_line(err, 120)})"
        ) from None
    return table.to_pandas()


def _read_text(path: Path, parse, what: str) -> Any:
    if not path.is_file():
        raise UserError(f"{str(path)!r} is missing; the run folder is incomplete")
    try:
        data = parse(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        raise UserError(f"{str(path)!r} is not valid {what} ({one_line(err, 120)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{str(path)!r} is not valid {what} (not a mapping)")
    return data


@dataclass
class Run:
    """One run folder's tables, summary and config, as a report uses them."""

    name: str
    path: Path
    summary: dict
    config: dict
    rounds: pd.DataFrame
    events: pd.DataFrame
    label: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return self.config.get("mode", "sync")

    @property
    def private(self) -> bool:
        return bool(self.config.get("privacy")) and self.rounds.dp_epsilon.notna().any()

    @property
    def num_clients(self) -> int:
        registered = (self.config.get("clients") or {}).get("num_clients")
        seen = int(self.events.client_id.max()) + 1 if len(self.events) else 0
        return max(int(registered or 0), seen)

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))


def is_run_dir(path: Path) -> bool:
    return (path / SUMMARY_FILE).is_file() or (path / CONFIG_FILE).is_file()


def expand(paths: list[str | Path]) -> list[Path]:
    """Run folders named on the command line; a folder that holds run folders (a study's, or a
    results root) stands for the runs inside it."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise UserError(
                f"{str(path)!r} is not a directory; pass a run folder, e.g. results/<name>"
            )
        if is_run_dir(path):
            found.append(path)
            continue
        children = sorted(p for p in path.iterdir() if p.is_dir() and is_run_dir(p))
        if not children:
            raise UserError(
                f"{str(path)!r} is not a fedray run folder (no {SUMMARY_FILE}) and holds none"
            )
        found.extend(children)
    return found


def load(path: Path) -> Run:
    """Read one run folder."""
    Result.from_path(path)  # names every missing table at once
    summary = _read_text(path / SUMMARY_FILE, json.loads, "JSON")
    config = _read_text(path / CONFIG_FILE, yaml.safe_load, "YAML")
    rounds = read_table(path / ROUNDS_FILE)
    absent = [c for c in ROUND_COLUMNS if c not in rounds.columns]
    if absent:
        raise UserError(f"{str(path / ROUNDS_FILE)!r} has no column {absent[0]!r}")
    if "dp_epsilon" not in rounds.columns:
        rounds["dp_epsilon"] = np.nan
    events = read_table(path / CLIENTS_FILE, EVENT_COLUMNS)
    return Run(path.name, path, summary, config, rounds, events)


def default_metric(runs_rounds: list[pd.DataFrame]) -> str:
    """``eval_accuracy`` where any run has it, else the first workload metric with values."""
    for candidate in ("eval_accuracy",):
        if any(candidate in r and r[candidate].notna().any() for r in runs_rounds):
            return candidate
    for rounds in runs_rounds:
        for column in rounds.columns:
            if column.startswith("eval_") and rounds[column].notna().any():
                return column
    return "eval_accuracy"


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config mapping -> {dotted key: value}, in the config's order."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return {k.rstrip("."): v for k, v in out.items()}


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def config_labels(configs: dict[str, dict], max_len: int = 70) -> dict[str, str]:
    """A legend label per run from the config keys whose values differ between the runs, e.g.
    ``compression.uplink.name=topk fraction=0.01``: a key sharing the previous key's section is
    shown by its last part. Keys left null in a run are left out of its label; runs whose configs
    do not differ are labelled by name."""
    flat = {name: flatten(cfg) for name, cfg in configs.items()}
    keys: list[str] = []
    for f in flat.values():
        keys.extend(k for k in f if k not in keys)
    keys = [k for k in keys if k.split(".")[0] not in _NOT_EXPERIMENT]
    differing = [k for k in keys if len({_value(f.get(k)) for f in flat.values()}) > 1]
    labels = {}
    for name, f in flat.items():
        parts, section = [], None
        for key in differing:
            if f.get(key) is None:
                continue
            head, _, last = key.rpartition(".")
            parts.append(
                f"{last}={_value(f[key])}"
                if head and head == section
                else f"{key}={_value(f[key])}"
            )
            section = head
        text = " ".join(parts)
        labels[name] = text if len(text) <= max_len else text[: max_len - 1] + "…"
        if not text:
            labels[name] = name
    values = list(labels.values())
    for name, text in labels.items():  # runs of one config (repeats) keep their names apart
        if values.count(text) > 1 and text != name:
            labels[name] = f"{name}: {text}"
    return labels


def unique_names(paths: list[Path]) -> list[str]:
    """Folder names, with the parent prepended where two runs share one."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def tiers(run: Run) -> tuple[list[str], Any] | None:
    """Device-tier names and a ``client ids -> tier index`` function, when the run's profile
    has ``tiers``; None otherwise (trace or single-distribution profiles). Tiers are a pure
    function of (seed, client id), so they are recomputed from the config, not stored."""
    profile = (run.config.get("clients") or {}).get("profile") or {}
    if not profile.get("tiers"):
        return None
    from fedray.clients.profiles import ProfileModel
    from fedray.config import ProfileConfig

    try:
        cfg = ProfileConfig.model_validate({**profile, "trace": None})
    except Exception:  # a config from another version: draw without tiers rather than fail
        return None
    model = ProfileModel(cfg, run.seed)
    names = [t.name or f"tier {i}" for i, t in enumerate(cfg.tiers)]
    return names, model.tier_of
