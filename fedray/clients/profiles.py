"""Device profiles of the client population, looked up lazily and column-wise.

A client's profile is a pure function of (seed, client id): each field is drawn from its configured
distribution with a counter-based hash (:mod:`fedray.seeding`). Nothing is stored per client, so a
population of any size costs only the arrays of the clients actually looked at. A trace file, when
given, is the one table held in memory; clients beyond its length wrap modulo its row count.

Units: speed in samples/s of local training, bandwidths in Mbit/s, latency in ms per transfer,
dropout as a probability per task, availability as the probability of being online in a round;
energy in joules per sample and per MB, power in watts, battery capacity in joules, time zones in
hours (:class:`~fedray.config.ProfileConfig`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedray import seeding
from fedray.config import (
    DRAWN_FIELDS,
    PROFILE_FIELDS,
    Constant,
    LogNormal,
    ProfileConfig,
    Uniform,
)
from fedray.errors import UserError, one_line
from fedray.userfiles import MAX_FLOAT, read_text, require_file, short_repr


@dataclass(frozen=True)
class Profiles:
    """Profiles of a set of clients, one float64 array per field (aligned with ``client_ids``)."""

    client_ids: np.ndarray
    speed: np.ndarray
    down_mbps: np.ndarray
    up_mbps: np.ndarray
    latency_ms: np.ndarray
    dropout: np.ndarray
    availability: np.ndarray
    compute_j_per_sample: np.ndarray
    up_j_per_mb: np.ndarray
    down_j_per_mb: np.ndarray
    idle_w: np.ndarray
    battery_j: np.ndarray
    charge_w: np.ndarray
    timezone_h: np.ndarray


_UNLIMITED = object()  # memory_gb not given: no device is too small


def _draw(dist, seed: int, field: str, ids: np.ndarray) -> np.ndarray:
    purpose = f"profile.{field}"
    if dist is _UNLIMITED:
        return np.full(ids.shape, np.inf)
    if isinstance(dist, Constant):
        return np.full(ids.shape, float(dist.value))
    if isinstance(dist, Uniform):
        return dist.low + (dist.high - dist.low) * seeding.uniform(seed, purpose, ids)
    if isinstance(dist, LogNormal):
        values = dist.median * np.exp(dist.sigma * seeding.normal(seed, purpose, ids))
        return np.clip(values, dist.min, dist.max) if (dist.min or dist.max) else values
    raise TypeError(f"unknown distribution {dist!r}")


class ProfileModel:
    """Maps client ids to device profiles per a :class:`~fedray.config.ProfileConfig`."""

    def __init__(self, cfg: ProfileConfig, seed: int):
        self.cfg = cfg
        self.seed = seed
        self.trace = load_trace(cfg.trace) if cfg.trace is not None else None
        if cfg.tiers:
            weights = np.array([t.weight for t in cfg.tiers], dtype=np.float64)
            self._tier_cdf = np.cumsum(weights / weights.sum())
        # training FLOPs per sample, for profiles given in FLOP/s (set by set_flops_per_sample)
        self.flops_per_sample: float | None = None
        # the workload's training footprint in bytes, for memory_gb (set_training_memory)
        self.training_memory: int | None = None

    def _given(self, field: str) -> bool:
        """Whether ``field`` is given anywhere: the profile, a tier or the trace."""
        return (
            (self.trace is not None and field in self.trace)
            or getattr(self.cfg, field) is not None
            or any(getattr(t, field) is not None for t in self.cfg.tiers or ())
        )

    @property
    def uses_memory(self) -> bool:
        return self._given("memory_gb")

    def set_training_memory(self, num_bytes: int | None, workload: str) -> None:
        """The workload's measured training footprint, against which ``memory_gb`` decides who
        is eligible; a one-line error when the profile needs it and there is none."""
        if not self.uses_memory:
            return
        if num_bytes is None or not num_bytes > 0:
            raise UserError(
                f"clients.profile gives memory_gb, but workload {workload} does not measure its "
                "training memory; remove memory_gb"
            )
        self.training_memory = int(num_bytes)

    def fits(self, client_ids) -> np.ndarray:
        """Per client, whether its device holds the training footprint (all True without
        ``memory_gb``)."""
        ids = np.asarray(client_ids, dtype=np.int64)
        if self.training_memory is None:
            return np.ones(ids.shape, dtype=bool)
        return self.column("memory_gb", ids) * 1e9 >= self.training_memory

    def count_ineligible(self, num_clients: int, chunk: int = 1_000_000) -> int:
        """How many of the N registered clients cannot hold the training footprint (chunked:
        profiles are drawn, never stored)."""
        if self.training_memory is None:
            return 0
        return sum(
            int((~self.fits(np.arange(lo, min(lo + chunk, num_clients)))).sum())
            for lo in range(0, num_clients, chunk)
        )

    @property
    def uses_flops(self) -> bool:
        """Whether some client's compute is given in FLOP/s (profile, a tier or the trace)."""
        return self._given("flops")

    def set_flops_per_sample(self, flops_per_sample: float | None, workload: str) -> None:
        """The workload's measured training FLOPs per sample (``summary.json``), which turns
        FLOP/s into samples/s; a one-line error when the profile needs it and there is none."""
        if not self.uses_flops:
            return
        if flops_per_sample is None or not flops_per_sample > 0:
            raise UserError(
                f"clients.profile gives compute in flops (FLOP/s), but workload {workload} does "
                "not measure its training FLOPs per sample; give speed (samples/s) instead"
            )
        self.flops_per_sample = float(flops_per_sample)

    def lookup(self, client_ids) -> Profiles:
        ids = np.asarray(client_ids, dtype=np.int64)
        return Profiles(client_ids=ids, **{f: self.column(f, ids) for f in PROFILE_FIELDS})

    def column(self, field: str, client_ids) -> np.ndarray:
        """One profile field for the given clients (probabilities clipped to [0, 1])."""
        values = self._field(field, np.asarray(client_ids, dtype=np.int64))
        return np.clip(values, 0.0, 1.0) if field in ("dropout", "availability") else values

    def tier_of(self, client_ids) -> np.ndarray:
        """Index of each client's tier (all zeros without tiers)."""
        ids = np.asarray(client_ids, dtype=np.int64)
        if not self.cfg.tiers:
            return np.zeros(ids.shape, dtype=np.int64)
        u = seeding.uniform(self.seed, "profile.tier", ids)
        return np.minimum(np.searchsorted(self._tier_cdf, u), len(self.cfg.tiers) - 1)

    def _field(self, field: str, ids: np.ndarray) -> np.ndarray:
        if field == "speed" and self.uses_flops:
            return self._speed_from_flops(ids)
        if self.trace is not None and field in self.trace:
            column = self.trace[field]
            return column[ids % len(column)]
        base = getattr(self.cfg, field)
        if field == "memory_gb" and base is None:
            base = _UNLIMITED  # unless a tier says otherwise
        if not self.cfg.tiers:
            return _draw(base, self.seed, field, ids)
        tiers = self.tier_of(ids)
        out = np.empty(ids.shape, dtype=np.float64)
        for index, tier in enumerate(self.cfg.tiers):
            mask = tiers == index
            if mask.any():
                dist = getattr(tier, field) or base
                out[mask] = _draw(dist, self.seed, field, ids[mask])
        return out

    def _speed_from_flops(self, ids: np.ndarray) -> np.ndarray:
        """samples/s = FLOP/s / FLOPs per sample where a client's compute is given in FLOP/s
        (its tier's, else the profile's), its drawn ``speed`` elsewhere."""
        if self.flops_per_sample is None:
            raise RuntimeError("profiles in FLOP/s need set_flops_per_sample() before lookups")
        if self.trace is not None and "flops" in self.trace:
            column = self.trace["flops"]
            return column[ids % len(column)] / self.flops_per_sample
        cfg, out = self.cfg, np.empty(ids.shape, dtype=np.float64)
        tiers = self.tier_of(ids)
        for index, tier in enumerate(cfg.tiers or (None,)):
            mask = tiers == index
            if not mask.any():
                continue
            flops = (tier.flops if tier is not None else None) or cfg.flops
            # a tier's own speed wins over the profile's flops
            if flops is not None and (tier is None or tier.speed is None):
                out[mask] = _draw(flops, self.seed, "flops", ids[mask]) / self.flops_per_sample
            else:
                speed = (tier.speed if tier is not None else None) or cfg.speed
                out[mask] = _draw(speed, self.seed, "speed", ids[mask])
        return out


