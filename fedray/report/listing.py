"""``fedray ls [RESULTS_DIR]``: the runs under a results root, newest first, one line each.

Reads each run's summary.json and config.yaml, and only for a run that did not complete the
row count and last row of rounds.parquet, so listing hundreds of runs takes a moment. Runs of
studies and sweeps (``<root>/<study>/<variant>/``) are listed with their folder path. A run with
a damaged summary is listed as ``damaged`` rather than stopping the listing.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from fedray.errors import UserError
from fedray.report.runs import is_run_dir
from fedray.report.style import human_bytes, human_seconds
from fedray.results.writer import CONFIG_FILE, ROUNDS_FILE, SUMMARY_FILE

CHECKPOINT_DIR = "checkpoint"  # fedray.sim.checkpoint.CHECKPOINT_DIR, without importing the engine
COLUMNS = (
    "started",
    "name",
    "workload",
    "strategy",
    "clients",
    "rounds",
    "final metric",
    "sim time",
    "bytes",
    "status",
)
_RIGHT = {"clients", "rounds", "sim time", "bytes"}


def find_runs(root: Path) -> list[Path]:
    """Run folders in ``root`` and one level below (studies, sweeps); hidden folders skipped."""
    found = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if is_run_dir(child):
            found.append(child)
            continue
        found.extend(
            p
            for p in sorted(child.iterdir())
            if p.is_dir() and not p.name.startswith(".") and is_run_dir(p)
        )
    return found


def _load(path: Path) -> dict | None:
    try:
        data = (json.loads if path.suffix == ".json" else yaml.safe_load)(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _last_round(path: Path) -> dict:
    """Rows written so far and the last row's figures, for a run without final figures."""
    try:
        rows = pq.read_metadata(path).num_rows
        table = pq.read_table(
            path, columns=["round", "sim_time_s", "cum_bytes_up", "cum_bytes_down", "eval_accuracy"]
        ).to_pandas()
    except Exception:  # a damaged table: the row simply shows less
        return {}
    if not rows:
        return {"rounds": 0}
    last = table.iloc[-1]
    evaluated = table.eval_accuracy.dropna()
    return {
        "rounds": int(last["round"]),
        "sim_time_s": float(last.sim_time_s),
        "bytes": int(last.cum_bytes_up + last.cum_bytes_down),
        "metric": ("acc", float(evaluated.iloc[-1])) if len(evaluated) else None,
    }


def _final_metric(final: dict) -> tuple[str, float] | None:
    if final.get("eval_accuracy") is not None:
        return "acc", final["eval_accuracy"]
    for key, value in final.items():  # e.g. eval_perplexity of a language-model run
        if key.startswith("eval_") and key != "eval_loss" and value is not None:
            return key[5:], value
    return ("loss", final["eval_loss"]) if final.get("eval_loss") is not None else None


def describe(path: Path, root: Path) -> dict:
    """One listing row (strings) plus ``_sort``, the start time used to order rows."""
    summary = _load(path / SUMMARY_FILE)
    config = _load(path / CONFIG_FILE) or {}
    started = (summary or {}).get("started_at")
    try:
        when = dt.datetime.fromisoformat(started) if started else None
    except ValueError:
        when = None
    if when is None:
        when = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    status = (summary or {}).get("status", "damaged" if summary is None else "unknown")
    if summary is None:
        status = "damaged (summary.json)"
    elif status != "completed" and (path / CHECKPOINT_DIR).is_dir():
        status = f"{status}, resumable"
    figures: dict = {}
    if summary and summary.get("status") == "completed":
        up, down = summary.get("total_bytes_up"), summary.get("total_bytes_down")
        figures = {
            "rounds": summary.get("rounds_completed"),
            "sim_time_s": summary.get("sim_time_s"),
            "bytes": None if up is None or down is None else up + down,
            "metric": _final_metric(summary.get("final") or {}),
        }
    elif (path / ROUNDS_FILE).is_file():
        figures = _last_round(path / ROUNDS_FILE)
    planned = (summary or {}).get("rounds_planned", config.get("rounds"))
    done = figures.get("rounds")
    metric = figures.get("metric")
    mode = config.get("mode", "sync")
    strategy = (config.get("strategy") or {}).get("name", "-")
    return {
        "started": when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "name": str(path.relative_to(root)),
        "workload": (config.get("workload") or {}).get("name", "-"),
        "strategy": strategy + (" (async)" if mode == "async" and strategy != "fedasync" else ""),
        "clients": str((config.get("clients") or {}).get("num_clients", "-")),
        "rounds": f"{'-' if done is None else done}/{planned if planned is not None else '-'}",
        "final metric": f"{metric[0]} {metric[1]:.4f}" if metric else "-",
        "sim time": human_seconds(figures.get("sim_time_s")),
        "bytes": human_bytes(figures.get("bytes")),
        "status": status,
        "_sort": when,
    }


def list_runs(root: str | Path) -> list[dict]:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"results folder {str(root)!r} does not exist; pass the --out of your runs")
    rows = [describe(p, root) for p in find_runs(root)]
    return sorted(rows, key=lambda r: r["_sort"], reverse=True)


def format_rows(rows: list[dict]) -> str:
    """An aligned plain-text table (no colours: it is meant to be grepped and piped too)."""
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in COLUMNS}

    def line(values: dict) -> str:
        cells = [
            values[c].rjust(widths[c]) if c in _RIGHT else values[c].ljust(widths[c])
            for c in COLUMNS
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([line({c: c for c in COLUMNS})] + [line(r) for r in rows])