TRACE_FORMATS = {".csv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}
# What each field accepts, for the messages (the ranges the config's distributions have too).
_RANGES = {
    "speed": ("> 0", "samples/s"),
    "flops": ("> 0", "FLOP/s"),
    "memory_gb": ("> 0", "GB"),
    "down_mbps": ("> 0", "Mbit/s"),
    "up_mbps": ("> 0", "Mbit/s"),
    "latency_ms": (">= 0", "ms"),
    "dropout": ("in [0, 1]", "a probability"),
    "availability": ("in [0, 1]", "a probability"),
    "compute_j_per_sample": (">= 0", "J per sample"),
    "up_j_per_mb": (">= 0", "J per MB"),
    "down_j_per_mb": (">= 0", "J per MB"),
    "idle_w": (">= 0", "W"),
    "battery_j": ("> 0", "J"),
    "charge_w": (">= 0", "W"),
    "timezone_h": ("in [-24, 24]", "hours"),
}


def load_trace(path: Path) -> dict[str, np.ndarray]:
    """Read a device trace (CSV or Parquet; one row per client; columns named as the profile
    fields, and optionally ``client_id`` numbering the rows 0..n-1 in any order).

    Anything else is a :class:`~fedray.errors.UserError` of one line naming the file: unknown or
    repeated columns (a misspelt column would silently fall back to the default distribution),
    no rows, a value that is not a number or outside its range, client ids that repeat or leave
    gaps, and files that are empty, binary or not UTF-8."""
    path = Path(path)
    where = f"trace file {str(path)!r}"
    fix = "set clients.profile.trace to a CSV or Parquet file (see the README for its columns)"
    require_file(path, where, fix)
    columns, line_of = read_columns(path, where, fix)
    unknown = [c for c in columns if c not in DRAWN_FIELDS and c != "client_id"]
    if unknown:
        raise UserError(
            f"{where} has unknown column(s) {short_repr(unknown)}; accepted: client_id, "
            f"{', '.join(DRAWN_FIELDS)}"
        )
    if "speed" in columns and "flops" in columns:
        raise UserError(f"{where} has both speed and flops columns; keep one")
    rows = len(next(iter(columns.values()))) if columns else 0
    if rows == 0:
        raise UserError(f"{where} has no rows; add one row per client under a header")
    if not any(f in columns for f in DRAWN_FIELDS):
        raise UserError(
            f"{where} has no profile column; give at least one of {', '.join(DRAWN_FIELDS)}"
        )
    trace = {f: _field(columns[f], f, where, line_of) for f in DRAWN_FIELDS if f in columns}
    if "client_id" in columns:
        order = _client_order(columns["client_id"], where, line_of)
        trace = {f: values[order] for f, values in trace.items()}
    return trace


def read_columns(path: Path, where: str, fix: str) -> tuple[dict[str, np.ndarray], Callable]:
    """The columns of a CSV or Parquet table a user gives (device or availability trace), and a
    function naming where row i sits in the file ("line 7", "row 6") for messages."""
    kind = TRACE_FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        raise UserError(f"{where}: use a .csv or .parquet file")
    return _read_parquet(path, where, fix) if kind == "parquet" else _read_csv(path, where, fix)


def numeric(values: np.ndarray) -> np.ndarray:
    """float64 of each value; NaN where one is not a number (or is empty)."""
    return _numeric(values)


def is_empty(value) -> bool:
    return _is_empty(value)


def _read_csv(path: Path, where: str, fix: str) -> tuple[dict[str, np.ndarray], Callable]:
    """The columns of a CSV trace as arrays of strings, and where each row sits in the file.

    Python's csv module rather than pandas: pandas silently takes surplus fields for an index
    and renames a repeated column, where a trace should be refused."""
    reader = csv.reader(io.StringIO(read_text(path, where, fix)), strict=True)
    rows, lines = [], []
    try:
        header = next((row for row in reader if any(field.strip() for field in row)), None)
        if header is None:
            raise UserError(f"{where} has no header; {fix}")
        header = [name.strip() for name in header]
        repeated = next((n for n in header if header.count(n) > 1), None)
        if repeated is not None:
            raise UserError(
                f"{where}: column {short_repr(repeated)} appears twice in the header; keep one"
            )
        for row in reader:
            if not any(field.strip() for field in row):
                continue  # blank lines
            if len(row) != len(header):
                raise UserError(
                    f"{where}: line {reader.line_num} has {len(row)} fields but the header has "
                    f"{len(header)}; give every row one value per column"
                )
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as err:
        raise UserError(
            f"{where}: line {reader.line_num} is not valid CSV ({one_line(err)}); check its quotes"
        ) from None
    table = np.array(rows, dtype=object).reshape(len(rows), len(header))
    columns = {name: table[:, i] for i, name in enumerate(header)}
    return columns, lambda row: f"line {lines[row]}"


def _read_parquet(path: Path, where: str, fix: str) -> tuple[dict[str, np.ndarray], Callable]:
    import pandas as pd

    if path.stat().st_size == 0:
        raise UserError(f"{where} is empty; {fix}")
    try:
        # pandas rather than pyarrow: it puts a saved DataFrame's index back as the index
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises many types for damaged files
        raise UserError(f"{where} is not a readable Parquet file: {one_line(err)}") from None
    repeated = next((c for c in frame.columns if list(frame.columns).count(c) > 1), None)
    if repeated is not None:
        raise UserError(f"{where}: column {short_repr(repeated)} appears twice; keep one")
    for name in frame.columns:
        kind = frame[name].dtype.kind
        if kind in "bMmSU" or str(frame[name].dtype) == "category":
            raise UserError(
                f"{where}: column {str(name)!r} holds {frame[name].dtype} values; store numbers"
            )
    columns = {str(name): frame[name].to_numpy() for name in frame.columns}
    return columns, lambda row: f"row {row + 1}"


def _numeric(values: np.ndarray) -> np.ndarray:
    """float64 of each value; NaN where one is not a number (or is empty)."""
    import pandas as pd

    try:
        return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(np.float64)
    except (TypeError, ValueError, OverflowError):  # mixed objects: one at a time
        out = np.full(len(values), np.nan)
        for i, value in enumerate(values):
            try:
                out[i] = float(value)
            except (TypeError, ValueError, OverflowError):
                pass
        return out


def _is_empty(value) -> bool:
    return (
        value is None
        or (isinstance(value, float) and np.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def _field(raw: np.ndarray, field: str, where: str, line_of: Callable) -> np.ndarray:
    values = _numeric(raw)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (np.abs(values) > MAX_FLOAT)
        if field in ("speed", "down_mbps", "up_mbps", "battery_j", "flops", "memory_gb"):
            bad |= values <= 0
        elif field == "timezone_h":
            bad |= np.abs(values) > 24
        elif field in ("dropout", "availability"):
            bad |= (values < 0) | (values > 1)
        else:
            bad |= values < 0
    if bad.any():
        row = int(np.argmax(bad))
        accepted, unit = _RANGES[field]
        if _is_empty(raw[row]):
            problem = f"is empty at {line_of(row)}; fill it or remove the row"
        else:
            problem = (
                f"has an invalid value {short_repr(str(raw[row]))} at {line_of(row)}; {field} "
                f"must be a number {accepted} ({unit})"
            )
        raise UserError(f"{where}: column {field!r} {problem}")
    return values


def _client_order(raw: np.ndarray, where: str, line_of: Callable) -> np.ndarray:
    """Row order by ``client_id``, which must number the rows 0..n-1: with a repeated id or a gap,
    "client i uses the row with client_id i" would silently not hold."""
    n = len(raw)
    values = _numeric(raw)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values != np.round(values)) | (np.abs(values) > 2**53)
    if bad.any():
        row = int(np.argmax(bad))
        raise UserError(
            f"{where}: client_id {short_repr(str(raw[row]))} at {line_of(row)} is not an "
            "integer; number the rows 0, 1, 2, ..."
        )
    ids = values.astype(np.int64)
    order = np.argsort(ids, kind="stable")
    repeats = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(repeats):
        first, second = sorted(order[repeats[0] : repeats[0] + 2])
        raise UserError(
            f"{where}: client_id {ids[first]} appears twice ({line_of(first)} and "
            f"{line_of(second)}); give each client one row"
        )
    outside = np.flatnonzero((ids < 0) | (ids >= n))
    if len(outside):
        row = int(outside[0])
        raise UserError(
            f"{where}: client_id {ids[row]} at {line_of(row)} is outside 0..{n - 1}; client_id "
            f"numbers the {n} rows 0..{n - 1} (clients beyond wrap around)"
        )
    return order
